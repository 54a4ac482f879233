//! A process's stdio between the host and the agent: one connection per
//! stream to the agent's stdio listener (a VM's hybrid-vsock port, or the
//! Unix socket of an agent on the host), named by a header line
//! (protos/agent.proto), then raw bytes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use kata_rs_protocol::stdio::{StreamHeader, StreamKind};
use kata_rs_protocol::{hybrid, STDIO_VSOCK_PORT};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long output may still arrive after the process exited.
pub const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// A stream that could not be opened to the agent.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("connect the {stream} stream to the agent: {cause}")]
    Connect {
        stream: &'static str,
        cause: std::io::Error,
    },
    #[error("name the {stream} stream: {cause}")]
    Name {
        stream: &'static str,
        cause: std::io::Error,
    },
}

type Result<T, E = StdioError> = std::result::Result<T, E>;

/// Where an agent takes stdio streams.
#[derive(Debug, Clone)]
pub enum StdioAddr {
    /// A VM's hybrid-vsock socket: the agent's stdio port behind it.
    Hybrid(PathBuf),
    /// An agent on the host, listening on this Unix socket.
    Unix(PathBuf),
}

impl StdioAddr {
    fn connect(&self) -> std::io::Result<UnixStream> {
        match self {
            StdioAddr::Hybrid(uds) => hybrid::connect(uds, STDIO_VSOCK_PORT, CONNECT_TIMEOUT),
            StdioAddr::Unix(path) => UnixStream::connect(path),
        }
    }
}

fn open(
    addr: &StdioAddr,
    container_id: &str,
    exec_id: &str,
    kind: StreamKind,
) -> Result<UnixStream> {
    let stream = kind.as_str();
    let mut conn = addr
        .connect()
        .map_err(|cause| StdioError::Connect { stream, cause })?;
    let header = StreamHeader::new(container_id, exec_id, kind);
    conn.write_all(header.to_string().as_bytes())
        .map_err(|cause| StdioError::Name { stream, cause })?;
    Ok(conn)
}

/// The connected streams of one process.
pub enum Streams {
    Pipes {
        stdin: UnixStream,
        stdout: UnixStream,
        stderr: UnixStream,
    },
    Tty(UnixStream),
}

impl Streams {
    pub fn connect(addr: &StdioAddr, container_id: &str, exec_id: &str, tty: bool) -> Result<Self> {
        if tty {
            return Ok(Streams::Tty(open(
                addr,
                container_id,
                exec_id,
                StreamKind::Tty,
            )?));
        }
        Ok(Streams::Pipes {
            stdin: open(addr, container_id, exec_id, StreamKind::Stdin)?,
            stdout: open(addr, container_id, exec_id, StreamKind::Stdout)?,
            stderr: open(addr, container_id, exec_id, StreamKind::Stderr)?,
        })
    }
}

/// Copies `from` to `to` as each read returns, until EOF.
///
/// Not `std::io::copy`: from a socket into a pipe it uses splice(2), and
/// Linux holds the pipe's lock while splice waits for socket data, so the
/// pipe's reader (conmon, a shim, a shell) could not read the output
/// already in the pipe until more arrived or the stream ended.
fn forward(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                to.write_all(&buf[..n])?;
                to.flush()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Copies `from` to `to` until EOF on another thread; `done` runs after.
pub fn pump<R, W>(
    name: &'static str,
    mut from: R,
    mut to: W,
    done: impl FnOnce(&mut W) + Send + 'static,
) -> JoinHandle<()>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = forward(&mut from, &mut to) {
                // EIO is how a pty reports that its other side closed.
                if e.raw_os_error() != Some(libc::EIO) {
                    tracing::debug!(stream = name, error = %e, "stream ended");
                }
            }
            let _ = to.flush();
            done(&mut to);
        })
        .expect("spawn a stdio thread")
}

/// Relays this process's stdin, stdout and stderr to the pipe streams.
/// Returns the output threads, which end at the agent's EOF.
pub fn relay_std(stdin: UnixStream, stdout: UnixStream, stderr: UnixStream) -> Vec<JoinHandle<()>> {
    use std::os::fd::AsFd;
    let own = |fd: std::os::fd::BorrowedFd<'_>| {
        std::fs::File::from(fd.try_clone_to_owned().expect("dup a stdio fd"))
    };
    let input = own(std::io::stdin().as_fd());
    let out = own(std::io::stdout().as_fd());
    let err = own(std::io::stderr().as_fd());
    // stdin's thread is not joined: it may block on a caller that never
    // closes its end, and the process exits without it.
    pump("stdin", input, stdin, |s| {
        let _ = s.shutdown(std::net::Shutdown::Write);
    });
    vec![
        pump("stdout", stdout, out, |_| {}),
        pump("stderr", stderr, err, |_| {}),
    ]
}

/// Waits for output threads, at most `bound` in all: a process that left
/// a descendant holding its output open must not keep the caller forever.
pub fn join_bounded(threads: Vec<JoinHandle<()>>, bound: Duration) {
    let deadline = std::time::Instant::now() + bound;
    for t in threads {
        while !t.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_in_the_pipe_is_readable_while_the_stream_stays_open() {
        let (mut guest, from) = UnixStream::pair().unwrap();
        let (mut reader, to) = std::io::pipe().unwrap();
        guest.write_all(b"ready\n").unwrap();
        let pump = pump("test", from, to, |_| {});
        // The pump takes "ready" and waits on the open stream for more
        // before the reader looks: that wait must not keep "ready" away.
        std::thread::sleep(Duration::from_millis(100));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = [0u8; 6];
            tx.send(reader.read_exact(&mut line).map(|()| line))
                .unwrap();
        });
        let line = rx.recv_timeout(Duration::from_secs(5));
        drop(guest);
        pump.join().unwrap();
        assert_eq!(line.expect("output arrived").unwrap(), *b"ready\n");
    }
}
