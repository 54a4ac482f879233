//! The `tmpcopyup` mount option (runc's, used by podman for the tmpfs
//! mounts of a read-only container): a tmpfs that starts with what the
//! image has at its destination. libcontainer does not know the option, so
//! the engine prepares such a tmpfs itself before create, fills it from the
//! root filesystem, and hands libcontainer a spec that bind-mounts it
//! instead, in the private bundle ([`crate::private_bundle`]): one tmpfs
//! per such mount there, unmounted at delete.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use oci_spec::runtime::{Mount, Spec};
use pathrs::error::ErrorKind;
use pathrs::flags::OpenFlags;

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
    if let Some(dir) =
        image_dir(rootfs, m.destination()).map_err(io("find the image's directory"))?
    {
        let mode = fstat(dir.as_raw_fd())
            .map_err(|e| EngineError::io(id, "copy up into a tmpfs", e.into()))?
            .st_mode;
        copy_tree(dir, at).map_err(io("copy up into a tmpfs"))?;
        if !options.iter().any(|o| o.starts_with("mode=")) {
            std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode & 0o7777))
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

/// The image's directory at `destination`, resolved inside the root
/// filesystem as the container will see it, so that a symlink in the image
/// (`/etc -> /etc` or `-> ../../..`) cannot turn the copy into one of a host
/// directory; None where the image has no directory there.
fn image_dir(rootfs: &Path, destination: &Path) -> io::Result<Option<OwnedFd>> {
    let root = pathrs::Root::open(rootfs).map_err(io::Error::other)?;
    match root.open_subpath(destination, OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY) {
        Ok(dir) => Ok(Some(dir.into())),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::OsError(Some(libc::ENOENT | libc::ENOTDIR))
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(io::Error::other(e)),
    }
}

/// Copies the directory open at `from` into `to`: files, directories and
/// symlinks, with modes and owners; other node types (devices, sockets,
/// fifos) are skipped. Each entry is opened relative to its directory's
/// descriptor and never through a symlink, so the walk stays in the image
/// even if the image changes under it.
fn copy_tree(from: OwnedFd, to: &Path) -> io::Result<()> {
    let owner = fstat(from.as_raw_fd())?;
    let mut dir = Dir::from(from)?;
    let dirfd = dir.as_raw_fd();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let target = to.join(OsStr::from_bytes(name.to_bytes()));
        let st = fstatat(Some(dirfd), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFLNK {
            std::os::unix::fs::symlink(readlinkat(Some(dirfd), name)?, &target)?;
        } else if kind == SFlag::S_IFDIR {
            let sub = open_entry(dirfd, name, OFlag::O_DIRECTORY)?;
            std::fs::create_dir(&target)?;
            copy_tree(sub, &target)?;
        } else if kind == SFlag::S_IFREG {
            let file = std::fs::File::from(open_entry(dirfd, name, OFlag::empty())?);
            // The entry may have been swapped since fstatat: copy only
            // what is still a regular file.
            if !file.metadata()?.is_file() {
                continue;
            }
            std::io::copy(&mut &file, &mut std::fs::File::create_new(&target)?)?;
        } else {
            continue;
        }
        if kind != SFlag::S_IFLNK {
            std::fs::set_permissions(
                &target,
                std::fs::Permissions::from_mode(st.st_mode & 0o7777),
            )?;
        }
        std::os::unix::fs::lchown(&target, Some(st.st_uid), Some(st.st_gid))?;
    }
    chown(to, Some(owner.st_uid), Some(owner.st_gid))
}

/// Opens directory entry `name` for reading, never through a symlink and
/// without blocking on a fifo swapped in.
fn open_entry(dirfd: RawFd, name: &CStr, extra: OFlag) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | extra;
    let fd = openat(Some(dirfd), name, flags, Mode::empty())?;
    // SAFETY: openat just returned this descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

    #[test]
    fn a_copy_up_through_the_images_symlinks_stays_in_the_image() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "host").unwrap();
        let root = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let rootfs = bundle.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("data")).unwrap();
        std::fs::write(rootfs.join("data/motd"), "image").unwrap();
        // An absolute link, a relative one climbing out, and a link inside
        // the tree the copy must keep as a link.
        std::os::unix::fs::symlink(host.path(), rootfs.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../..", rootfs.join("up")).unwrap();
        std::os::unix::fs::symlink(host.path(), rootfs.join("data/out")).unwrap();
        let mount = |dest: &str| {
            serde_json::json!({"destination": dest, "type": "tmpfs", "source": "tmpfs",
                               "options": ["size=1m", "tmpcopyup"]})
        };
        let up = format!("/up{}", host.path().display());
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [mount("/abs"), mount(&up), mount("/data")],
        }))
        .unwrap();
        let private = crate::private_bundle::prepare(root.path(), "c2", bundle.path(), &spec)
            .unwrap()
            .unwrap();
        let rewritten: Spec =
            serde_json::from_slice(&std::fs::read(private.join("config.json")).unwrap()).unwrap();
        let sources: Vec<_> = rewritten
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.source().clone().unwrap())
            .collect();
        for source in &sources[..2] {
            assert_eq!(std::fs::read_dir(source).unwrap().count(), 0, "{source:?}");
        }
        assert_eq!(
            std::fs::read_to_string(sources[2].join("motd")).unwrap(),
            "image"
        );
        assert_eq!(
            std::fs::read_link(sources[2].join("out")).unwrap(),
            host.path()
        );
        crate::private_bundle::cleanup(root.path(), "c2");
    }
}
