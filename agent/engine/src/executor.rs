//! Starts the container's program: with clean signal state, and for an
//! exec, under the container's seccomp filter.
//!
//! The container's processes are cloned from the caller, so they inherit
//! its signal mask and every signal it ignores, and both survive exec. Rust
//! programs ignore SIGPIPE, and the agent blocks SIGCHLD (and, with
//! `--no-init`, SIGINT and SIGTERM) for its sigwait threads; a container
//! must see none of that, as it would not under runc.

use caps::{CapSet, Capability};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

use crate::exec_process::ExecFilter;

#[derive(Clone, Default)]
pub(crate) struct Program {
    /// Set for an exec: libcontainer loads the filter for the init only.
    exec_filter: Option<ExecFilter>,
}

impl Program {
    pub(crate) fn exec(exec_filter: Option<ExecFilter>) -> Self {
        Program { exec_filter }
    }
}

impl Executor for Program {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // Runs in the container's process after the start signal, right
        // before exec: single-threaded, so process-wide changes are safe.
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
        if let Some(filter) = &self.exec_filter {
            load(filter).map_err(|e| {
                ExecutorError::Other(format!("loading the container's seccomp filter: {e}"))
            })?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Loads the filter; without no_new_privileges, with CAP_SYS_ADMIN raised
/// from the permitted set for the load only (see `exec_process`).
fn load(exec: &ExecFilter) -> Result<(), String> {
    let nnp = nix::sys::prctl::get_no_new_privs().map_err(|e| e.to_string())?;
    let raise = !nnp
        && !caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN)
            .map_err(|e| e.to_string())?;
    if raise {
        caps::raise(None, CapSet::Effective, Capability::CAP_SYS_ADMIN)
            .map_err(|e| format!("raising CAP_SYS_ADMIN to load it: {e}"))?;
    }
    libcontainer::seccomp::initialize_seccomp(&exec.filter).map_err(|e| crate::error::chain(&e))?;
    if raise {
        caps::drop(None, CapSet::Effective, Capability::CAP_SYS_ADMIN)
            .map_err(|e| format!("dropping CAP_SYS_ADMIN after the load: {e}"))?;
    }
    if exec.lent_sys_admin {
        caps::drop(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN)
            .map_err(|e| format!("dropping the lent CAP_SYS_ADMIN: {e}"))?;
    }
    Ok(())
}
