//! What the agent does as PID 1 before it serves: the guest has nothing but
//! the initramfs, so the agent mounts the pseudo filesystems itself.

use std::io;
use std::os::fd::RawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::{close, dup2, Pid};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("refusing to act as init: running as pid {0}, not 1 (use --no-init to serve without init duties)")]
    NotPid1(Pid),
    #[error("mounting {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: Errno,
    },
    #[error("creating mount point {path}")]
    MountPoint {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("attaching /dev/console to stdio")]
    Console(#[source] Errno),
}

/// Fails unless this process is PID 1: mounting over /dev or /proc and
/// rebooting are only right for the guest's init, never on a host.
pub fn ensure_pid1() -> Result<(), Error> {
    let pid = nix::unistd::getpid();
    if pid == Pid::from_raw(1) {
        Ok(())
    } else {
        Err(Error::NotPid1(pid))
    }
}

/// A filesystem the agent mounts at boot.
struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// /dev first: the console fix-up needs it. Then /proc, which the command
/// line (and so the log level) is read from.
const EARLY_MOUNTS: &[Mount] = &[
    Mount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

/// The rest; the mount points under /dev only exist once devtmpfs is there.
const LATE_MOUNTS: &[Mount] = &[
    Mount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    // A private devpts instance, so guest ptys never mix with anything a
    // container mounts itself; ptmxmode lets unprivileged users open ptmx.
    Mount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620",
    },
    Mount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    Mount {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    Mount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

/// Mounts /dev and /proc and makes sure fds 0-2 are the console. Runs
/// before logging is set up, so callers report its errors on stderr.
pub fn early_setup() -> Result<(), Error> {
    mount_all(EARLY_MOUNTS)?;
    attach_console()
}

/// Controllers containers' limits need; the kernel enables none below the
/// root until asked.
const CGROUP_CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io", "cpuset"];

/// Enables [`CGROUP_CONTROLLERS`] for the root's children. One the kernel
/// lacks is logged and skipped: containers still run, without that limit.
pub fn enable_cgroup_controllers() {
    let control = "/sys/fs/cgroup/cgroup.subtree_control";
    for controller in CGROUP_CONTROLLERS {
        match std::fs::write(control, format!("+{controller}")) {
            Ok(()) => tracing::debug!(controller, "cgroup controller enabled"),
            Err(e) => tracing::warn!(controller, error = %e, "cannot enable cgroup controller"),
        }
    }
}

/// Mounts sysfs, devpts, /dev/shm, /run and the cgroup2 hierarchy.
pub fn late_setup() -> Result<(), Error> {
    mount_all(LATE_MOUNTS)
}

fn mount_all(mounts: &[Mount]) -> Result<(), Error> {
    for m in mounts {
        std::fs::create_dir_all(m.target).map_err(|source| Error::MountPoint {
            path: m.target,
            source,
        })?;
        let data = (!m.data.is_empty()).then_some(m.data);
        match mount(
            Some(m.fstype),
            Path::new(m.target),
            Some(m.fstype),
            m.flags,
            data,
        ) {
            Ok(()) => tracing::debug!(fstype = m.fstype, target = m.target, "mounted"),
            // The kernel refuses to mount a single-instance filesystem
            // (devtmpfs) where it is already mounted: something before us
            // (devtmpfs.mount, a host running us in a namespace) did the
            // job.
            Err(Errno::EBUSY) => {
                tracing::debug!(fstype = m.fstype, target = m.target, "already mounted")
            }
            Err(source) => {
                return Err(Error::Mount {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// The kernel opens /dev/console as init's stdin, stdout and stderr when
/// the initramfs has that node; if it could not, the descriptors are closed
/// and every log line and panic message would be lost. Fill any closed one
/// from devtmpfs' console, leaving open ones alone.
fn attach_console() -> Result<(), Error> {
    let closed: Vec<RawFd> = (0..=2).filter(|&fd| !is_open(fd)).collect();
    if closed.is_empty() {
        return Ok(());
    }
    // No O_CLOEXEC: these become the stdio later children inherit.
    let console = open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(Error::Console)?;
    for fd in closed {
        // open() takes the lowest free descriptor, so the console may
        // already sit in one of the closed slots.
        if fd != console {
            dup2(console, fd).map_err(Error::Console)?;
        }
    }
    if console > 2 {
        close(console).map_err(Error::Console)?;
    }
    Ok(())
}

fn is_open(fd: RawFd) -> bool {
    fcntl(fd, FcntlArg::F_GETFD) != Err(Errno::EBADF)
}

/// Flushes filesystems and resets the guest. The VMM boots the kernel with
/// `reboot=k`, so this reaches it as a keyboard-controller reset, which it
/// treats as a clean exit of the sandbox.
pub fn reboot() -> io::Result<()> {
    nix::unistd::sync();
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Err(e) => Err(e.into()),
        Ok(never) => match never {},
    }
}
