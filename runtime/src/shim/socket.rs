//! The shim's ttrpc socket in containerd's state directory
//! (`/run/containerd/s/<hash>`), which the shim must not leave behind.
//!
//! containerd removes the bundle directory, where the shim keeps its
//! address, as soon as the shim answers Shutdown, so the shim cannot count
//! on finding the address there on its way out: it removes its socket before
//! it answers, as runc's shim does, and `shim delete` removes one that no
//! shim serves any more (a shim that was killed, or never got that far).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

#[derive(Debug, Clone)]
pub struct ShimSocket(PathBuf);

impl ShimSocket {
    /// From the `-socket` flag or an address containerd's way
    /// (`unix:///run/containerd/s/<hash>`).
    pub fn from_address(address: &str) -> Self {
        ShimSocket(PathBuf::from(
            address.strip_prefix("unix://").unwrap_or(address),
        ))
    }

    /// The socket of the shim that serves `grouping` for the containerd at
    /// `containerd_address` in `namespace`.
    pub fn of(containerd_address: &str, namespace: &str, grouping: &str) -> Self {
        Self::from_address(&containerd_shim::socket_address(
            containerd_address,
            namespace,
            grouping,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Removes the socket; connections already made stay open.
    pub fn remove(&self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => tracing::debug!(socket = %self.0.display(), "removed the shim's socket"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %self.0.display(), error = %e, "remove the shim's socket")
            }
        }
    }

    /// Removes the socket if nothing listens on it: another container's
    /// `shim delete` must not take a running pod's socket away. The probe
    /// does not wait: a listener with a full backlog is a live one.
    pub fn remove_if_stale(&self) {
        let refused = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .and_then(|fd| {
            let address = UnixAddr::new(&self.0)?;
            connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address)
        });
        if refused == Err(Errno::ECONNREFUSED) {
            self.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_address_is_containerds_hash_of_address_namespace_and_grouping() {
        let s = ShimSocket::of("/run/containerd/containerd.sock", "k8s.io", "pod-a");
        assert!(s.path().starts_with("/run/containerd/s/"));
        assert_eq!(s.path().file_name().unwrap().len(), 64);
        assert_ne!(
            s.path(),
            ShimSocket::of("/run/containerd/containerd.sock", "k8s.io", "pod-b").path()
        );
    }

    #[test]
    fn only_a_socket_nothing_serves_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let socket = ShimSocket::from_address(&format!("unix://{}", path.display()));
        let listener = UnixListener::bind(&path).unwrap();
        socket.remove_if_stale();
        assert!(path.exists(), "a served socket was removed");
        drop(listener);
        socket.remove_if_stale();
        assert!(!path.exists(), "a stale socket was left");
        socket.remove();
    }
}
