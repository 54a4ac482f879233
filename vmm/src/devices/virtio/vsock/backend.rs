//! The host side of hybrid vsock: the Unix listener at `<uds>`, the
//! handshakes of host processes connecting to it, the outgoing connections
//! to `<uds>_<port>`, and the table of live connections.
//!
//! The backend outlives activations: it is created (and the socket bound)
//! with the device, moved to the worker thread while the device runs, and
//! emptied of connections on reset.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, Outgoing};
use super::handshake::LineParser;
use super::packet::*;
use super::worker::TOKEN_LISTENER;
use super::VsockError;

/// The most connections, in any state, at a time.
pub const MAX_CONNECTIONS: usize = 256;
/// The most host processes connected but not yet through the handshake.
const MAX_HANDSHAKES: usize = 64;
/// The most RSTs queued for the guest outside any connection; the tx queue
/// is not processed while this many wait.
const MAX_PENDING_RST: usize = 64;
/// Host-initiated connections take local ports from here up, clear of the
/// well-known ports a guest may dial.
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Epoll tokens of Unix streams are their fd plus this, clear of the
/// worker's own tokens.
pub const FD_TOKEN_BASE: u64 = 1 << 32;

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For the guest to answer a host-initiated REQUEST.
    pub connect: Duration,
    /// For a host process to send its `CONNECT` line.
    pub handshake: Duration,
    /// For the guest to answer our SHUTDOWN with RST, or for a slow host to
    /// take the data of a connection the guest closed.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            handshake: Duration::from_secs(5),
            shutdown: Duration::from_secs(2),
        }
    }
}

/// The socket file a listener was bound to, identified by (device, inode)
/// so that only our own file is removed, not one a successor bound at the
/// same path.
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: PathBuf,
    file_id: (u64, u64),
}

impl SocketFile {
    /// Removes the file if it is still the one we bound.
    pub fn remove(&self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file_id);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove vsock socket");
            }
        }
    }
}

/// The bound listening socket; removes its file when dropped.
#[derive(Debug)]
struct Listener {
    listener: UnixListener,
    file: SocketFile,
}

impl Listener {
    fn bind(path: &Path) -> Result<Self, VsockError> {
        let probe = |source| VsockError::Probe {
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(VsockError::NotSocket(path.to_owned()))
            }
            Ok(_) => match connect_nonblocking(path) {
                // EAGAIN: a full backlog, so someone is listening.
                Ok(_) => return Err(VsockError::InUse(path.to_owned())),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Err(VsockError::InUse(path.to_owned()))
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    // Left behind by a VMM that was killed.
                    std::fs::remove_file(path).map_err(|source| VsockError::RemoveStale {
                        path: path.to_owned(),
                        source,
                    })?;
                    tracing::info!(path = %path.display(), "removed stale vsock socket");
                }
                Err(e) => return Err(probe(e)),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(probe(e)),
        }
        let bind_err = |source| VsockError::Bind {
            path: path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let listener = Self {
            file: SocketFile {
                file_id: std::fs::metadata(path)
                    .map(|m| (m.dev(), m.ino()))
                    .map_err(bind_err)?,
                path: path.to_owned(),
            },
            listener,
        };
        listener.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(listener)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.file.remove();
    }
}

/// Connects a non-blocking Unix stream socket to `path`. Unlike
/// `UnixStream::connect` it cannot block on a listener whose backlog is
/// full: that fails with `WouldBlock`.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // Keep a NUL terminator.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long or contains NUL",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket owned by nobody else.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
    let ret = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// A host process connected to the listener, before its `CONNECT` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: LineParser,
    deadline: Instant,
}

/// A connection is known by (host port, guest port).
type ConnKey = (u32, u32);

/// How long accepts pause after accept() failed for want of a resource.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn token(fd: RawFd) -> u64 {
    FD_TOKEN_BASE + fd as u64
}

#[derive(Debug)]
pub struct Backend {
    listener: Listener,
    guest_cid: u64,
    timeouts: Timeouts,
    conns: HashMap<ConnKey, Connection>,
    /// The fds of the connections' streams, to route epoll events.
    conn_fds: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Connections with a packet for the guest, served round robin.
    rxq: VecDeque<ConnKey>,
    /// RSTs for guest packets that belong to no connection.
    rst_queue: VecDeque<Header>,
    next_port: u32,
    /// Set while the listener is out of epoll after accept() failed for
    /// want of a resource (fds, memory): a level-triggered listener would
    /// otherwise wake the worker in a loop until the shortage ends.
    accept_paused_until: Option<Instant>,
}

