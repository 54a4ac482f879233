//! Host processes of a sandbox (VMM, virtiofsd, a monitor, a host agent)
//! named by pid and start time, so a recycled pid is never mistaken for
//! ours, and started in sessions of their own.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::error::{FileError, OnPath};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcRef {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat: clock ticks after boot.
    pub start_time: u64,
}

/// The start time of `pid` and whether it is a zombie; why not, when its
/// stat file cannot be read or parsed.
fn stat(pid: i32) -> Result<(u64, bool), String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let unparsable = || format!("{path} cannot be parsed: {text:?}");
    let rest = text.rsplit_once(')').ok_or_else(unparsable)?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first() == Some(&"Z");
    // rest starts at field 3 (state), so field 22 is index 19.
    let start = fields
        .get(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(unparsable)?;
    Ok((start, zombie))
}

impl ProcRef {
    pub fn of(pid: i32) -> Option<Self> {
        stat(pid)
            .ok()
            .map(|(start_time, _)| ProcRef { pid, start_time })
    }

    /// Still running (a zombie has ended).
    pub fn alive(&self) -> bool {
        self.gone().is_none()
    }

    /// Why this process no longer runs, or None while it does.
    pub fn gone(&self) -> Option<String> {
        match stat(self.pid) {
            Ok((start, false)) if start == self.start_time => None,
            Ok((_, true)) => Some(format!("pid {} has exited", self.pid)),
            Ok((start, false)) => Some(format!(
                "pid {} now belongs to a process started at tick {start}, not {}",
                self.pid, self.start_time
            )),
            Err(why) => Some(why),
        }
    }

    pub fn signal(&self, signal: Signal) {
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
    }

    /// Waits up to `grace` for the process to end, then kills it. A kill
    /// is part of the plan (a guest that does not power off within its
    /// grace loses nothing), so it is logged at info: a warning would land
    /// on the stderr of `run`, which is the container's.
    pub fn stop(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.alive() {
            tracing::info!(
                pid = self.pid,
                ?grace,
                "did not exit within its grace; killing it"
            );
            self.signal(Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Spawns `cmd` (running `program`) as a session of its own: the signals a
/// terminal sends the caller's group are not its to get.
pub fn spawn_in_own_session(cmd: &mut Command, program: &Path) -> Result<Child, FileError> {
    // SAFETY: setsid is async-signal-safe and touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn().on_path("start", program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_known_by_pid_and_start_time() {
        let me = ProcRef::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let impostor = ProcRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.alive());
    }
}
