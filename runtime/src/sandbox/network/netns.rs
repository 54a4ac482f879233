//! Entering a pod's network namespace from the shim.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Runs `f` on a thread of its own inside network namespace `ns`: setns
/// moves the calling thread only, and what it spawns starts in the
/// thread's namespace.
pub fn in_netns<T: Send + 'static>(
    ns: File,
    name: String,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter the network namespace {name}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("the pod network thread panicked"))?
}

/// A pod's namespace that is the shim's own would hand the host's own
/// interfaces to the VM.
pub fn refuse_own_namespace(ns: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let theirs = ns.metadata()?;
    let ours = std::fs::metadata("/proc/self/ns/net")?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        bail!(
            "{} is the host's own network namespace: a VM takes only a pod's",
            path.display()
        );
    }
    Ok(())
}