impl Backend {
    pub fn bind(path: &Path, guest_cid: u64, timeouts: Timeouts) -> Result<Self, VsockError> {
        Ok(Self {
            listener: Listener::bind(path)?,
            guest_cid,
            timeouts,
            conns: HashMap::new(),
            conn_fds: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: VecDeque::new(),
            rst_queue: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            accept_paused_until: None,
        })
    }

    pub fn socket_file(&self) -> SocketFile {
        self.listener.file.clone()
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.listener.as_raw_fd()
    }

    /// Drops every connection and handshake; the listener stays.
    pub fn reset(&mut self) {
        self.conns.clear();
        self.conn_fds.clear();
        self.handshakes.clear();
        self.rxq.clear();
        self.rst_queue.clear();
    }

    /// Whether the guest's tx queue must wait for room in the RST queue.
    pub fn tx_blocked(&self) -> bool {
        self.rst_queue.len() >= MAX_PENDING_RST
    }

    pub fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rxq.is_empty()
    }

    /// Accepts the host processes waiting on the listener.
    pub fn accept(&mut self, ep: &Epoll) {
        loop {
            let stream = match self.listener.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a vsock host connection; pausing accepts");
                    let _ = ep.ctl(
                        ControlOperation::Delete,
                        self.listener_fd(),
                        EpollEvent::default(),
                    );
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES {
                tracing::warn!("too many pending vsock handshakes, closing a new one");
                continue;
            }
            let fd = stream.as_raw_fd();
            let registered = stream.set_nonblocking(true).and_then(|()| {
                ep.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token(fd)),
                )
            });
            if let Err(e) = registered {
                tracing::warn!(error = %e, "cannot watch a vsock host connection");
                continue;
            }
            let deadline = Instant::now() + self.timeouts.handshake;
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: LineParser::default(),
                    deadline,
                },
            );
        }
    }

    /// Routes readiness of a Unix stream (a token above [`FD_TOKEN_BASE`]).
    pub fn on_fd_event(&mut self, ep: &Epoll, fd: RawFd, events: EventSet) {
        if self.handshakes.contains_key(&fd) {
            self.continue_handshake(ep, fd);
        } else if let Some(&key) = self.conn_fds.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.on_stream_event(events, Instant::now());
            }
            self.update(ep, key);
        }
    }

    fn continue_handshake(&mut self, ep: &Epoll, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        // One byte at a time: what follows the newline is stream data.
        let mut byte = [0u8];
        let outcome = loop {
            match (&hs.stream).read(&mut byte) {
                Ok(0) => break Err("closed before the handshake".to_owned()),
                Ok(_) => match hs.line.push(byte[0]) {
                    Ok(None) => {}
                    Ok(Some(port)) => break Ok(Some(port)),
                    Err(e) => break Err(e.to_string()),
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e.to_string()),
            }
        };
        if let Ok(None) = outcome {
            return;
        }
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        // Removed from epoll before the stream changes hands or closes.
        let _ = ep.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        match outcome {
            Ok(Some(port)) => self.connect_to_guest(ep, hs.stream, port),
            Err(reason) => tracing::debug!(%reason, "rejected a vsock host connection"),
            Ok(None) => {}
        }
    }

    fn connect_to_guest(&mut self, ep: &Epoll, stream: UnixStream, peer_port: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(peer_port, "too many vsock connections, refusing one");
            return;
        }
        let Some(local_port) = self.alloc_port(peer_port) else {
            tracing::warn!(peer_port, "no free vsock host port");
            return;
        };
        let now = Instant::now();
        let conn = Connection::host_initiated(
            stream,
            local_port,
            peer_port,
            now + self.timeouts.connect,
            self.timeouts.shutdown,
        );
        tracing::debug!(local_port, peer_port, "vsock host connection");
        self.insert(ep, (local_port, peer_port), conn);
    }

    fn alloc_port(&mut self, peer_port: u32) -> Option<u32> {
        // At most MAX_CONNECTIONS ports are taken, so this finds one soon.
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_port;
            self.next_port = if port >= u32::MAX - 1 {
                FIRST_HOST_PORT
            } else {
                port + 1
            };
            if !self.conns.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }

    fn insert(&mut self, ep: &Epoll, key: ConnKey, conn: Connection) {
        self.conn_fds.insert(conn.fd(), key);
        self.conns.insert(key, conn);
        self.update(ep, key);
    }

    fn remove(&mut self, ep: &Epoll, key: ConnKey) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if conn.registered.is_some() {
            let _ = ep.ctl(ControlOperation::Delete, conn.fd(), EpollEvent::default());
        }
        self.conn_fds.remove(&conn.fd());
        self.rxq.retain(|k| *k != key);
        tracing::debug!(
            local_port = key.0,
            peer_port = key.1,
            "vsock connection closed"
        );
    }

    /// Brings a connection's epoll registration and rx queueing in line with
    /// its state, and drops it once closed.
    fn update(&mut self, ep: &Epoll, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.is_closed() {
            self.remove(ep, key);
            return;
        }
        let want = conn.interest();
        if want != conn.registered {
            let fd = conn.fd();
            let result = match (conn.registered, want) {
                (None, Some(ev)) => {
                    ep.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, token(fd)))
                }
                (Some(_), Some(ev)) => {
                    ep.ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, token(fd)))
                }
                (Some(_), None) => ep.ctl(ControlOperation::Delete, fd, EpollEvent::default()),
                (None, None) => Ok(()),
            };
            match result {
                Ok(()) => conn.registered = want,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch a vsock connection, resetting it");
                    conn.reset();
                }
            }
        }
        if !conn.queued && conn.has_rx() {
            conn.queued = true;
            self.rxq.push_back(key);
        }
    }

    /// Handles a packet the guest sent.
    pub fn recv_guest_packet(&mut self, ep: &Epoll, pkt: TxPacket) {
        let hdr = pkt.hdr;
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid || hdr.type_ != TYPE_STREAM {
            tracing::debug!(?hdr, "vsock packet with a bad address or type");
            self.reply_rst(&hdr);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.recv(&hdr, &pkt.data, Instant::now());
            self.update(ep, key);
            return;
        }
        match hdr.op {
            OP_REQUEST => self.connect_to_host(ep, &hdr),
            OP_RST => {}
            _ => self.reply_rst(&hdr),
        }
    }

    fn connect_to_host(&mut self, ep: &Epoll, req: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!(
                port = req.dst_port,
                "too many vsock connections, refusing one"
            );
            self.reply_rst(req);
            return;
        }
        let mut path = OsString::from(self.listener.file.path.as_os_str());
        path.push(format!("_{}", req.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                tracing::debug!(port = req.dst_port, "vsock guest connection");
                let conn = Connection::guest_initiated(stream, req, self.timeouts.shutdown);
                self.insert(ep, (conn.local_port(), req.src_port), conn);
            }
            Err(e) => {
                tracing::debug!(path = ?path, error = %e, "no host listener for a vsock guest connection");
                self.reply_rst(req);
            }
        }
    }

    /// Answers a packet outside any connection with RST (never an RST).
    fn reply_rst(&mut self, hdr: &Header) {
        if hdr.op == OP_RST {
            return;
        }
        self.rst_queue.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: hdr.type_,
            op: OP_RST,
            ..Header::default()
        });
    }

    /// The next packet for the guest, with at most `capacity` payload bytes.
    pub fn next_rx(&mut self, ep: &Epoll, capacity: usize) -> Option<Outgoing> {
        if let Some(hdr) = self.rst_queue.pop_front() {
            return Some((hdr, Vec::new()));
        }
        let now = Instant::now();
        // Each queued connection gets one chance; those with more to send go
        // back to the end.
        for _ in 0..self.rxq.len() {
            let key = self.rxq.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let pkt = conn.next_packet(capacity, now);
            self.update(ep, key);
            if let Some((mut hdr, data)) = pkt {
                hdr.src_cid = HOST_CID;
                hdr.dst_cid = self.guest_cid;
                return Some((hdr, data));
            }
        }
        None
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let handshakes = self.handshakes.values().map(|h| h.deadline);
        let conns = self.conns.values().filter_map(Connection::deadline);
        handshakes
            .chain(conns)
            .chain(self.accept_paused_until)
            .min()
    }

    /// Closes the handshakes and connections whose deadline has passed.
    pub fn on_timeouts(&mut self, ep: &Epoll) {
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            let event = EpollEvent::new(EventSet::IN, TOKEN_LISTENER);
            if let Err(e) = ep.ctl(ControlOperation::Add, self.listener_fd(), event) {
                tracing::error!(error = %e, "cannot resume accepting vsock host connections");
            }
        }
        let late: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            tracing::debug!("vsock host connection sent no handshake in time");
            let _ = ep.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.handshakes.remove(&fd);
        }
        let late: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in late {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.on_deadline(now);
            }
            self.update(ep, key);
        }
    }
}
