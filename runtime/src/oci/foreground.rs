//! Waiting in the foreground for a container process (`run`, `exec`):
//! signals sent to kata-rs go to the process, and kata-rs exits with its
//! status (128+N when a signal ended it), as runc does.

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals that stay with kata-rs, as with runc: SIGCHLD drives the wait,
/// SIGWINCH is about kata-rs's own terminal, and SIGURG is noise.
const KEPT: [Signal; 3] = [Signal::SIGCHLD, Signal::SIGWINCH, Signal::SIGURG];

/// Blocks every signal in this thread so that they queue for [`wait`];
/// call it once the container's process exists (it must not inherit the
/// mask), before anything else can happen.
pub fn block_signals() -> nix::Result<SigSet> {
    let all = SigSet::all();
    all.thread_block()?;
    Ok(all)
}

/// The exit code a shell would report for a wait status.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// Reaps children until `pid` exits, forwarding every other signal to it;
/// `resize` runs on SIGWINCH (kata-rs's own terminal changed size).
pub fn wait(pid: i32, signals: &SigSet, resize: impl Fn()) -> nix::Result<i32> {
    let pid = Pid::from_raw(pid);
    loop {
        // A process that ended before the signals were blocked sent its
        // SIGCHLD too early to be waited for: reap first, then wait.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) if status.pid() == Some(pid) => {
                    if let Some(code) = exit_code(status) {
                        return Ok(code);
                    }
                }
                Ok(_) => {}
                Err(nix::errno::Errno::ECHILD) => return Err(nix::errno::Errno::ECHILD),
                Err(e) => return Err(e),
            }
        }
        let signal = signals.wait()?;
        if signal == Signal::SIGWINCH {
            resize();
        }
        if KEPT.contains(&signal) {
            continue;
        }
        tracing::debug!(pid = pid.as_raw(), ?signal, "forwarding a signal");
        let _ = kill(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let pid = Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 42)), Some(42));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
