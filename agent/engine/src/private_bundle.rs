//! The bundle libcontainer creates a container from, where the user's
//! config.json needs changing first, as `<root>/<id>@copyup/config.json`
//! (`@` never appears in an id):
//!
//! - runc's `tmpcopyup` mount option, which libcontainer does not know
//!   (see [`crate::copyup`]);
//! - the recursive forms of `linux.rootfsPropagation` (`rshared`,
//!   `rslave`, `rprivate`, `runbindable`), which runc takes and
//!   libcontainer refuses. libcontainer applies shared, slave and private
//!   to the whole mount tree below / anyway, so for those the plain form
//!   does the same; for `runbindable` it makes the tree a slave and only /
//!   itself unbindable, where runc makes the whole tree unbindable.
//!
//! The user's bundle stays as it was; state.json names it again once the
//! container exists.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::copyup;
use crate::error::{EngineError, Result};

fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(format!("{id}@copyup"))
}

/// The plain form of a recursive propagation, if `value` is one.
fn plain_propagation(value: &str) -> Option<&'static str> {
    match value {
        "rshared" => Some("shared"),
        "rslave" => Some("slave"),
        "rprivate" => Some("private"),
        "runbindable" => Some("unbindable"),
        _ => None,
    }
}

/// If the spec needs changing for libcontainer, writes the changed copy
/// (and prepares its copy-up mounts) and returns the private bundle to
/// create from; otherwise None.
pub fn prepare(root: &Path, id: &str, bundle: &Path, spec: &Spec) -> Result<Option<PathBuf>> {
    let propagation = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(plain_propagation);
    if propagation.is_none() && !copyup::wanted(spec) {
        return Ok(None);
    }
    let io = |step: &'static str| move |e: std::io::Error| EngineError::io(id, step, e);
    let private = dir(root, id);
    // One left by an agent that died mid-create: the id's lock is held
    // and it has no state, so nothing uses it.
    cleanup(root, id);
    std::fs::create_dir(&private).map_err(io("create the private bundle"))?;
    let rootfs = bundle.join(
        spec.root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_default(),
    );
    let mut spec = spec.clone();
    copyup::rewrite_mounts(id, &private, bundle, &rootfs, &mut spec)?;
    if let (Some(plain), Some(linux)) = (propagation, spec.linux_mut()) {
        linux.set_rootfs_propagation(Some(plain.to_owned()));
    }
    if let Some(r) = spec.root().clone() {
        let mut r = r;
        r.set_path(rootfs);
        spec.set_root(Some(r));
    }
    let text = serde_json::to_vec(&spec).map_err(|e| EngineError::Engine {
        id: id.to_owned(),
        step: "write the private bundle's config",
        message: e.to_string(),
    })?;
    std::fs::write(private.join("config.json"), text)
        .map_err(io("write the private bundle's config"))?;
    Ok(Some(private))
}

/// Removes the private bundle of `id`, if any, unmounting its copy-up
/// mounts.
pub fn cleanup(root: &Path, id: &str) {
    let private = dir(root, id);
    let Ok(entries) = std::fs::read_dir(&private) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.is_dir() {
            copyup::unmount(&path);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    let _ = std::fs::remove_dir(&private);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        });
        base.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn propagation_of(private: &Path) -> Option<String> {
        let rewritten: Spec =
            serde_json::from_slice(&std::fs::read(private.join("config.json")).unwrap()).unwrap();
        rewritten
            .linux()
            .as_ref()
            .and_then(|l| l.rootfs_propagation().clone())
    }

    #[test]
    fn a_recursive_propagation_gets_its_plain_form() {
        let root = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        for (asked, given) in [
            ("rshared", "shared"),
            ("rslave", "slave"),
            ("rprivate", "private"),
            ("runbindable", "unbindable"),
        ] {
            let s = spec(serde_json::json!({"linux": {"rootfsPropagation": asked}}));
            let private = prepare(root.path(), "c1", bundle.path(), &s)
                .unwrap()
                .expect("a private bundle");
            assert_eq!(propagation_of(&private).as_deref(), Some(given));
            cleanup(root.path(), "c1");
            assert!(!private.exists());
        }
    }

    #[test]
    fn a_spec_libcontainer_takes_as_it_is_needs_no_copy() {
        let root = tempfile::tempdir().unwrap();
        for value in ["shared", "slave", "private", "unbindable"] {
            let s = spec(serde_json::json!({"linux": {"rootfsPropagation": value}}));
            assert!(prepare(root.path(), "c1", root.path(), &s)
                .unwrap()
                .is_none());
        }
        assert!(
            prepare(root.path(), "c1", root.path(), &spec(serde_json::json!({})))
                .unwrap()
                .is_none()
        );
    }
}
