//! containerd's rootfs mounts, mounted on a bundle's root as containerd's
//! runc shim does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_spec::runtime::Spec;

/// One of containerd's rootfs mounts.
#[derive(Debug, Clone)]
pub struct RootfsMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Mounts containerd's rootfs mounts (an overlay of the image's layers,
/// usually) on the bundle's root path, as containerd's runc shim does.
pub fn mount_rootfs(bundle: &Path, spec: &Spec, mounts: &[RootfsMount]) -> Result<Option<PathBuf>> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let root = spec
        .root()
        .as_ref()
        .map_or(Path::new("rootfs"), |r| r.path());
    let target = bundle.join(root);
    std::fs::create_dir_all(&target).with_context(|| format!("create {}", target.display()))?;
    for m in mounts {
        mount_one(m, &target)
            .with_context(|| format!("mount the rootfs ({} {})", m.kind, m.source))?;
    }
    Ok(Some(target))
}

/// One mount in containerd's terms: flag options become mount flags, the
/// others the filesystem's data. (containerd_shim's own helper forks and
/// waits through its reaper, which this shim does not run.)
fn mount_one(m: &RootfsMount, target: &Path) -> Result<()> {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in &m.options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    if m.kind == "bind" {
        flags |= MsFlags::MS_BIND;
    }
    let data = data.join(",");
    nix::mount::mount(
        Some(m.source.as_str()),
        target,
        Some(m.kind.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )?;
    Ok(())
}

pub fn unmount(target: &Path) {
    if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(target = %target.display(), error = %e, "unmount the rootfs");
    }
}
