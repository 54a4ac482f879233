//! Reaping of child processes for PID 1.
//!
//! Every orphan in the guest is re-parented to the agent, and a zombie stays
//! until its parent waits for it, so the agent must wait for any child. But
//! a blanket `waitpid(-1)` would also consume the exit statuses of processes
//! the agent started itself (container processes), which their owners need.
//! So there is exactly one waiter, this reaper, and owners register the pids
//! they care about to get the status delivered to them; everything else is
//! reaped and logged.
//!
//! Registration and reaping are serialised by one lock: [`Reaper::watch`]
//! holds it across the spawn and the registration, so a child that exits
//! immediately cannot be reaped before its owner is registered.

use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The single waiter for the agent's children.
#[derive(Default)]
pub struct Reaper {
    watched: Mutex<HashMap<Pid, Sender<WaitStatus>>>,
}

impl Reaper {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Blocks SIGCHLD in the calling thread, and so in every thread it
    /// spawns afterwards. Call it first thing in main, before any thread
    /// exists: the reaper thread collects SIGCHLD with sigwait, and a thread
    /// with SIGCHLD unblocked would take the signal and drop it (its default
    /// action is to ignore).
    ///
    /// Children inherit the blocked mask across exec; std's Command resets
    /// it, and anything else that spawns processes must do so too.
    pub fn block_sigchld() -> nix::Result<()> {
        sigchld().thread_block()
    }

    /// Starts the thread that reaps on every SIGCHLD. Requires
    /// [`Reaper::block_sigchld`] to have been called before any thread was
    /// spawned.
    pub fn start(self: &Arc<Self>) -> io::Result<JoinHandle<()>> {
        let reaper = Arc::clone(self);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                let set = sigchld();
                loop {
                    // Signals coalesce, so one SIGCHLD may stand for many
                    // exits; reap() drains every waitable child. It also runs
                    // once before the first wait for children that exited
                    // before the thread started.
                    reaper.reap();
                    if let Err(e) = set.wait() {
                        tracing::error!(error = %e, "waiting for SIGCHLD");
                    }
                }
            })
    }

    /// Runs `spawn` with reaping held off and registers the pid it returns:
    /// its exit status is sent to the returned receiver instead of being
    /// logged as an orphan's.
    pub fn watch<T, E>(
        &self,
        spawn: impl FnOnce() -> Result<(Pid, T), E>,
    ) -> Result<(T, Receiver<WaitStatus>), E> {
        let mut watched = self.lock();
        let (pid, value) = spawn()?;
        let (tx, rx) = mpsc::channel();
        watched.insert(pid, tx);
        Ok((value, rx))
    }

    /// Reaps every child that has exited, without blocking.
    pub fn reap(&self) {
        let mut watched = self.lock();
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => Self::deliver(&mut watched, status),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "waitpid");
                    return;
                }
            }
        }
    }

    fn deliver(watched: &mut HashMap<Pid, Sender<WaitStatus>>, status: WaitStatus) {
        let Some(pid) = status.pid() else { return };
        match watched.remove(&pid) {
            // A dropped receiver means its owner stopped caring; nothing to do.
            Some(owner) => {
                let _ = owner.send(status);
            }
            None => tracing::debug!(?status, "reaped orphan"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Pid, Sender<WaitStatus>>> {
        // The map stays consistent even if a holder panicked (entries are
        // inserted or removed whole), so poisoning is not a reason to stop
        // reaping.
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn sigchld() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitid, Id};
    use std::process::Command;

    /// Waits until `pid` is a zombie without reaping it.
    fn wait_exited(pid: Pid) {
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).expect("waitid");
    }

    fn spawn(cmd: &str, args: &[&str]) -> io::Result<(Pid, ())> {
        let child = Command::new(cmd).args(args).spawn()?;
        Ok((Pid::from_raw(child.id() as i32), ()))
    }

    // One test, not several: reap() waits for any child of the test
    // process, so parallel tests spawning children would steal each
    // other's.
    #[test]
    fn watched_status_is_delivered_and_orphans_are_reaped() {
        let reaper = Reaper::new();

        let ((), watched) = reaper.watch(|| spawn("sh", &["-c", "exit 7"])).unwrap();
        let (orphan, ()) = spawn("true", &[]).unwrap();

        let watched_pid = match reaper.lock().keys().next() {
            Some(pid) => *pid,
            None => panic!("watched pid not registered"),
        };
        wait_exited(watched_pid);
        wait_exited(orphan);
        reaper.reap();

        assert_eq!(watched.try_recv(), Ok(WaitStatus::Exited(watched_pid, 7)));
        assert!(reaper.lock().is_empty(), "delivered entry must be dropped");
        // Both zombies are gone: nothing is left to wait for.
        assert_eq!(
            waitpid(orphan, Some(WaitPidFlag::WNOHANG)),
            Err(Errno::ECHILD)
        );
        assert_eq!(
            waitpid(watched_pid, Some(WaitPidFlag::WNOHANG)),
            Err(Errno::ECHILD)
        );
    }

    #[test]
    fn failed_spawn_registers_nothing() {
        let reaper = Reaper::new();
        let result = reaper.watch(|| -> Result<(Pid, ()), &str> { Err("no") });
        assert!(result.is_err());
        assert!(reaper.lock().is_empty());
    }
}
