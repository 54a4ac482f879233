//! How joining a pod's network to its VM fails.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("open {}: {cause}", path.display())]
    Open { path: PathBuf, cause: io::Error },
    #[error("{}: {cause}", path.display())]
    Inspect { path: PathBuf, cause: io::Error },
    #[error("{} is the host's own network namespace: a VM takes only a pod's", .0.display())]
    HostNamespace(PathBuf),
    #[error("enter the network namespace {netns}: {cause}")]
    Enter { netns: String, cause: nix::Error },
    #[error("the pod network thread panicked")]
    Panicked,
    /// iproute2 could not be run.
    #[error("run {what}: {cause}")]
    Spawn { what: String, cause: io::Error },
    /// iproute2 refused; `stderr` says why.
    #[error("{what}: {stderr}")]
    Refused { what: String, stderr: String },
    #[error("{what}: not JSON: {cause}")]
    NotJson {
        what: String,
        cause: serde_json::Error,
    },
    #[error("open /dev/net/tun: {0}")]
    Tun(io::Error),
    #[error("create the tap {name}: {cause}")]
    Tap { name: String, cause: io::Error },
}

pub type Result<T, E = NetworkError> = std::result::Result<T, E>;
