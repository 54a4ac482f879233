//! The receiving end of the console socket protocol (runc's, conmon's and
//! go-runc's): one pty master passed over SCM_RIGHTS.

use std::io::{Error, ErrorKind, IoSliceMut, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Takes the pty master sent to `listener`. For callers whose engine call
/// has returned: libcontainer (and kata-rs's VM-mode monitor) send the
/// master before that call completes, so the connection and the message
/// are already queued. Nothing waits, and a missing master is an error
/// rather than a hang.
pub fn receive_queued_master(listener: &UnixListener) -> Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let (conn, _) = listener.accept().map_err(|e| {
        Error::new(
            e.kind(),
            format!("no terminal came over the console socket: {e}"),
        )
    })?;
    conn.set_nonblocking(true)?;
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut master = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: SCM_RIGHTS installed each descriptor for us;
                // the first is kept, any other is unexpected and closed.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                master.get_or_insert(fd);
            }
        }
    }
    master.ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidData,
            "the console socket message carried no pty master",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_queued_master_is_taken_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let err = receive_queued_master(&listener).unwrap_err();
        assert!(err.to_string().contains("no terminal came"), "{err}");

        let pty = nix::pty::openpty(None, None).unwrap();
        let sender = UnixStream::connect(&path).unwrap();
        let fds = [pty.master.as_raw_fd()];
        sendmsg::<()>(
            sender.as_raw_fd(),
            &[std::io::IoSlice::new(b"/dev/pts/x")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let got = receive_queued_master(&listener).unwrap();
        assert!(nix::unistd::isatty(got.as_raw_fd()).unwrap());

        // A message without a descriptor is refused by name.
        let sender = UnixStream::connect(&path).unwrap();
        std::io::Write::write_all(&mut &sender, b"no fd").unwrap();
        let err = receive_queued_master(&listener).unwrap_err();
        assert!(err.to_string().contains("carried no pty master"), "{err}");
    }
}
