//! The directory virtio-fs shares with the guest: the bundle's root
//! filesystem and the sources of its bind mounts, bind-mounted in, and the
//! spec rewritten to the paths the guest sees them at.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kata_rs_protocol::GUEST_SHARE_DIR;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::Value;

const ROOTFS: &str = "rootfs";
const MOUNTS: &str = "mounts";

pub(crate) fn is_bind(m: &Value) -> bool {
    m["type"] == "bind"
        || m["options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

fn bind(source: &Path, target: &Path, recursive: bool) -> Result<()> {
    let flags = if recursive {
        MsFlags::MS_BIND | MsFlags::MS_REC
    } else {
        MsFlags::MS_BIND
    };
    mount(Some(source), target, None::<&str>, flags, None::<&str>).with_context(|| {
        format!(
            "bind {} into the VM's share at {}",
            source.display(),
            target.display()
        )
    })?;
    // Private: what the container mounts under it must not travel back
    // into the host's mount tree, nor the host's into it after this point.
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("make {} private", target.display()))
}

/// Makes `<share_root>/<id>` and returns the spec the guest gets: rootfs
/// and bind sources under the guest's share, no hooks (the host runs them),
/// no host namespace paths, LSM labels or cgroup path. One share root can
/// serve several containers of a VM, each in its own directory.
pub fn prepare(id: &str, bundle: &Path, spec: &Value, share_root: &Path) -> Result<Value> {
    std::fs::create_dir_all(share_root)
        .with_context(|| format!("create {}", share_root.display()))?;
    let share = &share_root.join(id);
    std::fs::create_dir(share).with_context(|| format!("create {}", share.display()))?;
    let mut guest = spec.clone();
    let guest_share = Path::new(GUEST_SHARE_DIR).join(id);

    let root = spec["root"]["path"]
        .as_str()
        .context("config.json has no root.path")?;
    let rootfs = bundle.join(root);
    let target = share.join(ROOTFS);
    std::fs::create_dir(&target)?;
    bind(&rootfs, &target, true)?;
    guest["root"]["path"] = guest_share.join(ROOTFS).to_string_lossy().into();

    if let Some(mounts) = guest["mounts"].as_array_mut() {
        let dir = share.join(MOUNTS);
        for (i, m) in mounts.iter_mut().enumerate().filter(|(_, m)| is_bind(m)) {
            let source = m["source"].as_str().unwrap_or_default();
            let source = bundle.join(source);
            let meta = std::fs::metadata(&source).with_context(|| {
                format!(
                    "bind mount source {} of {}",
                    source.display(),
                    m["destination"]
                )
            })?;
            std::fs::create_dir_all(&dir)?;
            let target = dir.join(i.to_string());
            if meta.is_dir() {
                std::fs::create_dir(&target)?;
            } else {
                std::fs::File::create(&target)?;
            }
            let recursive = m["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x == "rbind"));
            bind(&source, &target, recursive)?;
            m["source"] = guest_share
                .join(MOUNTS)
                .join(i.to_string())
                .to_string_lossy()
                .into();
        }
    }

    if let Some(obj) = guest.as_object_mut() {
        obj.remove("hooks");
    }
    if let Some(process) = guest["process"].as_object_mut() {
        process.remove("apparmorProfile");
        process.remove("selinuxLabel");
    }
    if let Some(linux) = guest["linux"].as_object_mut() {
        linux.remove("mountLabel");
        linux.insert("cgroupsPath".into(), format!("/kata-rs/{id}").into());
        if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            for ns in namespaces {
                if let Some(ns) = ns.as_object_mut() {
                    ns.remove("path");
                }
            }
        }
    }
    Ok(guest)
}

/// Unmounts and removes what [`prepare`] made for `id`, and the share root
/// once it is empty. Never recurses into a directory that may still be a
/// mount of user data: each mount point is detached first, and only empty
/// directories and placeholder files are removed.
pub fn teardown(share_root: &Path, id: &str) -> Result<()> {
    let share = &share_root.join(id);
    if !share.exists() {
        let _ = std::fs::remove_dir(share_root);
        return Ok(());
    }
    let mut targets: Vec<PathBuf> = vec![share.join(ROOTFS)];
    if let Ok(entries) = std::fs::read_dir(share.join(MOUNTS)) {
        targets.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    for target in &targets {
        // Until EINVAL: a target may hold several stacked mounts.
        while umount2(target, MntFlags::MNT_DETACH).is_ok() {}
        match std::fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(target),
            Ok(_) => std::fs::remove_file(target),
            Err(_) => Ok(()),
        }
        .with_context(|| format!("remove {}", target.display()))?;
    }
    let mounts = share.join(MOUNTS);
    if mounts.exists() {
        std::fs::remove_dir(&mounts).with_context(|| format!("remove {}", mounts.display()))?;
    }
    std::fs::remove_dir(share).with_context(|| format!("remove {}", share.display()))?;
    // Other containers' directories keep a shared root alive.
    let _ = std::fs::remove_dir(share_root);
    Ok(())
}

/// Tears down the share of every container left under `share_root`.
pub fn teardown_all(share_root: &Path) {
    let Ok(entries) = std::fs::read_dir(share_root) else {
        return;
    };
    for id in entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
    {
        if let Err(e) = teardown(share_root, &id) {
            tracing::warn!(id, error = %e, "unmount a container's share");
        }
    }
}

/// Hooks that run inside the container's namespaces cannot run on the host
/// for a container in a VM.
pub fn refuse_guest_hooks(spec: &Value) -> Result<()> {
    for hook in ["createContainer", "startContainer"] {
        if spec["hooks"][hook]
            .as_array()
            .is_some_and(|h| !h.is_empty())
        {
            bail!(
                "{hook} hooks run in the container's namespaces, which are inside the VM; \
                 VM isolation does not run them (namespace isolation does)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_guest_spec_points_into_the_share_and_drops_host_only_parts() {
        let bundle = tempfile::tempdir().unwrap();
        std::fs::create_dir(bundle.path().join("rootfs")).unwrap();
        std::fs::create_dir(bundle.path().join("data")).unwrap();
        let sandbox = tempfile::tempdir().unwrap();
        let share = sandbox.path().join("share");
        let spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]},
            ],
            "hooks": {"poststop": [{"path": "/bin/true"}]},
            "process": {"apparmorProfile": "x"},
            "linux": {"cgroupsPath": "/host/path",
                      "namespaces": [{"type": "network", "path": "/run/netns/x"}]},
        });
        let guest = prepare("c1", bundle.path(), &spec, &share).unwrap();
        assert_eq!(
            guest["root"]["path"],
            format!("{GUEST_SHARE_DIR}/c1/rootfs")
        );
        assert_eq!(guest["mounts"][0]["source"], "proc");
        assert_eq!(
            guest["mounts"][1]["source"],
            format!("{GUEST_SHARE_DIR}/c1/mounts/1")
        );
        assert!(guest.get("hooks").is_none());
        assert!(guest["process"].get("apparmorProfile").is_none());
        assert_eq!(guest["linux"]["cgroupsPath"], "/kata-rs/c1");
        assert!(guest["linux"]["namespaces"][0].get("path").is_none());
        // The bind really happened: a file on the host shows in the share.
        std::fs::write(bundle.path().join("data/f"), "x").unwrap();
        assert!(share.join("c1/mounts/1/f").exists());
        teardown(&share, "c1").unwrap();
        assert!(!share.exists());
        assert!(
            bundle.path().join("data/f").exists(),
            "teardown must not touch sources"
        );
    }

    #[test]
    fn a_missing_bind_source_is_named() {
        let bundle = tempfile::tempdir().unwrap();
        std::fs::create_dir(bundle.path().join("rootfs")).unwrap();
        let sandbox = tempfile::tempdir().unwrap();
        let share = sandbox.path().join("share");
        let spec = json!({"root": {"path": "rootfs"},
            "mounts": [{"destination": "/d", "type": "bind", "source": "/nonexistent-src"}]});
        let err = prepare("c1", bundle.path(), &spec, &share).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent-src"), "{err:#}");
        teardown(&share, "c1").unwrap();
        assert!(!share.exists());
    }

    #[test]
    fn guest_side_hooks_are_refused() {
        let spec = json!({"hooks": {"createContainer": [{"path": "/bin/true"}]}});
        assert!(refuse_guest_hooks(&spec).is_err());
        assert!(refuse_guest_hooks(&json!({"hooks": {"poststart": []}})).is_ok());
    }
}
