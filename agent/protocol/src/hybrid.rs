//! Host side of Firecracker-style hybrid vsock.
//!
//! The VMM exposes the guest's vsock device as one Unix socket. A host
//! process connects to it, asks for a guest port with `CONNECT <port>\n`, and
//! the VMM answers `OK <hostport>\n` once the guest accepted the connection;
//! from then on the stream carries the guest connection's bytes. If nothing
//! listens on the guest port the VMM closes the socket instead of answering.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};

/// Longest reply line accepted, newline included: `OK ` plus a u32 needs 14
/// bytes. The bound keeps a misbehaving peer from making us buffer forever.
pub const MAX_REPLY_LEN: usize = 32;

/// Connects to guest vsock `port` through the hybrid vsock socket `uds`.
///
/// The whole handshake (connect, request, reply) must finish within
/// `timeout`, including a connect to a VMM whose accept backlog is full. On success the returned stream is positioned right after the
/// reply line and has no read/write timeouts set.
///
/// Errors carry the kind of failure: `TimedOut` when no full reply arrived in
/// time, `UnexpectedEof` when the VMM closed the socket (usually: nothing
/// listens on `port` in the guest), `InvalidData` for any reply other than
/// `OK <u32>\n`, quoting what was received.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect_unix(uds, deadline).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("connecting to hybrid vsock socket {}: {e}", uds.display()),
        )
    })?;

    stream.set_write_timeout(Some(remaining(deadline, port, b"")?))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| {
            let kind = timeout_kind(e.kind());
            io::Error::new(kind, format!("sending CONNECT {port}: {e}"))
        })?;

    let line = read_reply_line(&mut stream, port, deadline)?;
    parse_reply(&line, port)?;

    // The stream now belongs to the caller's protocol (ttrpc), which must
    // not inherit the handshake's deadline.
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// Connects to a Unix socket by `deadline`. A plain blocking connect waits
/// without limit while the listener's accept backlog is full (a VMM that
/// stopped accepting), so the socket is non-blocking and EAGAIN is retried
/// until the deadline.
fn connect_unix(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    /// Retry period while the backlog is full: short against handshake
    /// timeouts of seconds, long enough not to spin.
    const RETRY: Duration = Duration::from_millis(5);
    let addr = UnixAddr::new(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    loop {
        match nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let left = deadline
                    .checked_duration_since(Instant::now())
                    .filter(|left| !left.is_zero())
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::TimedOut, "accept backlog full until timeout")
                    })?;
                std::thread::sleep(left.min(RETRY));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Reads one `\n`-terminated line, a byte at a time: the guest may start
/// sending right after the reply, and those bytes must stay in the socket for
/// the caller.
fn read_reply_line(stream: &mut UnixStream, port: u32, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(MAX_REPLY_LEN);
    loop {
        stream.set_read_timeout(Some(remaining(deadline, port, &line)?))?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "hybrid vsock closed before replying to CONNECT {port} \
                         (received {}); is the guest listening on that port?",
                        quote(&line)
                    ),
                ))
            }
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    return Ok(line);
                }
                if line.len() >= MAX_REPLY_LEN {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "hybrid vsock reply to CONNECT {port} exceeds {MAX_REPLY_LEN} bytes \
                             without a newline: {}",
                            quote(&line)
                        ),
                    ));
                }
            }
            // The socket timer works in jiffies and can fire just before
            // the deadline; the next `remaining()` decides whether time is up.
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || timeout_kind(e.kind()) == io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e),
        }
    }
}

/// Accepts exactly `OK <u32>\n`.
fn parse_reply(line: &[u8], port: u32) -> io::Result<u32> {
    line.strip_prefix(b"OK ")
        .and_then(|rest| rest.strip_suffix(b"\n"))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unexpected hybrid vsock reply to CONNECT {port}: {}",
                    quote(line)
                ),
            )
        })
}

fn remaining(deadline: Instant, port: u32, received: &[u8]) -> io::Result<Duration> {
    // A zero timeout means "block forever" to the socket layer, so an
    // elapsed deadline has to be reported here rather than passed on.
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err(timed_out(port, received)),
    }
}

