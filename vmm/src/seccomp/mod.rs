//! Seccomp filters for the VMM's threads: one filter per kind of thread
//! ([`ThreadKind`]), each allowing only the system calls that thread makes
//! once the guest runs ([`rules`]), with argument checks where a call is
//! dangerous in general (ioctl requests, socket families, executable
//! mappings). Every thread installs its own before it handles anything
//! the guest wrote; a call outside the filter kills the whole VMM
//! ([`SeccompMode::Enforce`]) or is logged by the kernel and allowed
//! ([`SeccompMode::Log`], for finding what a filter lacks).

mod rules;

use std::fmt;
use std::str::FromStr;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use rules::rule_count;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter of the {kind} thread: {source}")]
    Build {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter of the {kind} thread: {source}")]
    Install {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
}

/// What a call outside a thread's filter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// The kernel kills the VMM with SIGSYS.
    #[default]
    Enforce,
    /// The kernel logs the call (audit type 1326, SECCOMP_RET_LOG) and lets
    /// it run.
    Log,
    /// No filters.
    Off,
}

impl FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown seccomp mode {other:?} (the choices are enforce, log and off)"
            )),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enforce => "enforce",
            Self::Log => "log",
            Self::Off => "off",
        })
    }
}

/// The kinds of VMM thread, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The main thread once the VM runs: waits for the end and cleans up.
    Main,
    /// Takes the stop signals.
    Signals,
    /// Runs a vCPU: KVM_RUN and every trapped port and MMIO access,
    /// device activation and reset included.
    Vcpu,
    /// virtio-blk's queue on the disk image.
    Block,
    /// virtio-net's queues on the tap.
    Net,
    /// virtio-vsock's queues and its host sockets.
    Vsock,
    /// virtio-fs's interrupt relay (virtiofsd runs the rings).
    FsRelay,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 7] = [
        Self::Main,
        Self::Signals,
        Self::Vcpu,
        Self::Block,
        Self::Net,
        Self::Vsock,
        Self::FsRelay,
    ];
}

impl ThreadKind {
    /// The thread's name (its `comm`), and the kind's name on the command
    /// line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Signals => "signals",
            Self::Vcpu => "vcpu",
            Self::Block => "virtio-blk",
            Self::Net => "virtio-net",
            Self::Vsock => "virtio-vsock",
            Self::FsRelay => "virtio-fs",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ThreadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown VMM thread kind {s:?}"))
    }
}

/// The filter of `kind` as BPF for `mode`; None when `mode` is Off.
pub fn program(kind: ThreadKind, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Enforce => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Off => return Ok(None),
    };
    let build = |source| SeccompError::Build { kind, source };
    let rules = rules::rules(kind).map_err(build)?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    filter.try_into().map(Some).map_err(build)
}

/// The environment variable that makes one kind of thread break its own
/// filter right after installing it, for the tests that check what a
/// violation does to the VMM and to the runtime above it.
pub const TEST_VIOLATION_ENV: &str = "KATA_RS_VMM_SECCOMP_TEST_VIOLATION";

/// Installs the filter of `kind` on the calling thread (nothing when
/// `mode` is Off).
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    if let Some(program) = program(kind, mode)? {
        seccompiler::apply_filter(&program)
            .map_err(|source| SeccompError::Install { kind, source })?;
    }
    if std::env::var(TEST_VIOLATION_ENV).is_ok_and(|v| v == kind.name()) {
        tracing::warn!(
            thread = kind.name(),
            "making a system call outside the filter, as asked"
        );
        // SAFETY: getppid has no arguments and no effect; no filter
        // allows it.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of Firecracker's x86_64 filter (rules, as issue 16 counts
    /// them) for its thread nearest to `kind`: its VMM thread runs the
    /// devices and the event loop, its vCPU threads the guest.
    fn firecracker(kind: ThreadKind) -> Option<usize> {
        match kind {
            ThreadKind::Vcpu => Some(27),
            ThreadKind::Main | ThreadKind::Block | ThreadKind::Net | ThreadKind::Vsock => Some(50),
            ThreadKind::Signals | ThreadKind::FsRelay => None,
        }
    }

    #[test]
    fn every_thread_kind_has_a_filter_no_larger_than_firecrackers() {
        for kind in ThreadKind::ALL {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                let program = program(kind, mode).unwrap().unwrap();
                assert!(!program.is_empty());
            }
            assert!(program(kind, SeccompMode::Off).unwrap().is_none());
            let size = rule_count(kind);
            println!(
                "{kind}: {size} system calls (Firecracker: {})",
                firecracker(kind).map_or("no such thread".into(), |n| n.to_string())
            );
            if let Some(limit) = firecracker(kind) {
                assert!(size <= limit, "{kind}: {size} rules");
            }
        }
    }

    #[test]
    fn modes_and_kinds_parse_as_the_command_line_writes_them() {
        for mode in [SeccompMode::Enforce, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(mode.to_string().parse::<SeccompMode>(), Ok(mode));
        }
        for kind in ThreadKind::ALL {
            assert_eq!(kind.name().parse::<ThreadKind>(), Ok(kind));
        }
        assert!("strict"
            .parse::<SeccompMode>()
            .unwrap_err()
            .contains("enforce"));
    }

    /// Runs `program` on a forked child that then runs `then` and exits;
    /// the child's wait status. `then` must neither allocate nor lock.
    fn child_runs(program: &BpfProgram, then: fn()) -> nix::sys::wait::WaitStatus {
        // SAFETY: the child only makes system calls (no allocation, no
        // locks) before _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                if seccompiler::apply_filter(program).is_err() {
                    libc::_exit(2);
                }
                then();
                libc::_exit(0)
            },
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap()
            }
        }
    }

    #[test]
    fn a_call_outside_the_filter_kills_the_process_or_is_logged() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        let enforce = program(ThreadKind::Vcpu, SeccompMode::Enforce)
            .unwrap()
            .unwrap();
        let log = program(ThreadKind::Vcpu, SeccompMode::Log)
            .unwrap()
            .unwrap();
        // SAFETY (the three): system calls without arguments or effect.
        let outside = || unsafe {
            libc::syscall(libc::SYS_getppid);
        };
        let inside = || unsafe {
            libc::syscall(libc::SYS_sched_yield);
        };
        assert!(matches!(
            child_runs(&enforce, outside),
            WaitStatus::Signaled(_, Signal::SIGSYS, _)
        ));
        assert!(matches!(
            child_runs(&enforce, inside),
            WaitStatus::Exited(_, 0)
        ));
        assert!(matches!(
            child_runs(&log, outside),
            WaitStatus::Exited(_, 0)
        ));
    }

    /// A panic in a release build aborts: under any thread's filter that
    /// must end as SIGABRT, not as a seccomp kill, so that it is not
    /// reported as one.
    #[test]
    fn an_abort_under_a_filter_is_still_sigabrt() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        for kind in ThreadKind::ALL {
            let enforce = program(kind, SeccompMode::Enforce).unwrap().unwrap();
            // SAFETY: abort takes nothing and never returns.
            let status = child_runs(&enforce, || unsafe { libc::abort() });
            assert!(
                matches!(status, WaitStatus::Signaled(_, Signal::SIGABRT, _)),
                "{kind}: {status:?}"
            );
        }
    }
}
