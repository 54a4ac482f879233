//! What the worker thread of an active virtio-net device owns, and how it
//! hands the events of the queues and the tap to the receive ([`super::rx`])
//! and transmit ([`super::tx`]) sides.

use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;
use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::rx::TapState;
use super::{MAX_FRAME_LEN, NET_HDR_LEN};
use crate::devices::virtio::worker::EventHandler;
use crate::devices::virtio::Interrupt;
use crate::memory::GuestMemory;

pub(super) const TOKEN_RX_QUEUE: u64 = 0;
pub(super) const TOKEN_TX_QUEUE: u64 = 1;
pub(super) const TOKEN_TAP: u64 = 2;
/// At most one warning about dropped frames per interval: a guest that
/// floods the queues with bad chains must not flood the log as well.
const WARN_INTERVAL: Duration = Duration::from_secs(5);

/// What the worker counts, for its messages.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) tx_dropped: u64,
    pub(super) rx_dropped: u64,
}

/// Lets one warning through per WARN_INTERVAL and counts the rest.
#[derive(Default)]
pub(super) struct WarnLimit {
    next: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    /// Some(warnings suppressed since the last one) if this one may go out.
    pub(super) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + WARN_INTERVAL);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What the worker thread owns: the queues, guest memory, its own handle on
/// the tap and the epoll set that the tap enters and leaves.
pub(super) struct Handler {
    pub(super) mem: GuestMemory,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) tap: File,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) epoll: Epoll,
    pub(super) tap_state: TapState,
    /// The zeroed header (num_buffers = 1), then room for one frame; the
    /// first `rx_pending` bytes are a frame read from the tap that no
    /// receive buffer has taken yet.
    pub(super) rx_buf: Box<[u8; NET_HDR_LEN + MAX_FRAME_LEN]>,
    pub(super) rx_pending: Option<usize>,
    pub(super) tx_buf: Box<[u8; NET_HDR_LEN + MAX_FRAME_LEN]>,
    pub(super) stats: Stats,
    pub(super) drop_warnings: WarnLimit,
    /// Tap write errors other than a full queue are logged once.
    pub(super) tx_error_logged: bool,
}

/// The handler on the device's worker thread, woken by the queues'
/// eventfds and the tap.
pub(super) struct QueueWorker {
    pub(super) handler: Handler,
    pub(super) rx_evt: EventFd,
    pub(super) tx_evt: EventFd,
}

impl EventHandler for QueueWorker {
    type Output = ();

    fn epoll(&self) -> &Epoll {
        &self.handler.epoll
    }

    fn handle(&mut self, token: u64, set: EventSet) -> ControlFlow<()> {
        // Each eventfd is cleared before its ring is looked at, so a
        // notification racing with this pass is not lost.
        match token {
            TOKEN_RX_QUEUE => {
                let _ = self.rx_evt.read();
                self.handler.process_rx();
            }
            TOKEN_TX_QUEUE => {
                let _ = self.tx_evt.read();
                // A full batch yields to the other events; the eventfd
                // brings this thread back for the rest.
                if self.handler.process_tx() {
                    let _ = self.tx_evt.write(1);
                }
            }
            _ => {
                self.handler.process_rx();
                // Level-triggered: an error or hang-up would wake this loop
                // forever.
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    self.handler
                        .tap_failed("the tap reported an error or hang-up");
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn finish(self) {
        debug!(stats = ?self.handler.stats, "virtio-net worker stopped");
    }
}

impl Handler {
    /// Creates the epoll set with the tap in it; the caller adds the rest.
    pub(super) fn new(
        mem: GuestMemory,
        rx: Queue,
        tx: Queue,
        tap: File,
        interrupt: Arc<Interrupt>,
    ) -> io::Result<Handler> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            tap.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_TAP),
        )?;
        let mut rx_buf = Box::new([0u8; NET_HDR_LEN + MAX_FRAME_LEN]);
        rx_buf[NET_HDR_LEN - 2..NET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        Ok(Handler {
            mem,
            rx,
            tx,
            tap,
            interrupt,
            epoll,
            tap_state: TapState::Watched,
            rx_buf,
            rx_pending: None,
            tx_buf: Box::new([0u8; NET_HDR_LEN + MAX_FRAME_LEN]),
            stats: Stats::default(),
            drop_warnings: WarnLimit::default(),
            tx_error_logged: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited() {
        let mut limit = WarnLimit::default();
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        limit.next = Some(Instant::now());
        assert_eq!(limit.allow(), Some(2));
    }
}
