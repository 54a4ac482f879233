//! Starts the container's program with clean signal state.
//!
//! The container's processes are cloned from the caller, so they inherit
//! its signal mask and every signal it ignores, and both survive exec. Rust
//! programs ignore SIGPIPE, and the agent blocks SIGCHLD (and, with
//! `--no-init`, SIGINT and SIGTERM) for its sigwait threads; a container
//! must see none of that, as it would not under runc.

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

#[derive(Clone)]
pub(crate) struct CleanSignals;

impl Executor for CleanSignals {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // Runs in the container's init after the start signal, right before
        // exec: single-threaded, so process-wide changes are safe here.
        for signal in 1..libc::SIGRTMAX() {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            // SAFETY: SIG_DFL installs no handler; invalid numbers only fail.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
        nix::sys::signal::SigSet::empty()
            .thread_set_mask()
            .map_err(|e| ExecutorError::Other(format!("clearing the signal mask: {e}")))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
