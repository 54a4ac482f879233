//! The Linux tap behind a virtio-net device: attached by name (created if
//! missing) or taken over as an fd inherited from the parent, always with
//! IFF_TAP | IFF_NO_PI and non-blocking, so that one read or write is one
//! frame.

use std::ffi::c_int;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetError;

pub(super) const TUN_PATH: &str = "/dev/net/tun";

/// Where the tap behind a virtio-net device comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// The tap of this name in the VMM's network namespace, attached (and
    /// created if missing) by the VMM.
    Tap(String),
    /// A tap fd inherited from the parent, already attached; the VMM owns
    /// it from then on.
    Fd(RawFd),
}

impl fmt::Display for NetBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetBackend::Tap(name) => write!(f, "tap {name}"),
            NetBackend::Fd(fd) => write!(f, "tap fd {fd}"),
        }
    }
}

/// Checks an interface name as Linux does (dev_valid_name), so that a bad
/// one is refused before any ioctl.
pub fn validate_tap_name(name: &str) -> Result<(), NetError> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(NetError::BadTapName(name.to_owned()))
    }
}

/// A tap device attached with IFF_TAP | IFF_NO_PI, non-blocking.
pub struct Tap {
    pub(super) file: File,
    pub(super) name: String,
}

impl Tap {
    /// Opens the tap `backend` names, or adopts the inherited fd it names.
    pub fn open(backend: &NetBackend) -> Result<Tap, NetError> {
        match backend {
            NetBackend::Tap(name) => Self::open_named(name),
            NetBackend::Fd(fd) => Self::adopt(*fd),
        }
    }

    /// The interface name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attaches to the tap `name` in this network namespace, creating it
    /// (non-persistent) if it does not exist.
    fn open_named(name: &str) -> Result<Tap, NetError> {
        validate_tap_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| NetError::OpenTun {
                name: name.to_owned(),
                source,
            })?;
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        // Shorter than IFNAMSIZ (validated), so the name stays NUL-terminated.
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and updates one ifreq, which `req` is, on
        // an fd this function owns.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(NetError::Attach {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_owned(),
        })
    }

    /// Takes over `fd`, inherited from the parent and already attached to a
    /// tap. Until it is known to be one, the fd is left alone: an error
    /// must not close whatever fd N really is.
    fn adopt(fd: RawFd) -> Result<Tap, NetError> {
        // SAFETY: F_GETFD only reads the descriptor flags of any fd number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(NetError::FdNotOpen {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one ifreq, which `req` is; on anything
        // but an attached tun/tap it fails without writing.
        if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } < 0 {
            return Err(NetError::NotTun {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let name_len = req
            .ifr_name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(req.ifr_name.len());
        let name_bytes: Vec<u8> = req.ifr_name[..name_len].iter().map(|&c| c as u8).collect();
        let name = String::from_utf8_lossy(&name_bytes).into_owned();
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let flags = c_int::from(unsafe { req.ifr_ifru.ifru_flags });
        if flags & c_int::from(libc::TUN_TYPE_MASK) != libc::IFF_TAP {
            return Err(NetError::NotTap { fd, name });
        }
        // TUNGETIFF also reports IFF_NOFILTER, which shares IFF_NO_PI's bit,
        // so a set bit proves nothing; a clear one proves IFF_NO_PI missing.
        if flags & libc::IFF_NO_PI == 0 || flags & libc::IFF_VNET_HDR != 0 {
            return Err(NetError::TapFlags { fd, name });
        }
        set_nonblocking_cloexec(fd).map_err(|source| NetError::FdFlags { fd, source })?;
        // SAFETY: fd is open and the parent handed it to this process, which
        // owns it from here on (the builder refuses the same fd twice).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Tap {
            file: File::from(owned),
            name,
        })
    }
}

