//! The `tmpcopyup` mount option (runc's, used by podman for the tmpfs
//! mounts of a read-only container): a tmpfs that starts with what the
//! image has at its destination. libcontainer does not know the option, so
//! the engine prepares such a tmpfs itself before create, fills it from the
//! root filesystem, and hands libcontainer a spec that bind-mounts it
//! instead, in the private bundle ([`crate::private_bundle`]): one tmpfs
//! per such mount there, unmounted at delete.

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{Mount, Spec};

use crate::error::{EngineError, Result};

pub const OPTION: &str = "tmpcopyup";

fn wants_copyup(m: &Mount) -> bool {
    m.typ().as_deref() == Some("tmpfs")
        && m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == OPTION))
}

/// Whether the spec has tmpcopyup mounts.
pub(crate) fn wanted(spec: &Spec) -> bool {
    spec.mounts()
        .as_ref()
        .is_some_and(|mounts| mounts.iter().any(wants_copyup))
}

/// Prepares the spec's tmpcopyup mounts under `private` and turns them
/// into bind mounts of those; makes relative bind sources absolute, since
/// the spec moves to `private`.
pub(crate) fn rewrite_mounts(
    id: &str,
    private: &Path,
    bundle: &Path,
    rootfs: &Path,
    spec: &mut Spec,
) -> Result<()> {
    let Some(mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    let mut new_mounts = Vec::new();
    for (n, m) in mounts.iter().enumerate() {
        let mut m = m.clone();
        if let Some(source) = m.source().clone().filter(|s| s.is_relative()) {
            if m.typ().as_deref() == Some("bind") {
                m.set_source(Some(bundle.join(source)));
            }
        }
        if wants_copyup(&m) {
            m = fill_tmpfs(id, &private.join(n.to_string()), rootfs, &m)?;
        }
        new_mounts.push(m);
    }
    spec.set_mounts(Some(new_mounts));
    Ok(())
}

/// Mounts a tmpfs at `at` with the mount's size/mode options, copies the
/// root filesystem's content at its destination into it, and returns the
/// bind mount that replaces it.
fn fill_tmpfs(id: &str, at: &Path, rootfs: &Path, m: &Mount) -> Result<Mount> {
    let io = |step: &'static str| move |e: std::io::Error| EngineError::io(id, step, e);
    std::fs::create_dir(at).map_err(io("create a copy-up mount point"))?;
    let options = m.options().clone().unwrap_or_default();
    let data: Vec<&str> = options
        .iter()
        .filter(|o| o.contains('='))
        .map(String::as_str)
        .collect();
    let data = data.join(",");
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| EngineError::io(id, "mount a copy-up tmpfs", e.into()))?;
    let destination = m.destination().strip_prefix("/").unwrap_or(m.destination());
    let source = rootfs.join(destination);
    if source.is_dir() {
        copy_tree(&source, at).map_err(io("copy up into a tmpfs"))?;
        let meta = std::fs::metadata(&source).map_err(io("copy up into a tmpfs"))?;
        if !options.iter().any(|o| o.starts_with("mode=")) {
            std::fs::set_permissions(at, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io("copy up into a tmpfs"))?;
        }
    }
    let mut flags: Vec<String> = options
        .iter()
        .filter(|o| !o.contains('=') && *o != OPTION)
        .cloned()
        .collect();
    flags.push("rbind".into());
    let mut bind = m.clone();
    bind.set_typ(Some("bind".into()));
    bind.set_source(Some(at.to_owned()));
    bind.set_options(Some(flags));
    Ok(bind)
}

/// Copies a directory tree: files, directories, symlinks, with modes and
/// owners. Other node types (devices, sockets) are skipped.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let meta = entry.path().symlink_metadata()?;
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::create_dir(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        } else {
            continue;
        }
        if !kind.is_symlink() {
            std::fs::set_permissions(
                &target,
                std::fs::Permissions::from_mode(meta.mode() & 0o7777),
            )?;
        }
        std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
    }
    let meta = from.metadata()?;
    chown(to, Some(meta.uid()), Some(meta.gid()))
}

/// Unmounts a copy-up tmpfs, however often it is stacked.
pub(crate) fn unmount(at: &Path) {
    while umount2(at, MntFlags::MNT_DETACH).is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_up_tmpfs_starts_with_the_images_content() {
        let root = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let etc = bundle.path().join("rootfs/etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("motd"), "hello").unwrap();
        std::os::unix::fs::symlink("motd", etc.join("link")).unwrap();
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": "/etc", "type": "tmpfs", "source": "tmpfs",
                        "options": ["nosuid", "size=1m", "tmpcopyup"]}],
        }))
        .unwrap();
        let private = crate::private_bundle::prepare(root.path(), "c1", bundle.path(), &spec)
            .unwrap()
            .unwrap();
        let rewritten: Spec =
            serde_json::from_slice(&std::fs::read(private.join("config.json")).unwrap()).unwrap();
        let m = &rewritten.mounts().as_ref().unwrap()[0];
        assert_eq!(m.typ().as_deref(), Some("bind"));
        let source = m.source().clone().unwrap();
        assert_eq!(
            std::fs::read_to_string(source.join("motd")).unwrap(),
            "hello"
        );
        assert!(source
            .join("link")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!m.options().as_ref().unwrap().contains(&OPTION.to_owned()));
        crate::private_bundle::cleanup(root.path(), "c1");
        assert!(!private.exists());
    }
}
