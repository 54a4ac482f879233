//! Plain AF_VSOCK streams, for peers that reach a guest (or the host) through
//! a kernel vsock transport instead of the VMM's hybrid Unix socket: a guest
//! connecting to the host, or a host using vhost-vsock.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    connect as sys_connect, socket, AddressFamily, SockFlag, SockType, VsockAddr,
};

/// The host's CID as seen from a guest.
pub const HOST_CID: u32 = 2;

/// Connects a stream socket to `port` on `cid`.
pub fn connect(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    sys_connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
    Ok(fd)
}
