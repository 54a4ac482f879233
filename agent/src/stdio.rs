//! The stdio stream connections (vsock port 1025, see protos/agent.proto):
//! accepting them, reading their header lines, and keeping them until the
//! process they name is created and claims them.
//!
//! The host opens a process's streams before the RPC that creates the
//! process, but on other connections, so the RPC may reach the agent before
//! a stream's header does. A claim therefore first accepts every connection
//! already queued on the listener and waits for the headers still being
//! read; both the acceptor and a claim accept under the registry's lock, so
//! no connection the kernel has established can be missed.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kata_rs_protocol::stdio::{HeaderError, StreamHeader, StreamKind, MAX_HEADER_LEN};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    accept4, bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    VsockAddr,
};
use nix::sys::time::TimeVal;

/// Streams waiting for their process, at most; more are closed at once.
pub const MAX_PENDING: usize = 64;
/// How long a stream may wait for its process before it is closed.
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(60);
/// How long a connection may take to send its header line.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claim waits for headers still on their way.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// Where the stdio listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdioAddr {
    /// AF_VSOCK, any CID.
    Vsock(u32),
    /// A Unix socket, for host tests.
    Unix(PathBuf),
}

impl std::str::FromStr for StdioAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            return Ok(StdioAddr::Unix(PathBuf::from(path)));
        }
        let port = s
            .strip_prefix("vsock://-1:")
            .ok_or_else(|| format!("{s:?}: expected vsock://-1:PORT or unix:///path"))?;
        port.parse()
            .map(StdioAddr::Vsock)
            .map_err(|e| format!("{s:?}: bad port: {e}"))
    }
}

/// The streams of one process; a missing one is /dev/null to it.
#[derive(Debug, Default)]
pub struct Streams {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub tty: Option<OwnedFd>,
}

struct Pending {
    conn: OwnedFd,
    since: Instant,
}

#[derive(Default)]
struct State {
    pending: HashMap<StreamHeader, Pending>,
    /// Connections accepted whose header is still being read.
    reading: usize,
}

pub struct StreamRegistry {
    listener: OwnedFd,
    state: Mutex<State>,
    headers_done: Condvar,
}

