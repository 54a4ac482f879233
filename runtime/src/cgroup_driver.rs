//! Which cgroup driver makes the host's cgroups of containers: cgroupfs,
//! runc's default, which takes cgroupsPath as a path whatever it looks like
//! (containerd's "slice:prefix:name" included), or systemd, chosen by
//! `runtime.systemd_cgroup` in the configuration or `--systemd-cgroup`.

use std::path::Path;

use crate::config::Config;

/// Why the systemd driver, chosen by `chosen_by`, cannot serve on this
/// host: a precondition the host does not meet.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(
        "{chosen_by} chooses the systemd cgroup driver, but systemd is not running on \
         this host; set it to false to take cgroupsPath as a cgroupfs path, as runc does \
         by default"
    )]
    NoSystemd { chosen_by: &'static str },
    #[error(
        "{chosen_by} chooses the systemd cgroup driver, which kata-rs supports on cgroup \
         v2 only, and this host mounts cgroup v1; set it to false to use cgroupfs"
    )]
    CgroupV1 { chosen_by: &'static str },
}

/// Whether the systemd driver is chosen, by the flag or the configuration,
/// and this host can serve it.
pub fn systemd(flag: bool, config: &Config) -> Result<bool, DriverError> {
    let chosen_by = match (flag, config.runtime.systemd_cgroup) {
        (true, _) => "--systemd-cgroup",
        (false, true) => "runtime.systemd_cgroup in the configuration",
        (false, false) => return Ok(false),
    };
    // As sd_booted(3) tells.
    if !Path::new("/run/systemd/system").is_dir() {
        return Err(DriverError::NoSystemd { chosen_by });
    }
    let unified = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if !unified {
        return Err(DriverError::CgroupV1 { chosen_by });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_unless_chosen() {
        assert!(!systemd(false, &Config::default()).unwrap());
    }

    #[test]
    fn a_refusal_names_what_chose_systemd() {
        let mut config = Config::default();
        config.runtime.systemd_cgroup = true;
        if let Err(e) = systemd(false, &config) {
            assert!(e.to_string().starts_with("runtime.systemd_cgroup"), "{e}");
        }
        if let Err(e) = systemd(true, &config) {
            assert!(e.to_string().starts_with("--systemd-cgroup chooses"), "{e}");
        }
    }
}
