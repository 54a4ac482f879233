//! A container's processes as the shim keeps them: their stdio, whether
//! they started, and how they ended, told to any number of waiters.

use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use kata_rs_engine::ContainerStatus;
use oci_spec::runtime::Process as OciProcess;

use super::io::{Fifos, Relays};

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub struct Exited {
    pub status: u32,
    pub at: SystemTime,
    pub oom_killed: bool,
}

/// Where a process's exit is waited for by any number of callers. The exit
/// is recorded first (so that State and Delete see the process stopped as
/// soon as its exit event can be out), then released to the waiters once
/// the event is out (so that Wait returns after it).
#[derive(Default)]
pub struct ExitCell {
    state: Mutex<(Option<Exited>, bool)>,
    cond: Condvar,
}

impl ExitCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Exited>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, exited: Exited) {
        self.lock().0 = Some(exited);
    }

    pub fn release(&self) {
        self.lock().1 = true;
        self.cond.notify_all();
    }

    /// The exit, once recorded.
    pub fn get(&self) -> Option<Exited> {
        self.lock().0
    }

    /// The exit, once released.
    pub fn wait(&self) -> Exited {
        let mut state = self.lock();
        loop {
            if let (Some(e), true) = *state {
                return e;
            }
            state = self.cond.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A container's init or an exec'd process.
pub struct Process {
    pub fifos: Fifos,
    /// The OCI process of an exec, until it starts.
    pub exec_spec: Option<OciProcess>,
    pub relays: Option<Relays>,
    pub exit: Arc<ExitCell>,
    pub started: bool,
    /// Its pid where the agent runs, once known.
    pub pid: u32,
}

impl Process {
    pub fn new(fifos: Fifos, exec_spec: Option<OciProcess>) -> Self {
        Self {
            fifos,
            exec_spec,
            relays: None,
            exit: Arc::default(),
            started: false,
            pid: 0,
        }
    }

    pub fn status(&self, paused: bool) -> ContainerStatus {
        match (self.exit.get(), self.started, paused) {
            (Some(_), _, _) => ContainerStatus::Stopped,
            (None, false, _) => ContainerStatus::Created,
            (None, true, true) => ContainerStatus::Paused,
            (None, true, false) => ContainerStatus::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_exit_is_seen_when_recorded_and_waited_for_once_released() {
        let cell = Arc::new(ExitCell::default());
        let exited = Exited {
            status: 3,
            at: SystemTime::now(),
            oom_killed: false,
        };
        cell.record(exited);
        assert_eq!(cell.get().map(|e| e.status), Some(3));
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = Arc::clone(&cell);
        std::thread::spawn(move || tx.send(waiter.wait().status).unwrap());
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        cell.release();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(3));
    }
}
