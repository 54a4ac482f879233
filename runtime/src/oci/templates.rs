//! `kata-rs spec` (a template config.json) and `kata-rs features` (what the
//! runtime supports, as the OCI runtime spec's features document).

use std::path::Path;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;
use serde_json::json;

/// Writes `<bundle>/config.json` from runc's template; refuses to replace
/// an existing one.
pub fn write_spec(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} already exists", path.display());
    }
    let mut spec = if rootless {
        Spec::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    } else {
        Spec::default()
    };
    // As runc's template: an interactive shell on a terminal.
    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(true));
    }
    let text = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))
}

pub fn features() -> String {
    let capabilities: Vec<String> = {
        let mut all: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
        all.sort();
        all
    };
    let doc = json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync",
                         "exec", "iversion", "lazytime", "loud", "mand", "noatime", "nodev",
                         "nodiratime", "noexec", "noiversion", "nolazytime", "nomand",
                         "norelatime", "nostrictatime", "nosuid", "nosymfollow", "private",
                         "rbind", "relatime", "remount", "ro", "rprivate", "rshared",
                         "rslave", "runbindable", "rw", "shared", "silent", "slave",
                         "strictatime", "suid", "symfollow", "sync", "tmpcopyup",
                         "unbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": capabilities,
            "cgroup": {"v1": true, "v2": true, "systemd": true, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                            "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                            "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                              "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            "io.kata-rs.isolation": "vm|namespace: where the container runs",
        },
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_writes_once() {
        let dir = tempfile::tempdir().unwrap();
        write_spec(dir.path(), false).unwrap();
        let spec: Spec =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
        assert!(write_spec(dir.path(), false)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
    }

    #[test]
    fn features_name_the_hooks_and_cgroups() {
        let v: serde_json::Value = serde_json::from_str(&features()).unwrap();
        assert_eq!(v["linux"]["cgroup"]["v1"], true);
        assert!(v["hooks"].as_array().unwrap().len() >= 5);
        assert!(v["linux"]["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("CAP_SYS_ADMIN")));
    }
}
