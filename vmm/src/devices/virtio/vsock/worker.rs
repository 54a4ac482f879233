//! What an activated vsock device does on its worker thread: it waits on
//! the queue eventfds, the listener and the Unix streams.

use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Backend, FD_TOKEN_BASE};
use super::packet::{RxBuffer, TxPacket};
use crate::devices::virtio::worker::{EventHandler, Worker as DeviceWorker};
use crate::devices::virtio::{ActivateContext, ActivateError, Interrupt};
use crate::memory::GuestMemory;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const NUM_QUEUES: usize = 3;

// Epoll tokens: the queues (rx, tx, event) use their indices.
pub(super) const TOKEN_LISTENER: u64 = 4;

struct Worker {
    mem: GuestMemory,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    epoll: Epoll,
    backend: Backend,
}

/// A running worker; stopping it gives the backend back.
pub type WorkerHandle = DeviceWorker<Backend>;

/// Starts the worker on the backend in `slot`. On a failure the backend
/// goes back to the slot, unless the device's thread has ended (which
/// only one that failed to start does): then it is lost, with its socket
/// file, which the error reports.
pub fn spawn(
    ctx: ActivateContext,
    slot: &mut Option<Backend>,
) -> Result<WorkerHandle, ActivateError> {
    let backend = slot
        .take()
        .ok_or_else(|| ActivateError::Invalid("the vsock backend was lost".into()))?;
    let epoll = match Epoll::new() {
        Ok(epoll) => epoll,
        Err(e) => {
            *slot = Some(backend);
            return Err(ActivateError::Worker(e));
        }
    };
    let mut fds: Vec<(RawFd, EventSet, u64)> = ctx
        .queue_events
        .iter()
        .enumerate()
        .map(|(index, evt)| (evt.as_raw_fd(), EventSet::IN, index as u64))
        .collect();
    fds.push((backend.listener_fd(), EventSet::IN, TOKEN_LISTENER));
    let thread = ctx.thread;
    let worker = Worker {
        mem: ctx.mem,
        queues: ctx.queues,
        queue_events: ctx.queue_events,
        interrupt: ctx.interrupt,
        epoll,
        backend,
    };
    DeviceWorker::spawn(&thread, worker, &fds).map_err(|e| {
        *slot = e.handler.map(|worker| worker.backend);
        ActivateError::Worker(e.error)
    })
}

impl EventHandler for Worker {
    type Output = Backend;

    fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// Until the backend's next deadline, rounded up so that the wait never
    /// ends just short of it.
    fn timeout_ms(&mut self) -> i32 {
        match self.backend.next_deadline() {
            Some(d) => {
                let us = d.saturating_duration_since(Instant::now()).as_micros();
                i32::try_from(us.div_ceil(1000)).unwrap_or(i32::MAX)
            }
            None => -1,
        }
    }

    fn handle(&mut self, token: u64, set: EventSet) -> ControlFlow<()> {
        match token {
            TOKEN_LISTENER => self.backend.accept(&self.epoll),
            token if token >= FD_TOKEN_BASE => {
                let fd = (token - FD_TOKEN_BASE) as RawFd;
                self.backend.on_fd_event(&self.epoll, fd, set);
            }
            token => {
                // A queue was notified; all queues are looked at after the
                // wait anyway.
                if let Some(evt) = self.queue_events.get(token as usize) {
                    let _ = evt.read();
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn after_wait(&mut self) {
        self.backend.on_timeouts(&self.epoll);
        // Tx may queue replies, and rx may make room for tx (RSTs).
        let mut used = self.process_rx();
        used |= self.process_tx();
        used |= self.process_rx();
        if used {
            self.interrupt.signal_used_queue();
        }
    }

    fn finish(self) -> Backend {
        self.backend
    }
}

impl Worker {
    /// Fills rx buffers with the packets owed to the guest. Returns whether
    /// the used ring changed.
    fn process_rx(&mut self) -> bool {
        let mut used = false;
        while self.backend.has_rx() {
            let queue = &mut self.queues[RX_QUEUE];
            let Some(chain) = queue.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffer::new(&self.mem, chain) {
                Ok(buf) => match self.backend.next_rx(&self.epoll, buf.data_capacity()) {
                    Some((hdr, data)) => buf.write(&self.mem, &hdr, &data).unwrap_or_else(|e| {
                        tracing::debug!(error = %e, "cannot write a vsock rx packet");
                        0
                    }),
                    // A header-only buffer can never carry the data that is
                    // waiting: give it back empty rather than stall on it.
                    None if buf.data_capacity() == 0 => 0,
                    None => {
                        // Nothing after all: keep the buffer for later.
                        self.queues[RX_QUEUE].go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "dropping a malformed vsock rx buffer");
                    0
                }
            };
            if let Err(e) = self.queues[RX_QUEUE].add_used(&self.mem, head, len) {
                tracing::debug!(error = %e, "cannot return a vsock rx buffer");
            }
            used = true;
        }
        used
    }

    /// Hands the guest's packets to the backend. Returns whether the used
    /// ring changed.
    fn process_tx(&mut self) -> bool {
        let mut used = false;
        while !self.backend.tx_blocked() {
            let Some(chain) = self.queues[TX_QUEUE].pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            match TxPacket::read(&self.mem, chain) {
                Ok(pkt) => self.backend.recv_guest_packet(&self.epoll, pkt),
                Err(e) => tracing::debug!(error = %e, "dropping a malformed vsock tx packet"),
            }
            if let Err(e) = self.queues[TX_QUEUE].add_used(&self.mem, head, 0) {
                tracing::debug!(error = %e, "cannot return a vsock tx buffer");
            }
            used = true;
        }
        used
    }
}
