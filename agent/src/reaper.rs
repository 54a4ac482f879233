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
//!
//! The same lock keeps the reaper away from libcontainer's own waits. The
//! engine's create and exec fork an intermediate process and `waitpid`
//! that specific pid before they return; on a host, where the agent runs
//! hooks, create, start and delete also spawn each hook and wait for it.
//! They run inside `watch` or `hold`, so while they run no reap happens
//! and the status is still there for libcontainer. Any other
//! child that exits meanwhile stays a zombie until the lock is released;
//! its SIGCHLD is pending, so the reaper's next sigwait returns at once.
//! The container's init is cloned as a sibling of the intermediate, hence
//! a child of the agent, with no exit signal until it execs: the reaper
//! waits with `__WALL`, and at least once a second, so an init that dies
//! before exec is reaped too.

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
                    // Bounded, because a container's init that dies before
                    // it execs (killed while created, never started) sends
                    // no SIGCHLD at all.
                    let timeout = libc::timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    };
                    // SAFETY: both pointers are valid for the call; the
                    // signal info is not wanted.
                    let rc =
                        unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) };
                    if rc < 0 {
                        let e = Errno::last();
                        if e != Errno::EAGAIN && e != Errno::EINTR {
                            tracing::error!(error = %e, "waiting for SIGCHLD");
                        }
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

    /// Runs `f`, which waits for children of its own, with reaping held
    /// off.
    pub fn hold<T>(&self, f: impl FnOnce() -> T) -> T {
        let _watched = self.lock();
        f()
    }

    /// Reaps every child that has exited, without blocking.
    pub fn reap(&self) {
        let mut watched = self.lock();
        loop {
            // __WALL: libcontainer clones the container's init with no exit
            // signal, which plain waitpid skips until the init has exec'd.
            match waitpid(
                None::<Pid>,
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
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
