//! The thread an activated device works on, the same for every device: an
//! epoll set over the device's eventfds and sockets plus a kill eventfd, a
//! loop that hands each ready token to the device's [`EventHandler`], and a
//! [`Worker`] handle that stops the loop and waits for it.
//!
//! The loop runs on the device's [`DeviceThread`], made when the VM is
//! built and confined by the device's seccomp filter before the guest
//! runs; activations come from vCPU threads, which may not start threads
//! themselves (a new thread would inherit the vCPU's filter).

use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use crate::seccomp::{self, SeccompMode, ThreadKind};

use tracing::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The kill eventfd's token; a device's own tokens are below it.
pub const TOKEN_KILL: u64 = u64::MAX;

/// How many ready fds one wait returns at most.
const EVENTS_PER_WAIT: usize = 64;

/// What a device does on its worker thread.
pub trait EventHandler: Send + 'static {
    /// What the thread hands back when it ends.
    type Output: Send + 'static;

    /// The epoll set the thread waits on; the handler may add and remove
    /// its own fds in it as it goes.
    fn epoll(&self) -> &Epoll;

    /// Handles a ready `token` (as registered) with readiness `set`;
    /// `Break` ends the thread.
    fn handle(&mut self, token: u64, set: EventSet) -> ControlFlow<()>;

    /// How long the next wait may last, in milliseconds; -1 for no bound.
    fn timeout_ms(&mut self) -> i32 {
        -1
    }

    /// Runs after each wait, once its events are handled (or it timed out).
    fn after_wait(&mut self) {}

    /// Ends the handler when the thread ends.
    fn finish(self) -> Self::Output;
}

type Job = Box<dyn FnOnce() + Send>;

/// A device's own thread for the VM's life: it installs its seccomp filter
/// first, then runs the device's workers one after the other.
#[derive(Clone)]
pub struct DeviceThread {
    name: &'static str,
    jobs: mpsc::Sender<Job>,
}

impl DeviceThread {
    /// Starts the thread of a device of `kind` and waits until it has
    /// installed its seccomp filter for `mode`.
    pub fn spawn(kind: ThreadKind, mode: SeccompMode) -> io::Result<Self> {
        let name = kind.name();
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let confined = seccomp::install(kind, mode);
                let go = confined.is_ok();
                let _ = ready_tx.send(confined);
                if go {
                    for job in queue {
                        job();
                    }
                }
            })?;
        ready
            .recv()
            .map_err(|_| io::Error::other(format!("the {name} thread ended at its start")))?
            .map_err(io::Error::other)?;
        Ok(Self { name, jobs })
    }
}

/// Why a worker did not start, and its handler, given back where the
/// handler was not yet handed to the device's thread.
pub struct SpawnError<H> {
    pub error: io::Error,
    pub handler: Option<H>,
}

/// A device's running worker.
pub struct Worker<T> {
    name: &'static str,
    kill: EventFd,
    finished: Arc<AtomicBool>,
    output: mpsc::Receiver<T>,
}

