//! How bringing a sandbox up or down fails: one variant per step, each
//! with the typed error of the part that failed, as its source where the
//! step only names what it was doing.

use std::io;
use std::path::{Path, PathBuf};

use super::agent::AgentError;
use super::network::NetworkError;
use super::record::RecordError;
use super::virtiofsd::VirtiofsdError;
use super::vmm::VmmError;
use crate::host_cgroup::HostCgroupError;

/// A file operation on a host path that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {cause}", path.display())]
pub struct FileError {
    /// What was done, as "create" or "remove".
    pub what: &'static str,
    pub path: PathBuf,
    pub cause: io::Error,
}

/// Names the operation and path of an I/O result's error.
pub trait OnPath<T> {
    fn on_path(self, what: &'static str, path: &Path) -> Result<T, FileError>;
}

impl<T> OnPath<T> for io::Result<T> {
    fn on_path(self, what: &'static str, path: &Path) -> Result<T, FileError> {
        self.map_err(|cause| FileError {
            what,
            path: path.to_owned(),
            cause,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Dir(#[from] FileError),
    #[error(transparent)]
    Cgroup(#[from] HostCgroupError),
    #[error("connect the pod's network {} to its VM: {cause}", netns.display())]
    Network { netns: PathBuf, cause: NetworkError },
    #[error(transparent)]
    Virtiofsd(#[from] VirtiofsdError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A step of the boot failed; what stood of the sandbox is gone again.
    #[error("boot the sandbox's VM")]
    Boot(#[source] Box<SandboxError>),
    /// What a sandbox recorded could not all be ended.
    #[error("sandbox {id}: {cause}")]
    End { id: String, cause: HostCgroupError },
}
