//! The system calls each kind of VMM thread may make once the guest runs,
//! each with the reason it is needed. What threads do before that (parsing
//! the command line, opening files, KVM setup, making threads) needs no
//! rule: the filters go on after it.

use seccompiler::{
    BackendError, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompRule,
};

use std::collections::btree_map::{BTreeMap, Entry};

type Rules = Vec<(i64, Vec<SeccompRule>)>;

/// ioctl request numbers (asm-generic/ioctl.h).
const fn ioc(dir: u64, kind: u64, nr: u64, size: usize) -> u64 {
    dir << 30 | (size as u64) << 16 | kind << 8 | nr
}
const KVMIO: u64 = 0xae;
const IOC_READ: u64 = 2;
const KVM_RUN: u64 = ioc(0, KVMIO, 0x80, 0);
const KVM_GET_REGS: u64 = ioc(IOC_READ, KVMIO, 0x81, size_of::<kvm_bindings::kvm_regs>());
const KVM_GET_SREGS: u64 = ioc(IOC_READ, KVMIO, 0x83, size_of::<kvm_bindings::kvm_sregs>());

/// A call allowed whatever its arguments.
fn any(nr: i64) -> (i64, Vec<SeccompRule>) {
    (nr, Vec::new())
}

/// A call allowed when argument `arg` is one of `values`.
fn one_of(
    nr: i64,
    arg: u8,
    len: Len,
    values: &[u64],
) -> Result<(i64, Vec<SeccompRule>), BackendError> {
    let rules = values
        .iter()
        .map(|&v| SeccompRule::new(vec![Cond::new(arg, len.clone(), Op::Eq, v)?]))
        .collect::<Result<_, _>>()?;
    Ok((nr, rules))
}

/// A call allowed when argument `arg` has none of the bits of `mask`.
fn without(nr: i64, arg: u8, mask: u64) -> Result<(i64, Vec<SeccompRule>), BackendError> {
    let rule = SeccompRule::new(vec![Cond::new(arg, Len::Qword, Op::MaskedEq(mask), 0)?])?;
    Ok((nr, vec![rule]))
}

/// What every thread needs: the allocator, locks and channels, logging,
/// and ending the thread or the process.
fn common() -> Result<Rules, BackendError> {
    let exec = libc::PROT_EXEC as u64;
    Ok(vec![
        // Mutexes, condition variables and channels between threads.
        any(libc::SYS_futex),
        // The spin phase of std's locks.
        any(libc::SYS_sched_yield),
        // The allocator; never an executable mapping, so a guest that
        // got code execution in a thread cannot map new code.
        without(libc::SYS_mmap, 2, exec)?,
        without(libc::SYS_mprotect, 2, exec)?,
        any(libc::SYS_munmap),
        any(libc::SYS_mremap),
        any(libc::SYS_brk),
        any(libc::SYS_madvise),
        // Log lines to stderr, and eventfd signals.
        any(libc::SYS_write),
        // Dropping descriptors: dup'ed eventfds, closed connections; a
        // debug build first checks that the descriptor is open.
        any(libc::SYS_close),
        one_of(libc::SYS_fcntl, 1, Len::Dword, &[libc::F_GETFD as u64])?,
        // std's per-thread hash keys.
        any(libc::SYS_getrandom),
        // Clocks for timeouts and log timestamps where the vDSO cannot.
        any(libc::SYS_clock_gettime),
        // A thread's end: its signal stack goes, signals are masked.
        any(libc::SYS_sigaltstack),
        any(libc::SYS_rt_sigprocmask),
        any(libc::SYS_exit),
        // The process's end, whichever thread decides it.
        any(libc::SYS_exit_group),
        // A panic aborts (release builds): abort() raises SIGABRT at its
        // own thread, and resets the handler if one returns.
        any(libc::SYS_getpid),
        any(libc::SYS_gettid),
        one_of(libc::SYS_tgkill, 2, Len::Dword, &[libc::SIGABRT as u64])?,
        one_of(
            libc::SYS_rt_sigaction,
            0,
            Len::Dword,
            &[libc::SIGABRT as u64],
        )?,
    ])
}

