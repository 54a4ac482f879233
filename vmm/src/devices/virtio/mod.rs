//! virtio devices and the virtio-mmio transport that exposes them.
//!
//! A device implements [`VirtioDevice`]: it describes itself (type, queues,
//! features, config space) and, once the driver sets DRIVER_OK, is handed its
//! queues in [`ActivateContext`]. From then on the device processes its queues
//! on its own worker thread ([`worker`]), woken by the queue eventfds (KVM
//! ioeventfds on the QueueNotify register), and tells the guest about used
//! buffers through the shared [`Interrupt`]. Devices that serve their own
//! queues take chains off them with [`ring`] and turn them into checked
//! guest buffers with [`chain`]; virtio-fs leaves its rings to virtiofsd.

pub mod block;
mod chain;
pub mod fs;
pub mod mmio;
pub mod net;
mod ring;
#[cfg(test)]
mod test_driver;
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;
use crate::seccomp::ThreadKind;

/// virtio device IDs (virtio 1.2, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Feature bit every device offers: the modern (non-legacy) interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits of virtio-mmio (InterruptStatus register).
pub const INT_USED_RING: u32 = 0x1;
pub const INT_CONFIG_CHANGE: u32 = 0x2;

/// The interrupt line of one device: the status bits the driver reads and
/// acknowledges through the transport, and the eventfd wired to the guest's
/// interrupt controller (a KVM irqfd).
pub struct Interrupt {
    status: AtomicU32,
    /// Bumped on every configuration change, so that the transport's
    /// ConfigGeneration register lets the driver detect a torn config read.
    config_generation: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            evt,
        }
    }

    pub fn signal_used_queue(&self) {
        self.signal(INT_USED_RING);
    }

    /// Call after the device changed its configuration space.
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.signal(INT_CONFIG_CHANGE);
    }

    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::error!(error = %e, "cannot raise a virtio interrupt");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// What a device receives when the driver has finished setting it up.
pub struct ActivateContext {
    pub mem: GuestMemory,
    /// The queues as the driver configured them, in queue index order.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, signalled when the driver notifies that queue.
    pub queue_events: Vec<EventFd>,
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted (a subset of `features()`).
    pub acked_features: u64,
    /// The device's own thread, which its worker runs on.
    pub thread: worker::DeviceThread,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("cannot start the device worker: {0}")]
    Worker(#[source] std::io::Error),
    #[error("the device cannot be activated: {0}")]
    Invalid(String),
}

/// Copies the part of a read-only configuration space `config` that a
/// guest read of `data.len()` bytes at `offset` covers; whatever lies past
/// its end (or an offset no index can hold) reads as zeros.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(src) = usize::try_from(offset)
        .ok()
        .and_then(|start| config.get(start..))
    else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}

pub trait VirtioDevice: Send {
    /// The virtio device ID (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// The seccomp filter its thread runs under.
    fn thread_kind(&self) -> ThreadKind;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features offered to the driver, `VIRTIO_F_VERSION_1` included.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space. Out-of-range reads
    /// must leave `data` zeroed, not panic.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space; devices without
    /// writable config ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device; called once per driver initialisation.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the device after the driver wrote 0 to the status register, so
    /// it can be activated again. Returns false if the device cannot be reset.
    fn reset(&mut self) -> bool;
}
