//! What a VM is made of, as the command line or a caller describes it.

use crate::seccomp::SeccompMode;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

use crate::devices::virtio::fs::validate_tag;
use crate::devices::virtio::net::{validate_tap_name, MacAddr, NetBackend};

/// The command line every guest gets unless the caller replaces it: the
/// serial console, a reset through the keyboard controller as the way to
/// stop (`reboot=k`, which the VMM turns into a clean exit), an immediate
/// reset on panic, and no probing for hardware the VM does not have.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    Stdout,
    File(PathBuf),
    Off,
}

impl FromStr for Console {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" => Console::Stdout,
            "off" | "none" => Console::Off,
            path => Console::File(PathBuf::from(path)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

impl FromStr for DiskConfig {
    type Err = String;
    /// `PATH` or `PATH,ro` / `PATH,rw`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some((_, opt)) => {
                return Err(format!("unknown disk option {opt:?} (expected ro or rw)"))
            }
            None => (s, false),
        };
        if path.is_empty() {
            return Err("empty disk path".into());
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// A virtio-fs share: the guest mounts it by `tag`; virtiofsd serves it on
/// the vhost-user socket `socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    pub tag: String,
    pub socket: PathBuf,
}

impl FromStr for FsConfig {
    type Err = String;
    /// `TAG=SOCKET`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tag, socket) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not TAG=SOCKET"))?;
        validate_tag(tag).map_err(|e| e.to_string())?;
        if socket.is_empty() {
            return Err(format!("empty virtiofsd socket path for tag {tag:?}"));
        }
        Ok(Self {
            tag: tag.to_owned(),
            socket: PathBuf::from(socket),
        })
    }
}

/// A virtio-net device: its tap, the guest card's MAC address and, if
/// given, the MTU the device tells the guest (VIRTIO_NET_F_MTU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub backend: NetBackend,
    pub mac: MacAddr,
    pub mtu: Option<u16>,
}

impl FromStr for NetConfig {
    type Err = String;
    /// `tap=NAME,mac=MAC` or `fd=N,mac=MAC`, and optionally `mtu=N`, in
    /// any order.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut backend = None;
        let mut mac = None;
        let mut mtu = None;
        for item in s.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not KEY=VALUE (keys: tap, fd, mac, mtu)"))?;
            match key {
                "tap" | "fd" if backend.is_some() => {
                    return Err(format!("{s:?} names more than one tap (tap= or fd=)"))
                }
                "tap" => {
                    validate_tap_name(value).map_err(|e| e.to_string())?;
                    backend = Some(NetBackend::Tap(value.to_owned()));
                }
                "fd" => backend = Some(NetBackend::Fd(parse_tap_fd(value)?)),
                "mac" if mac.is_some() => return Err(format!("{s:?} gives mac= twice")),
                "mac" => mac = Some(value.parse::<MacAddr>().map_err(|e| e.to_string())?),
                "mtu" if mtu.is_some() => return Err(format!("{s:?} gives mtu= twice")),
                "mtu" => mtu = Some(parse_mtu(value)?),
                other => {
                    return Err(format!(
                        "unknown net option {other:?} (expected tap, fd, mac or mtu)"
                    ))
                }
            }
        }
        Ok(Self {
            backend: backend.ok_or_else(|| format!("{s:?} names no tap (tap=NAME or fd=N)"))?,
            mac: mac.ok_or_else(|| format!("{s:?} has no mac=MAC"))?,
            mtu,
        })
    }
}

/// An MTU the device may offer: 68 to 65535 (virtio 1.2, 5.1.4.1).
fn parse_mtu(value: &str) -> Result<u16, String> {
    value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse::<u16>().ok())
        .flatten()
        .filter(|mtu| *mtu >= 68)
        .ok_or_else(|| format!("invalid mtu {value:?}: expected 68 to 65535"))
}