fn set_nonblocking_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd this process owns, with integer arguments only.
    unsafe {
        let status = libc::fcntl(fd, libc::F_GETFL);
        if status < 0
            || libc::fcntl(fd, libc::F_SETFL, status | libc::O_NONBLOCK) < 0
            || libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::devices::virtio::net::harness::wait_for;

    #[test]
    fn tap_names() {
        for good in ["tap0", "a", "tap_kata-rs.1", &"x".repeat(15)] {
            validate_tap_name(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a:1", "a b", "a\0b", &"x".repeat(16)] {
            assert!(validate_tap_name(bad).is_err(), "{bad:?}");
        }
    }

    /// A tap name no other test or process uses.
    fn unique_tap_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        format!("krst{}{n}", std::process::id() % 10000)
    }

    fn tun_flags(fd: RawFd) -> c_int {
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one ifreq, which `req` is.
        assert!(unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } >= 0);
        // SAFETY: TUNGETIFF filled in the flags.
        c_int::from(unsafe { req.ifr_ifru.ifru_flags })
    }

    #[test]
    fn opens_a_real_tap_by_name_and_by_fd() {
        let name = unique_tap_name();
        let tap = match Tap::open(&NetBackend::Tap(name.clone())) {
            Ok(tap) => tap,
            Err(NetError::OpenTun { source, .. } | NetError::Attach { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EPERM | libc::EACCES | libc::ENOENT | libc::ENODEV)
                ) =>
            {
                println!("SKIP: cannot create a tap here: {source}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(tap.name(), name);
        let fd = tap.file.as_raw_fd();
        let flags = tun_flags(fd);
        assert_eq!(flags & c_int::from(libc::TUN_TYPE_MASK), libc::IFF_TAP);
        assert_ne!(flags & libc::IFF_NO_PI, 0);
        assert_eq!(flags & libc::IFF_VNET_HDR, 0);
        // SAFETY: F_GETFL and F_GETFD only read flags.
        let (status, fd_flags) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        assert_ne!(status & libc::O_NONBLOCK, 0);
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        // The interface is down: nothing to read, and no blocking.
        let mut buf = [0u8; 64];
        assert_eq!(
            (&tap.file).read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );

        // The same tap handed over as an fd, as the runtime does.
        let dup = tap.file.try_clone().unwrap();
        let dup_fd = dup.as_raw_fd();
        // Ownership moves to the adopted Tap.
        std::mem::forget(dup);
        let adopted = Tap::open(&NetBackend::Fd(dup_fd)).unwrap();
        assert_eq!(adopted.name(), name);
        // The tap goes away once both are closed, so the adopted one owned
        // its fd.
        drop(adopted);
        drop(tap);
        let sys = std::path::PathBuf::from(format!("/sys/class/net/{name}"));
        wait_for("the tap to go away", || !sys.exists());

        // An interface that exists but is no tap.
        let e = Tap::open(&NetBackend::Tap("lo".into())).err().unwrap();
        assert!(matches!(e, NetError::Attach { .. }), "{e}");
        assert!(e.to_string().contains("tap lo"), "{e}");
    }

    /// A /dev/net/tun fd attached to a new interface with `flags`.
    fn attach_raw(name: &str, flags: c_int) -> io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).open(TUN_PATH)?;
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and updates one ifreq, which `req` is.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    }

    #[test]
    fn refuses_inherited_tuns_and_taps_with_other_flags() {
        // A tap without IFF_NO_PI is not among them: TUNGETIFF cannot tell
        // (see Tap::adopt).
        let cases = [
            (libc::IFF_TUN | libc::IFF_NO_PI, "not a tap"),
            (
                libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
                "IFF_VNET_HDR",
            ),
        ];
        for (flags, why) in cases {
            let name = unique_tap_name();
            let file = match attach_raw(&name, flags) {
                Ok(file) => file,
                Err(e) => {
                    println!("SKIP: cannot create a tun/tap here: {e}");
                    return;
                }
            };
            let fd = file.as_raw_fd();
            let e = match Tap::open(&NetBackend::Fd(fd)) {
                Ok(tap) => {
                    // `file` still owns the fd: do not close it twice.
                    std::mem::forget(tap);
                    panic!("{name} accepted, expected {why:?}");
                }
                Err(e) => e,
            };
            assert!(
                matches!(e, NetError::NotTap { .. } | NetError::TapFlags { .. }),
                "{e}"
            );
            let msg = e.to_string();
            assert!(msg.contains(why) && msg.contains(&name), "{msg}");
            // Refused, so still ours: it names the same interface.
            assert_eq!(
                tun_flags(fd) & c_int::from(libc::TUN_TYPE_MASK),
                flags & 0xf
            );
        }
    }

    #[test]
    fn refuses_fds_that_are_not_taps_and_leaves_them_open() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let e = Tap::open(&NetBackend::Fd(fd)).err().unwrap();
        assert!(
            matches!(e, NetError::NotTun { fd: f, .. } if f == fd),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("fd {fd}")), "{e}");
        // Still open and still ours.
        assert!(file.metadata().unwrap().ino() > 0);

        // A tun device opened but never attached.
        let tun = OpenOptions::new().read(true).write(true).open(TUN_PATH);
        if let Ok(tun) = tun {
            let e = Tap::open(&NetBackend::Fd(tun.as_raw_fd())).err().unwrap();
            assert!(matches!(e, NetError::NotTun { .. }), "{e}");
        }

        // An fd number nothing uses.
        let e = Tap::open(&NetBackend::Fd(999_999)).err().unwrap();
        assert!(matches!(e, NetError::FdNotOpen { .. }), "{e}");
    }
}