impl StreamRegistry {
    /// Binds the listener; [`StreamRegistry::start`] accepts on it.
    pub fn bind(addr: &StdioAddr) -> io::Result<Arc<Self>> {
        let listener: OwnedFd = match addr {
            StdioAddr::Unix(path) => {
                let listener = UnixListener::bind(path)?;
                listener.set_nonblocking(true)?;
                listener.into()
            }
            StdioAddr::Vsock(port) => {
                let fd = socket(
                    AddressFamily::Vsock,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                    None,
                )?;
                bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, *port))?;
                listen(
                    &fd,
                    Backlog::new(MAX_PENDING as i32).map_err(io::Error::from)?,
                )?;
                fd
            }
        };
        Ok(Arc::new(StreamRegistry {
            listener,
            state: Mutex::new(State::default()),
            headers_done: Condvar::new(),
        }))
    }

    /// Starts the thread that accepts connections and expires unclaimed
    /// streams.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let registry = Arc::clone(self);
        std::thread::Builder::new()
            .name("stdio-accept".into())
            .spawn(move || loop {
                let mut fds = [PollFd::new(registry.listener.as_fd(), PollFlags::POLLIN)];
                // Wakes at least every few seconds to expire old streams.
                match poll(&mut fds, PollTimeout::from(5000u16)) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "polling the stdio listener");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                let mut state = registry.lock();
                registry.accept_queued(&mut state);
                expire(&mut state);
            })?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts every connection queued on the (non-blocking) listener and
    /// starts reading its header.
    fn accept_queued(self: &Arc<Self>, state: &mut State) {
        loop {
            let conn = match accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new descriptor that we own.
                Ok(fd) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a stdio connection");
                    return;
                }
            };
            if state.reading + state.pending.len() >= MAX_PENDING {
                tracing::warn!(
                    limit = MAX_PENDING,
                    "too many unclaimed stdio streams; closing a new one"
                );
                continue;
            }
            state.reading += 1;
            let registry = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("stdio-header".into())
                .spawn(move || {
                    let header = read_header(&conn);
                    registry.register(header, conn);
                });
            if let Err(e) = spawned {
                state.reading -= 1;
                tracing::error!(error = %e, "starting a stdio header reader");
            }
        }
    }

    fn register(&self, header: io::Result<StreamHeader>, conn: OwnedFd) {
        let mut state = self.lock();
        state.reading -= 1;
        match header {
            Ok(header) if state.pending.contains_key(&header) => {
                tracing::warn!(
                    container_id = header.container_id,
                    exec_id = header.exec_id,
                    stream = header.kind.as_str(),
                    "a stream with this header is already waiting; closing the new one"
                );
            }
            Ok(header) => {
                tracing::debug!(
                    container_id = header.container_id,
                    exec_id = header.exec_id,
                    stream = header.kind.as_str(),
                    "stdio stream connected"
                );
                state.pending.insert(
                    header,
                    Pending {
                        conn,
                        since: Instant::now(),
                    },
                );
            }
            Err(e) => tracing::warn!(error = %e, "refusing a stdio connection"),
        }
        self.headers_done.notify_all();
    }

    /// Takes the streams connected for process (`container_id`, `exec_id`).
    pub fn claim(self: &Arc<Self>, container_id: &str, exec_id: &str) -> Streams {
        let deadline = Instant::now() + CLAIM_WAIT;
        let mut state = self.lock();
        self.accept_queued(&mut state);
        while state.reading > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    container_id,
                    exec_id,
                    "stdio headers still unread; creating the process without them"
                );
                break;
            }
            state = self
                .headers_done
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        expire(&mut state);
        let mut take = |kind| {
            state
                .pending
                .remove(&StreamHeader::new(container_id, exec_id, kind))
                .map(|p| p.conn)
        };
        Streams {
            stdin: take(StreamKind::Stdin),
            stdout: take(StreamKind::Stdout),
            stderr: take(StreamKind::Stderr),
            tty: take(StreamKind::Tty),
        }
    }

    /// Closes the unclaimed streams of a removed container.
    pub fn discard(&self, container_id: &str) {
        self.lock()
            .pending
            .retain(|h, _| h.container_id != container_id);
    }
}

fn expire(state: &mut State) {
    state.pending.retain(|header, p| {
        let keep = p.since.elapsed() < UNCLAIMED_TTL;
        if !keep {
            tracing::warn!(
                container_id = header.container_id,
                exec_id = header.exec_id,
                stream = header.kind.as_str(),
                "closing a stdio stream no process claimed"
            );
        }
        keep
    });
}

/// Reads the header line byte by byte, so not one byte of the stream after
/// it is consumed, and checks its ids.
fn read_header(conn: &OwnedFd) -> io::Result<StreamHeader> {
    let timeout = TimeVal::new(HEADER_TIMEOUT.as_secs() as i64, 0);
    setsockopt(conn, sockopt::ReceiveTimeout, &timeout)?;
    let mut file = std::fs::File::from(conn.try_clone()?);
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    loop {
        match file.read(&mut byte) {
            Ok(0) => return Err(invalid("connection closed before the header ended")),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() + 1 >= MAX_HEADER_LEN => {
                return Err(invalid(&HeaderError::TooLong.to_string()))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(invalid("no header line within the timeout"))
            }
            Err(e) => return Err(e),
        }
    }
    setsockopt(conn, sockopt::ReceiveTimeout, &TimeVal::new(0, 0))?;
    let line = std::str::from_utf8(&line).map_err(|_| invalid("header is not UTF-8"))?;
    let header = StreamHeader::parse(line).map_err(|e| invalid(&e.to_string()))?;
    kata_rs_engine::engine::validate_id(&header.container_id)
        .map_err(|e| invalid(&e.to_string()))?;
    if !header.exec_id.is_empty() {
        kata_rs_engine::engine::validate_id(&header.exec_id)
            .map_err(|e| invalid(&format!("exec id: {e}")))?;
    }
    Ok(header)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}