/// SO_RCVTIMEO/SO_SNDTIMEO expiry surfaces as EAGAIN (`WouldBlock`).
fn timeout_kind(kind: io::ErrorKind) -> io::ErrorKind {
    match kind {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::ErrorKind::TimedOut,
        other => other,
    }
}

fn timed_out(port: u32, received: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "no hybrid vsock reply to CONNECT {port} in time (received {})",
            quote(received)
        ),
    )
}

fn quote(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "nothing".to_owned()
    } else {
        format!("{:?}", String::from_utf8_lossy(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A fake VMM socket: accepts one connection, checks the request line,
    /// then lets `respond` play the VMM's part.
    fn fake_vmm(
        respond: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        thread::JoinHandle<String>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).expect("bind fake vmm");
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut request = String::new();
            io::BufReader::new(stream.try_clone().expect("clone"))
                .read_line(&mut request)
                .expect("read request");
            respond(stream);
            request
        });
        (dir, path, server)
    }

    #[test]
    fn ok_reply_yields_stream_positioned_after_the_line() {
        let (_dir, path, server) = fake_vmm(|mut s| {
            // Guest data in the same write as the reply must not be eaten.
            s.write_all(b"OK 1073741824\nhello").unwrap();
        });
        let mut stream = connect(&path, 1024, Duration::from_secs(5)).expect("handshake");
        assert_eq!(server.join().unwrap(), "CONNECT 1024\n");
        let mut rest = String::new();
        stream.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "hello");
        assert_eq!(stream.read_timeout().unwrap(), None);
    }

    #[test]
    fn garbage_reply_is_invalid_data_and_quoted() {
        let (_dir, path, server) = fake_vmm(|mut s| s.write_all(b"NOPE 12\n").unwrap());
        let err = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("NOPE 12"), "{err}");
    }

    #[test]
    fn non_numeric_port_is_rejected() {
        for reply in [&b"OK \n"[..], b"OK -1\n", b"OK 99999999999\n", b"OK 12 \n"] {
            let (_dir, path, server) = fake_vmm(move |mut s| s.write_all(reply).unwrap());
            let err = connect(&path, 52, Duration::from_secs(5)).unwrap_err();
            server.join().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{reply:?}: {err}");
        }
    }

    #[test]
    fn eof_before_reply_is_unexpected_eof() {
        let (_dir, path, server) = fake_vmm(drop);
        let err = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("CONNECT 1024"), "{err}");
    }

    #[test]
    fn eof_mid_line_quotes_partial_reply() {
        let (_dir, path, server) = fake_vmm(|mut s| s.write_all(b"OK 12").unwrap());
        let err = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("OK 12"), "{err}");
    }

    #[test]
    fn silent_peer_times_out() {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (_dir, path, server) = fake_vmm(move |_s| {
            // Hold the connection open without answering until the client
            // has given up.
            let _ = done_rx.recv();
        });
        let start = Instant::now();
        let err = connect(&path, 1024, Duration::from_millis(200)).unwrap_err();
        let waited = start.elapsed();
        done_tx.send(()).unwrap();
        server.join().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn oversized_line_is_rejected_without_reading_on() {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (_dir, path, server) = fake_vmm(move |mut s| {
            s.write_all(&[b'O'; 4096]).unwrap();
            let _ = done_rx.recv();
        });
        let err = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        done_tx.send(()).unwrap();
        server.join().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds 32 bytes"), "{err}");
    }

    #[test]
    fn full_accept_backlog_times_out() {
        use nix::sys::socket::{bind, listen, Backlog};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.sock");
        let listener = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&listener),
            &UnixAddr::new(&path).unwrap(),
        )
        .unwrap();
        // A backlog of 0 holds one pending connection; never accepting
        // leaves every later connect waiting for room.
        listen(&listener, Backlog::new(0).unwrap()).unwrap();
        let _pending = UnixStream::connect(&path).unwrap();

        let start = Instant::now();
        let err = connect(&path, 1024, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("busy.sock"), "{err}");
        assert!(err.to_string().contains("backlog"), "{err}");
    }

    #[test]
    fn missing_socket_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let err = connect(&path, 1024, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }
}