/// A decimal fd number of 3 or more: 0-2 are the VMM's own standard
/// streams, which it must not take over.
fn parse_tap_fd(value: &str) -> Result<RawFd, String> {
    let fd = value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse::<RawFd>().ok())
        .flatten()
        .ok_or_else(|| format!("invalid tap fd {value:?}: expected a decimal number"))?;
    if fd < 3 {
        return Err(format!(
            "tap fd {fd} is a standard stream; pass the tap as fd 3 or above"
        ));
    }
    Ok(fd)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub console: Console,
    pub vsock: Option<VsockConfig>,
    pub disks: Vec<DiskConfig>,
    pub filesystems: Vec<FsConfig>,
    pub nets: Vec<NetConfig>,
    /// What a system call outside a thread's seccomp filter does.
    pub seccomp: SeccompMode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options() {
        assert_eq!(
            "/a/b.img,ro".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                path: "/a/b.img".into(),
                read_only: true
            }
        );
        assert!(!"/a/b.img".parse::<DiskConfig>().unwrap().read_only);
        assert!(!"/a,b.img,rw".parse::<DiskConfig>().unwrap().read_only);
        assert!("/a/b.img,rx"
            .parse::<DiskConfig>()
            .unwrap_err()
            .contains("rx"));
        assert!(",ro".parse::<DiskConfig>().is_err());
    }

    #[test]
    fn fs_options() {
        assert_eq!(
            "share=/run/vfsd.sock".parse::<FsConfig>().unwrap(),
            FsConfig {
                tag: "share".into(),
                socket: "/run/vfsd.sock".into()
            }
        );
        // The socket path may itself contain '='.
        assert_eq!(
            "t=/a=b".parse::<FsConfig>().unwrap().socket,
            PathBuf::from("/a=b")
        );
        let long = format!("{}=/s", "x".repeat(37));
        for bad in ["share", "=/s", "share=", long.as_str(), "a\0b=/s"] {
            assert!(bad.parse::<FsConfig>().is_err(), "{bad:?}");
        }
        assert!(format!("{}=/s", "x".repeat(36)).parse::<FsConfig>().is_ok());
    }

    #[test]
    fn net_options() {
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        assert_eq!(
            "tap=tap0,mac=02:00:00:00:00:01"
                .parse::<NetConfig>()
                .unwrap(),
            NetConfig {
                backend: NetBackend::Tap("tap0".into()),
                mac,
                mtu: None
            }
        );
        assert_eq!(
            "mac=02:00:00:00:00:01,fd=7,mtu=9000"
                .parse::<NetConfig>()
                .unwrap(),
            NetConfig {
                backend: NetBackend::Fd(7),
                mac,
                mtu: Some(9000)
            }
        );
        // Each bad input, and what the error must name.
        for (bad, named) in [
            ("", "\"\""),
            ("tap0", "tap0"),
            ("tap=tap0", "mac"),
            ("mac=02:00:00:00:00:01", "tap=NAME or fd=N"),
            ("tap=tap0,mac=02:00:00:00:00", "02:00:00:00:00"),
            ("tap=tap0,mac=02:00:00:00:00:0x", "02:00:00:00:00:0x"),
            ("tap=tap0,mac=03:00:00:00:00:01", "03:00:00:00:00:01"),
            ("tap=tap0,mac=", "\"\""),
            (
                "tap=tap0,mac=02:00:00:00:00:01,mac=02:00:00:00:00:02",
                "twice",
            ),
            ("tap=a,fd=3,mac=02:00:00:00:00:01", "more than one tap"),
            ("tap=a,tap=b,mac=02:00:00:00:00:01", "more than one tap"),
            ("tap=,mac=02:00:00:00:00:01", "\"\""),
            ("tap=a/b,mac=02:00:00:00:00:01", "a/b"),
            (
                "tap=abcdefghijklmnop,mac=02:00:00:00:00:01",
                "abcdefghijklmnop",
            ),
            ("fd=x,mac=02:00:00:00:00:01", "\"x\""),
            ("fd=-4,mac=02:00:00:00:00:01", "\"-4\""),
            ("fd=+4,mac=02:00:00:00:00:01", "\"+4\""),
            ("fd=99999999999,mac=02:00:00:00:00:01", "99999999999"),
            ("fd=2,mac=02:00:00:00:00:01", "fd 2"),
            ("fd=3,mac=02:00:00:00:00:01,queues=2", "queues"),
            ("fd=3,mac=02:00:00:00:00:01,", "\"\""),
            ("fd=3,mac=02:00:00:00:00:01,mtu=67", "\"67\""),
            ("fd=3,mac=02:00:00:00:00:01,mtu=65536", "\"65536\""),
            ("fd=3,mac=02:00:00:00:00:01,mtu=+1500", "\"+1500\""),
            ("fd=3,mac=02:00:00:00:00:01,mtu=1500,mtu=1500", "twice"),
        ] {
            let e = bad.parse::<NetConfig>().unwrap_err();
            assert!(e.contains(named), "{bad:?}: {e}");
        }
    }

    #[test]
    fn console_targets() {
        assert_eq!("stdout".parse::<Console>().unwrap(), Console::Stdout);
        assert_eq!("off".parse::<Console>().unwrap(), Console::Off);
        assert_eq!(
            "/tmp/c.log".parse::<Console>().unwrap(),
            Console::File("/tmp/c.log".into())
        );
    }
}