/// The rules of `kind`, common ones included, by system call.
pub(super) fn rules(
    kind: super::ThreadKind,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut merged: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, rules) in common()?.into_iter().chain(own(kind)?) {
        match merged.entry(nr) {
            Entry::Vacant(entry) => {
                entry.insert(rules);
            }
            // No rules means any arguments: that must stay so, whichever
            // list says it.
            Entry::Occupied(mut entry) if entry.get().is_empty() || rules.is_empty() => {
                entry.get_mut().clear()
            }
            Entry::Occupied(mut entry) => entry.get_mut().extend(rules),
        }
    }
    Ok(merged)
}

/// The rules only threads of `kind` need.
fn own(kind: super::ThreadKind) -> Result<Rules, BackendError> {
    use super::ThreadKind::*;
    Ok(match kind {
        Main => vec![
            // The vsock socket files go when the VM ends, if they are
            // still the VMM's own.
            any(libc::SYS_statx),
            any(libc::SYS_unlink),
        ],
        Signals => vec![
            // sigwait on the stop signals.
            any(libc::SYS_rt_sigtimedwait),
        ],
        Vcpu => vec![
            // Running the guest; the registers for a triple fault's report.
            one_of(
                libc::SYS_ioctl,
                1,
                Len::Dword,
                &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS],
            )?,
            // Activation (on the driver's DRIVER_OK, a trapped MMIO write):
            // the queue eventfds and the device's file are duplicated for
            // the worker, which gets an epoll set and a kill eventfd.
            one_of(
                libc::SYS_fcntl,
                1,
                Len::Dword,
                &[libc::F_DUPFD_CLOEXEC as u64],
            )?,
            any(libc::SYS_eventfd2),
            any(libc::SYS_epoll_create1),
            any(libc::SYS_epoll_ctl),
            // virtio-fs activation and reset talk vhost-user to virtiofsd
            // (the memory table and ring fds go as SCM_RIGHTS).
            any(libc::SYS_sendmsg),
            any(libc::SYS_recvmsg),
        ],
        Block => vec![
            // The queue's kick eventfd and epoll set.
            any(libc::SYS_epoll_wait),
            any(libc::SYS_read),
            // The disk image: position, read, write, flush.
            any(libc::SYS_lseek),
            any(libc::SYS_fsync),
        ],
        Net => vec![
            // The queues' kick eventfds, the tap's frames, the epoll set,
            // which the tap leaves while the guest has no receive buffer.
            any(libc::SYS_epoll_wait),
            any(libc::SYS_epoll_ctl),
            any(libc::SYS_read),
        ],
        Vsock => vec![
            // The queues' kick eventfds, the host sockets, the epoll set
            // that connections join and leave.
            any(libc::SYS_epoll_wait),
            any(libc::SYS_epoll_ctl),
            any(libc::SYS_read),
            // Host connections to the guest arrive on the listener...
            any(libc::SYS_accept4),
            one_of(libc::SYS_ioctl, 1, Len::Dword, &[libc::FIONBIO])?,
            // ...and guest connections go to `<uds>_<port>`: Unix sockets
            // only.
            one_of(libc::SYS_socket, 0, Len::Dword, &[libc::AF_UNIX as u64])?,
            any(libc::SYS_connect),
            any(libc::SYS_sendto),
            any(libc::SYS_recvfrom),
            any(libc::SYS_shutdown),
        ],
        FsRelay => vec![
            // virtiofsd's call eventfds and the socket's hang-up.
            any(libc::SYS_epoll_wait),
            any(libc::SYS_read),
        ],
    })
}

/// How many system calls the filter of `kind` allows.
pub fn rule_count(kind: super::ThreadKind) -> usize {
    rules(kind).map_or(0, |r| r.len())
}
