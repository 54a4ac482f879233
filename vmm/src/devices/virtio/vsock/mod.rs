//! virtio-vsock (virtio 1.2, 5.10) in userspace, with Firecracker's hybrid
//! Unix-socket host interface:
//!
//! - a host process connects to `<uds>` and writes `CONNECT <port>\n`; once
//!   the guest accepts, it reads `OK <hostport>\n` and the stream relays to
//!   guest port `<port>`;
//! - a guest connection to host (CID 2) port P is relayed to the Unix socket
//!   `<uds>_<P>`.
//!
//! Modules: [`packet`] (header and descriptor chains), [`connection`] (one
//! connection's state and credit), [`backend`] (listener, handshakes,
//! connection table), [`handshake`] (the `CONNECT` line), `worker` (the
//! epoll loop of an activated device).

mod backend;
mod connection;
mod handshake;
mod packet;
#[cfg(test)]
mod tests;
mod worker;

use std::path::{Path, PathBuf};

pub use backend::SocketFile;

use backend::{Backend, Timeouts};
use worker::{WorkerHandle, NUM_QUEUES};

use super::{
    read_config_space, ActivateContext, ActivateError, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1,
};

/// The size of each of the three queues (rx, tx, event).
pub const QUEUE_SIZE: u16 = 256;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("invalid guest CID {0}: it must be between 3 and 4294967294")]
    InvalidCid(u64),
    #[error("vsock socket path {0} in use: another process listens on it")]
    InUse(PathBuf),
    #[error("vsock socket path {0} exists and is not a socket")]
    NotSocket(PathBuf),
    #[error("cannot check the vsock socket path {path}: {source}")]
    Probe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the stale vsock socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on the vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    socket_file: SocketFile,
    /// Here while the device is not running; with the worker while it is.
    backend: Option<Backend>,
    worker: Option<WorkerHandle>,
}

impl Vsock {
    /// Creates the device for guest CID `guest_cid` and listens on
    /// `uds_path` right away. A stale socket file there (nobody listening)
    /// is replaced; a live one is an error. The file is removed when the
    /// device is dropped.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        Self::with_timeouts(guest_cid, uds_path, Timeouts::default())
    }

    fn with_timeouts(
        guest_cid: u64,
        uds_path: &Path,
        timeouts: Timeouts,
    ) -> Result<Self, VsockError> {
        // 0-2 are reserved and u32::MAX is VMADDR_CID_ANY; the upper 32 bits
        // of the config field are reserved.
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let backend = Backend::bind(uds_path, guest_cid, timeouts)?;
        tracing::info!(guest_cid, path = %uds_path.display(), "vsock listening");
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            socket_file: backend.socket_file(),
            backend: Some(backend),
            worker: None,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The listening socket's file, for an owner that must remove it on an
    /// exit path where the device itself is never dropped.
    pub fn socket_file(&self) -> SocketFile {
        self.socket_file.clone()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn thread_kind(&self) -> crate::seccomp::ThreadKind {
        crate::seccomp::ThreadKind::Vsock
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(offset, len = data.len(), "ignoring a write to vsock config");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Invalid("vsock is already active".into()));
        }
        if ctx.queues.len() != NUM_QUEUES || ctx.queue_events.len() != NUM_QUEUES {
            return Err(ActivateError::Invalid(format!(
                "vsock needs {NUM_QUEUES} queues and queue events, got {} and {}",
                ctx.queues.len(),
                ctx.queue_events.len()
            )));
        }
        self.worker = Some(worker::spawn(ctx, &mut self.backend)?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let Some(worker) = self.worker.take() else {
            return true;
        };
        match worker.stop() {
            Ok(Some(mut backend)) => {
                backend.reset();
                self.backend = Some(backend);
                true
            }
            Ok(None) => {
                tracing::error!("the vsock worker died; the device cannot be reset");
                false
            }
            Err(worker) => {
                self.worker = Some(worker);
                false
            }
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // Joining gets the backend back, so the socket file goes with it.
        if let Some(worker) = self.worker.take() {
            let _ = worker.stop();
        }
    }
}
