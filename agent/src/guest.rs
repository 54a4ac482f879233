//! Facts about the guest the agent runs in, read from procfs and sysfs.

use std::io;
use std::path::Path;

/// What `GetGuestDetails` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDetails {
    pub online_cpus: u32,
    pub mem_total_bytes: u64,
    pub kernel_release: String,
}

impl GuestDetails {
    /// Reads the details of the running system.
    pub fn read() -> io::Result<Self> {
        let online = read_file("/sys/devices/system/cpu/online")?;
        let meminfo = read_file("/proc/meminfo")?;
        let uname = nix::sys::utsname::uname().map_err(io::Error::from)?;
        Ok(Self {
            online_cpus: parse_cpu_list(&online).ok_or_else(|| {
                invalid(format!(
                    "unparsable /sys/devices/system/cpu/online: {online:?}"
                ))
            })?,
            mem_total_bytes: parse_mem_total(&meminfo)
                .ok_or_else(|| invalid("no valid MemTotal in /proc/meminfo".to_owned()))?,
            kernel_release: uname.release().to_string_lossy().into_owned(),
        })
    }
}

fn read_file(path: impl AsRef<Path>) -> io::Result<String> {
    let path = path.as_ref();
    std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Counts the CPUs in a kernel CPU list such as `0-3,6,8-9` (the format of
/// `/sys/devices/system/cpu/online`). Returns `None` on malformed input
/// rather than guessing, so a bad count never reaches the runtime.
pub fn parse_cpu_list(list: &str) -> Option<u32> {
    let list = list.trim();
    if list.is_empty() {
        return Some(0);
    }
    list.split(',').try_fold(0u32, |count, range| {
        let n = match range.split_once('-') {
            Some((first, last)) => {
                let first: u32 = first.parse().ok()?;
                let last: u32 = last.parse().ok()?;
                last.checked_sub(first)?.checked_add(1)?
            }
            None => {
                range.parse::<u32>().ok()?;
                1
            }
        };
        count.checked_add(n)
    })
}

/// Extracts `MemTotal` from `/proc/meminfo` content, in bytes. The kernel
/// prints it in KiB (the "kB" unit there means 1024 bytes).
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut fields = rest.split_ascii_whitespace();
        let kib: u64 = fields.next()?.parse().ok()?;
        match fields.next() {
            Some("kB") => kib.checked_mul(1024),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(1));
        assert_eq!(parse_cpu_list("0-3\n"), Some(4));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list(""), Some(0));
    }

    #[test]
    fn malformed_cpu_lists() {
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list("0,,1"), None);
        assert_eq!(parse_cpu_list("0-"), None);
        assert_eq!(parse_cpu_list("0-4294967295"), None);
    }

    #[test]
    fn mem_total_in_bytes() {
        let meminfo = "MemTotal:        2030592 kB\nMemFree:         1900000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(2030592 * 1024));
    }

    #[test]
    fn mem_total_not_first_or_missing() {
        assert_eq!(
            parse_mem_total("MemFree: 1 kB\nMemTotal: 4 kB\n"),
            Some(4096)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 4 MB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
    }

    #[test]
    fn reads_this_host() {
        let details = GuestDetails::read().expect("host has procfs and sysfs");
        assert!(details.online_cpus >= 1);
        assert!(details.mem_total_bytes > 0);
        assert!(!details.kernel_release.is_empty());
    }
}
