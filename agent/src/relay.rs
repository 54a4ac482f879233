//! Copying bytes between a process's stdio (pipes or a pty master) and the
//! host's stream connections.
//!
//! Each relay also polls "stop" descriptors: the read ends of pipes whose
//! write ends the agent drops to say "the process exited" or "close stdin".
//! A hangup there needs no shared flags and wakes a relay blocked in poll.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{shutdown, Shutdown};

const BUF: usize = 32 * 1024;

/// Copies the process's output `src` to the connection `conn` until `src`
/// ends. Once `exited` hangs up, reads what is left in `src` without
/// blocking (other processes may still hold its write end) and stops.
/// Finally shuts the connection for writing: that is the host's EOF.
pub fn output(src: OwnedFd, conn: OwnedFd, exited: OwnedFd) {
    let mut src = File::from(src);
    let mut dst = Some(File::from(conn));
    let mut buf = vec![0u8; BUF];
    loop {
        let mut fds = [
            PollFd::new(src.as_fd(), PollFlags::POLLIN),
            PollFd::new(exited.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "polling process output");
                break;
            }
        }
        let src_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let exited_now = fds[1].revents().is_some_and(|r| !r.is_empty());
        if src_ready {
            match read(&mut src, &mut buf) {
                Some(0) | None => break,
                Some(n) => forward(&mut dst, &buf[..n]),
            }
        } else if exited_now {
            drain(&mut src, &mut dst, &mut buf);
            break;
        }
    }
    if let Some(dst) = dst {
        let _ = shutdown(std::os::fd::AsRawFd::as_raw_fd(&dst), Shutdown::Write);
    }
}

/// Reads everything `src` holds now, without waiting for more.
fn drain(src: &mut File, dst: &mut Option<File>, buf: &mut [u8]) {
    if fcntl(
        std::os::fd::AsRawFd::as_raw_fd(src),
        FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    )
    .is_err()
    {
        return;
    }
    while let Some(n) = read(src, buf) {
        if n == 0 {
            break;
        }
        forward(dst, &buf[..n]);
    }
}

/// One read; `None` at the end of the stream or on an error (EIO is how a
/// pty master reports that no slave is left, EAGAIN that a drain is done).
fn read(src: &mut File, buf: &mut [u8]) -> Option<usize> {
    loop {
        match src.read(buf) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Writes to the host; once that fails, output is read and dropped so the
/// process never blocks on a full pipe.
fn forward(dst: &mut Option<File>, data: &[u8]) {
    if let Some(conn) = dst {
        if let Err(e) = conn.write_all(data) {
            tracing::debug!(error = %e, "stdio connection gone; discarding output");
            *dst = None;
        }
    }
}

/// Copies the connection `conn` to the process's input `dst` until the
/// host closes its side or any of `stops` hangs up; then drops `dst`, which
/// for a pipe is EOF in the container.
pub fn input(conn: OwnedFd, dst: OwnedFd, stops: Vec<OwnedFd>) {
    let mut src = File::from(conn);
    let mut dst = File::from(dst);
    let mut buf = vec![0u8; BUF];
    loop {
        let mut fds = vec![PollFd::new(src.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            stops
                .iter()
                .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "polling process input");
                return;
            }
        }
        if fds[1..]
            .iter()
            .any(|f| f.revents().is_some_and(|r| !r.is_empty()))
        {
            return;
        }
        match read(&mut src, &mut buf) {
            Some(0) | None => return,
            Some(n) => {
                if dst.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
