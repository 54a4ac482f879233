//! The directory virtio-fs shares with the guest: the bundle's root
//! filesystem and the sources of its bind mounts, bind-mounted in, and the
//! spec rewritten to the paths the guest sees them at.

use std::path::{Path, PathBuf};

use kata_rs_protocol::GUEST_SHARE_DIR;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{Mount, Spec};

use super::error::{FileError, OnPath};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("config.json has no root.path")]
    NoRoot,
    #[error("bind mount source {} of {destination:?}: {cause}", from.display())]
    BindSource {
        from: PathBuf,
        destination: PathBuf,
        cause: std::io::Error,
    },
    #[error("bind {} into the VM's share at {}: {cause}", from.display(), target.display())]
    Bind {
        from: PathBuf,
        target: PathBuf,
        cause: nix::Error,
    },
    #[error("make {} private: {cause}", target.display())]
    Private { target: PathBuf, cause: nix::Error },
    #[error(
        "{0} hooks run in the container's namespaces, which are inside the VM; \
         VM isolation does not run them (namespace isolation does)"
    )]
    GuestHooks(&'static str),
}

type Result<T, E = ShareError> = std::result::Result<T, E>;

const ROOTFS: &str = "rootfs";
const MOUNTS: &str = "mounts";

fn has_option(m: &Mount, option: &str) -> bool {
    m.options().iter().flatten().any(|o| o == option)
}

pub(crate) fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind") || has_option(m, "bind") || has_option(m, "rbind")
}

fn bind(source: &Path, target: &Path, recursive: bool) -> Result<()> {
    let flags = if recursive {
        MsFlags::MS_BIND | MsFlags::MS_REC
    } else {
        MsFlags::MS_BIND
    };
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|cause| {
        ShareError::Bind {
            from: source.to_owned(),
            target: target.to_owned(),
            cause,
        }
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
    .map_err(|cause| ShareError::Private {
        target: target.to_owned(),
        cause,
    })
}

/// Makes `<share_root>/<id>` and returns the spec the guest gets: rootfs
/// and bind sources under the guest's share, no hooks (the host runs them),
/// no host namespace paths, LSM labels or cgroup path. One share root can
/// serve several containers of a VM, each in its own directory.
pub fn prepare(id: &str, bundle: &Path, spec: &Spec, share_root: &Path) -> Result<Spec> {
    std::fs::create_dir_all(share_root).on_path("create", share_root)?;
    let share = &share_root.join(id);
    std::fs::create_dir(share).on_path("create", share)?;
    let mut guest = spec.clone();
    let guest_share = Path::new(GUEST_SHARE_DIR).join(id);

    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path())
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or(ShareError::NoRoot)?;
    let rootfs = bundle.join(root);
    let target = share.join(ROOTFS);
    std::fs::create_dir(&target).on_path("create", &target)?;
    bind(&rootfs, &target, true)?;
    if let Some(root) = guest.root_mut() {
        root.set_path(guest_share.join(ROOTFS));
    }

    if let Some(mounts) = guest.mounts_mut() {
        let dir = share.join(MOUNTS);
        for (i, m) in mounts.iter_mut().enumerate().filter(|(_, m)| is_bind(m)) {
            let source = bundle.join(m.source().clone().unwrap_or_default());
            let meta = std::fs::metadata(&source).map_err(|cause| ShareError::BindSource {
                from: source.clone(),
                destination: m.destination().clone(),
                cause,
            })?;
            std::fs::create_dir_all(&dir).on_path("create", &dir)?;
            let target = dir.join(i.to_string());
            if meta.is_dir() {
                std::fs::create_dir(&target).on_path("create", &target)?;
            } else {
                std::fs::File::create(&target).on_path("create", &target)?;
            }
            bind(&source, &target, has_option(m, "rbind"))?;
            m.set_source(Some(guest_share.join(MOUNTS).join(i.to_string())));
        }
    }

    guest.set_hooks(None);
    if let Some(process) = guest.process_mut() {
        process.set_apparmor_profile(None);
        process.set_selinux_label(None);
    }
    if let Some(linux) = guest.linux_mut() {
        linux.set_mount_label(None);
        linux.set_cgroups_path(Some(format!("/kata-rs/{id}").into()));
        for ns in linux.namespaces_mut().iter_mut().flatten() {
            ns.set_path(None);
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
        .on_path("remove", target)?;
    }
    let mounts = share.join(MOUNTS);
    if mounts.exists() {
        std::fs::remove_dir(&mounts).on_path("remove", &mounts)?;
    }
    std::fs::remove_dir(share).on_path("remove", share)?;
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
pub fn refuse_guest_hooks(spec: &Spec) -> Result<()> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    for (hook, listed) in [
        ("createContainer", hooks.create_container()),
        ("startContainer", hooks.start_container()),
    ] {
        if listed.as_ref().is_some_and(|h| !h.is_empty()) {
            return Err(ShareError::GuestHooks(hook));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::spec_of;
    use serde_json::json;

    #[test]
    fn the_guest_spec_points_into_the_share_and_drops_host_only_parts() {
        let bundle = tempfile::tempdir().unwrap();
        std::fs::create_dir(bundle.path().join("rootfs")).unwrap();
        std::fs::create_dir(bundle.path().join("data")).unwrap();
        let sandbox = tempfile::tempdir().unwrap();
        let share = sandbox.path().join("share");
        let spec = spec_of(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]},
            ],
            "hooks": {"poststop": [{"path": "/bin/true"}]},
            "process": {"apparmorProfile": "x", "user": {"uid": 0, "gid": 0}, "cwd": "/"},
            "linux": {"cgroupsPath": "/host/path",
                      "namespaces": [{"type": "network", "path": "/run/netns/x"}]},
        }));
        let guest =
            serde_json::to_value(prepare("c1", bundle.path(), &spec, &share).unwrap()).unwrap();
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
        let spec = spec_of(json!({"root": {"path": "rootfs"},
            "mounts": [{"destination": "/d", "type": "bind", "source": "/nonexistent-src"}]}));
        let err = prepare("c1", bundle.path(), &spec, &share).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent-src"), "{err:#}");
        teardown(&share, "c1").unwrap();
        assert!(!share.exists());
    }

    #[test]
    fn guest_side_hooks_are_refused() {
        let spec = spec_of(json!({"hooks": {"createContainer": [{"path": "/bin/true"}]}}));
        assert!(refuse_guest_hooks(&spec).is_err());
        assert!(refuse_guest_hooks(&spec_of(json!({"hooks": {"poststart": []}}))).is_ok());
    }
}
