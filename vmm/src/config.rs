//! What a VM is made of, as the command line or a caller describes it.

use std::path::PathBuf;
use std::str::FromStr;

use crate::devices::virtio::fs::validate_tag;

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
    fn console_targets() {
        assert_eq!("stdout".parse::<Console>().unwrap(), Console::Stdout);
        assert_eq!("off".parse::<Console>().unwrap(), Console::Off);
        assert_eq!(
            "/tmp/c.log".parse::<Console>().unwrap(),
            Console::File("/tmp/c.log".into())
        );
    }
}
