//! The binary of a process that starts containers, kept out of their
//! reach. While the engine sets a container's process up, and whenever a
//! container makes that process exec `/proc/self/exe` (a `#!/proc/self/exe`
//! script, CVE-2019-5736), the container can reach `/proc/<pid>/exe` of a
//! process running our binary; were that the host's file, the container
//! could open it and write it once the process is gone. As runc and youki
//! do, such a process first re-executes itself from a sealed in-memory copy
//! of its binary, which nothing can write, shrink or grow.

/// Why the binary could not be sealed.
#[derive(Debug, thiserror::Error)]
#[error("re-execute from a sealed copy of this binary (/proc/self/exe)")]
pub struct SealError(#[source] std::io::Error);

/// Re-executes the calling process from a sealed copy of its binary, with
/// the same arguments, environment and open descriptors, unless it runs
/// from one already; returns only then. Call it before anything an exec
/// would lose: threads, terminals made, descriptors opened close-on-exec.
pub fn run_sealed() -> Result<(), SealError> {
    pentacle::ensure_sealed().map_err(SealError)
}
