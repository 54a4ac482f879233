//! Entering a pod's network namespace from the shim.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use super::error::{NetworkError, Result};

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
            .map_err(|cause| NetworkError::Enter { netns: name, cause })?;
        f()
    })
    .join()
    .map_err(|_| NetworkError::Panicked)?
}

/// A pod's namespace that is the shim's own would hand the host's own
/// interfaces to the VM.
pub fn refuse_own_namespace(ns: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let inspect = |at: &Path, cause| NetworkError::Inspect {
        path: at.to_owned(),
        cause,
    };
    let theirs = ns.metadata().map_err(|e| inspect(path, e))?;
    let own = Path::new("/proc/self/ns/net");
    let ours = std::fs::metadata(own).map_err(|e| inspect(own, e))?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(NetworkError::HostNamespace(path.to_owned()));
    }
    Ok(())
}
