//! The thread that runs an activated vsock device: one epoll loop over the
//! queue eventfds, the kill eventfd, the listener and the Unix streams.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{Backend, FD_TOKEN_BASE};
use super::packet::{RxBuffer, TxPacket};
use crate::devices::virtio::{ActivateContext, ActivateError, Interrupt};
use crate::memory::GuestMemory;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const NUM_QUEUES: usize = 3;

// Epoll tokens: the queues (rx, tx, event) use their indices.
const TOKEN_KILL: u64 = 3;
pub(super) const TOKEN_LISTENER: u64 = 4;

struct Worker {
    mem: GuestMemory,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    epoll: Epoll,
    backend: Backend,
}

/// A running worker; [`WorkerHandle::stop`] gives the backend back.
pub struct WorkerHandle {
    kill: EventFd,
    thread: JoinHandle<Backend>,
}

impl WorkerHandle {
    /// Stops the worker and returns its backend, or `None` if the worker
    /// panicked (and the backend went with it).
    pub fn stop(self) -> Option<Backend> {
        if let Err(e) = self.kill.write(1) {
            tracing::error!(error = %e, "cannot stop the vsock worker");
        }
        self.thread.join().ok()
    }
}

/// Starts the worker on the backend in `slot`. The backend stays in the
/// slot if setting up fails; if the thread cannot be created it is lost (and
/// the socket file removed), which the error reports.
pub fn spawn(
    ctx: ActivateContext,
    slot: &mut Option<Backend>,
) -> Result<WorkerHandle, ActivateError> {
    let backend = slot
        .take()
        .ok_or_else(|| ActivateError::Invalid("the vsock backend was lost".into()))?;
    let setup = || -> std::io::Result<(Epoll, EventFd)> {
        let epoll = Epoll::new()?;
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let watch = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        for (index, evt) in ctx.queue_events.iter().enumerate() {
            watch(evt.as_raw_fd(), index as u64)?;
        }
        watch(kill.as_raw_fd(), TOKEN_KILL)?;
        watch(backend.listener_fd(), TOKEN_LISTENER)?;
        Ok((epoll, kill))
    };
    let (epoll, kill) = match setup() {
        Ok(v) => v,
        Err(e) => {
            *slot = Some(backend);
            return Err(ActivateError::Worker(e));
        }
    };
    let worker = Worker {
        mem: ctx.mem,
        queues: ctx.queues,
        queue_events: ctx.queue_events,
        interrupt: ctx.interrupt,
        epoll,
        backend,
    };
    let thread = std::thread::Builder::new()
        .name("vsock".into())
        .spawn(move || worker.run())
        .map_err(ActivateError::Worker)?;
    Ok(WorkerHandle { kill, thread })
}

impl Worker {
    fn run(mut self) -> Backend {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = match self.backend.next_deadline() {
                // Rounded up, so the wait never ends just short of a deadline.
                Some(d) => {
                    let us = d.saturating_duration_since(Instant::now()).as_micros();
                    i32::try_from(us.div_ceil(1000)).unwrap_or(i32::MAX)
                }
                None => -1,
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "vsock worker cannot wait for events");
                    return self.backend;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_KILL => return self.backend,
                    TOKEN_LISTENER => self.backend.accept(&self.epoll),
                    token if token >= FD_TOKEN_BASE => {
                        let fd = (token - FD_TOKEN_BASE) as RawFd;
                        self.backend.on_fd_event(&self.epoll, fd, ev.event_set());
                    }
                    token => {
                        // A queue was notified; all queues are looked at
                        // below anyway.
                        if let Some(evt) = self.queue_events.get(token as usize) {
                            let _ = evt.read();
                        }
                    }
                }
            }
            self.backend.on_timeouts(&self.epoll);
            // Tx may queue replies, and rx may make room for tx (RSTs).
            let mut used = self.process_rx();
            used |= self.process_tx();
            used |= self.process_rx();
            if used {
                self.interrupt.signal_used_queue();
            }
        }
    }

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