impl<T: Send + 'static> Worker<T> {
    /// Adds `fds` (fd, readiness, token) and a kill eventfd to the
    /// handler's epoll set and runs the handler on the device's `thread`.
    pub fn spawn<H: EventHandler<Output = T>>(
        thread: &DeviceThread,
        handler: H,
        fds: &[(RawFd, EventSet, u64)],
    ) -> Result<Self, SpawnError<H>> {
        let kill = match EventFd::new(EFD_NONBLOCK) {
            Ok(kill) => kill,
            Err(error) => {
                return Err(SpawnError {
                    error,
                    handler: Some(handler),
                })
            }
        };
        for &(fd, set, token) in fds
            .iter()
            .chain([(kill.as_raw_fd(), EventSet::IN, TOKEN_KILL)].iter())
        {
            if let Err(error) =
                handler
                    .epoll()
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(set, token))
            {
                return Err(SpawnError {
                    error,
                    handler: Some(handler),
                });
            }
        }
        let name = thread.name;
        let finished = Arc::new(AtomicBool::new(false));
        let (done, output) = mpsc::sync_channel(1);
        let flag = finished.clone();
        let job: Job = Box::new(move || {
            // Where a panic unwinds (test builds; release builds abort), it
            // ends this worker, not the device's thread.
            if let Ok(out) = catch_unwind(AssertUnwindSafe(|| run(handler, name))) {
                let _ = done.send(out);
            }
            flag.store(true, Ordering::SeqCst);
        });
        if let Err(mpsc::SendError(job)) = thread.jobs.send(job) {
            // A device's thread runs until its last handle goes, so this
            // is not expected. The handler is not dropped here: a vCPU
            // thread's filter need not allow what dropping a device's
            // resources does.
            std::mem::forget(job);
            return Err(SpawnError {
                error: io::Error::other(format!("the {name} thread has ended")),
                handler: None,
            });
        }
        Ok(Self {
            name,
            kill,
            finished,
            output,
        })
    }

    /// Whether the worker has ended (by itself: its handler broke off).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Ends the worker and waits for it: what it handed back, or None if
    /// it panicked. The worker comes back as the error if it could not be
    /// told to end.
    pub fn stop(self) -> Result<Option<T>, Self> {
        if let Err(e) = self.kill.write(1) {
            error!(worker = self.name, error = %e, "cannot stop the device's worker");
            return Err(self);
        }
        match self.output.recv() {
            Ok(output) => Ok(Some(output)),
            Err(_) => {
                error!(worker = self.name, "the device's worker panicked");
                Ok(None)
            }
        }
    }
}

/// Stops the worker in `slot`, if any; false if it could not be told to,
/// and then it stays there.
pub fn stop_slot<T: Send + 'static>(slot: &mut Option<Worker<T>>) -> bool {
    let Some(worker) = slot.take() else {
        return true;
    };
    match worker.stop() {
        Ok(_) => true,
        Err(worker) => {
            *slot = Some(worker);
            false
        }
    }
}

fn run<H: EventHandler>(mut handler: H, name: &'static str) -> H::Output {
    let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
    loop {
        let timeout = handler.timeout_ms();
        let n = match handler.epoll().wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!(worker = name, error = %e, "the device's worker cannot wait for events; stopping");
                return handler.finish();
            }
        };
        for event in &events[..n] {
            if event.data() == TOKEN_KILL
                || handler.handle(event.data(), event.event_set()).is_break()
            {
                return handler.finish();
            }
        }
        handler.after_wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Counts its eventfd's wake-ups and stops at the third.
    struct Counter {
        epoll: Epoll,
        evt: EventFd,
        seen: u64,
        waits: mpsc::Sender<u64>,
    }

    impl EventHandler for Counter {
        type Output = u64;

        fn epoll(&self) -> &Epoll {
            &self.epoll
        }

        fn handle(&mut self, token: u64, _set: EventSet) -> ControlFlow<()> {
            assert_eq!(token, 7);
            self.seen += self.evt.read().unwrap();
            if self.seen >= 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }

        fn after_wait(&mut self) {
            let _ = self.waits.send(self.seen);
        }

        fn finish(self) -> u64 {
            self.seen
        }
    }

    fn counter() -> (Worker<u64>, EventFd, mpsc::Receiver<u64>) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        let handler = Counter {
            epoll: Epoll::new().unwrap(),
            evt: evt.try_clone().unwrap(),
            seen: 0,
            waits: tx,
        };
        let fds = [(evt.as_raw_fd(), EventSet::IN, 7)];
        let thread = crate::devices::virtio::test_driver::thread();
        (Worker::spawn(&thread, handler, &fds).ok().unwrap(), evt, rx)
    }

    #[test]
    fn the_worker_hands_its_events_on_and_stops_when_told() {
        let (worker, evt, waits) = counter();
        evt.write(1).unwrap();
        assert_eq!(waits.recv().unwrap(), 1);
        assert_eq!(worker.stop().ok().flatten(), Some(1));
    }

    #[test]
    fn a_handler_that_breaks_ends_the_thread_with_its_output() {
        let (worker, evt, _waits) = counter();
        evt.write(3).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !worker.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the worker runs on");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(worker.stop().ok().flatten(), Some(3));
    }
}
