//! One stream connection between a guest port and a host Unix stream: its
//! state machine, the data buffered towards the host and the credit
//! accounting of both directions (virtio 1.2, 5.10.6.3).
//!
//! The connection never touches the queues. The backend feeds it the guest's
//! packets ([`Connection::recv`]) and the Unix stream's readiness, and asks
//! it for the next packet owed to the guest ([`Connection::next_packet`]).

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::packet::*;

/// The receive buffer advertised to the guest (buf_alloc): the most guest
/// data held for a Unix peer that does not read.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Once this much data has been forwarded without the guest hearing about
/// it, a CREDIT_UPDATE is sent, so a guest waiting for credit never starves.
pub(super) const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

/// Writes to a stream whose peer may be gone: EPIPE, never SIGPIPE, whatever
/// the process's signal disposition.
fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes and the fd stays open for the
    // call; the result is checked.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent or pending, waiting for RESPONSE.
    Connecting,
    Established,
    /// We sent SHUTDOWN with both flags and wait for the guest's RST.
    AwaitingRst,
    /// Nothing more to do: the backend drops the connection.
    Closed,
}

/// A packet owed to the guest; the backend fills in the CIDs.
pub type Outgoing = (Header, Vec<u8>);

#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    local_port: u32,
    peer_port: u32,
    state: State,
    shutdown_timeout: Duration,
    deadline: Option<Instant>,

    // Control packets owed to the guest; they go before any data.
    send_request: bool,
    send_response: bool,
    send_shutdown: u32,
    send_credit_update: bool,
    send_rst: bool,

    // Host -> guest. We may have at most peer_buf_alloc bytes in flight.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    /// The Unix stream was reported readable and not yet read dry.
    want_read: bool,
    /// The Unix peer will send no more (EOF or error).
    host_eof: bool,
    /// The Unix peer hung up entirely: nothing can be written to it.
    host_hup: bool,

    // Guest -> host.
    to_host: VecDeque<u8>,
    /// Bytes at the front of `to_host` that are ours (`OK <port>\n`), not
    /// guest data, and so do not count as forwarded.
    preamble: usize,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// SHUTDOWN flags received from the guest.
    peer_shutdown: u32,
    /// Nothing more will be written to the Unix stream.
    host_write_closed: bool,

    /// Managed by the backend: the events the stream is registered for.
    pub(super) registered: Option<EventSet>,
    /// Managed by the backend: whether the connection is in its rx list.
    pub(super) queued: bool,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            shutdown_timeout: Duration::ZERO,
            deadline: None,
            send_request: false,
            send_response: false,
            send_shutdown: 0,
            send_credit_update: false,
            send_rst: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            want_read: false,
            host_eof: false,
            host_hup: false,
            to_host: VecDeque::new(),
            preamble: 0,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_shutdown: 0,
            host_write_closed: false,
            registered: None,
            queued: false,
        }
    }

    /// A connection the host asked for with `CONNECT <peer_port>`.
    pub fn host_initiated(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        deadline: Instant,
        shutdown_timeout: Duration,
    ) -> Self {
        let mut conn = Self::new(stream, local_port, peer_port, State::Connecting);
        conn.send_request = true;
        conn.deadline = Some(deadline);
        conn.shutdown_timeout = shutdown_timeout;
        conn
    }

    /// A connection the guest asked for with `req`, already connected to the
    /// host listener.
    pub fn guest_initiated(stream: UnixStream, req: &Header, shutdown_timeout: Duration) -> Self {
        let mut conn = Self::new(stream, req.dst_port, req.src_port, State::Established);
        conn.send_response = true;
        conn.peer_buf_alloc = req.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        conn.shutdown_timeout = shutdown_timeout;
        conn
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// How much more data the guest can take now.
    fn peer_free(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_read_host(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_free() > 0
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_rx(&self) -> bool {
        match self.state {
            State::Closed => false,
            _ if self.send_rst => true,
            State::Connecting => self.send_request,
            State::Established | State::AwaitingRst => {
                self.send_response
                    || self.send_shutdown != 0
                    || self.send_credit_update
                    || (self.want_read && self.can_read_host())
            }
        }
    }

    /// The events to watch on the Unix stream; `None` once none matter.
    pub fn interest(&self) -> Option<EventSet> {
        if self.state == State::Closed || self.host_hup || (self.host_eof && self.host_write_closed)
        {
            return None;
        }
        // An empty set still reports hang-ups and errors.
        let mut events = EventSet::empty();
        if !self.want_read && self.can_read_host() {
            events |= EventSet::IN;
        }
        if !self.to_host.is_empty() && !self.host_write_closed {
            events |= EventSet::OUT;
        }
        Some(events)
    }

    /// Handles readiness of the Unix stream.
    pub fn on_stream_event(&mut self, events: EventSet, now: Instant) {
        if events.contains(EventSet::IN) {
            self.want_read = true;
        }
        if events.contains(EventSet::OUT) {
            self.flush();
        }
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.on_hangup();
        }
        self.check_close(now);
    }

    /// The Unix peer is gone: what it sent can still be read, nothing can be
    /// written.
    fn on_hangup(&mut self) {
        self.host_hup = true;
        self.drop_to_host();
        if self.state == State::Connecting {
            // The host gave up before the guest answered.
            self.reset();
        } else {
            // Reads no longer wait for epoll: they drain to EOF.
            self.want_read = true;
        }
    }

    /// Discards the data for the host, still counting it as forwarded.
    fn drop_to_host(&mut self) {
        let guest_bytes = self.to_host.len() - self.preamble;
        self.fwd_cnt += Wrapping(guest_bytes as u32);
        self.to_host.clear();
        self.preamble = 0;
        self.host_write_closed = true;
    }

    /// Aborts: RST to the guest, EOF to the host.
    pub fn reset(&mut self) {
        self.send_rst = true;
        self.drop_to_host();
        self.host_eof = true;
        self.want_read = false;
        // Tell the host at once; the fd itself goes with the connection.
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Handles a packet from the guest addressed to this connection.
    pub fn recv(&mut self, hdr: &Header, data: &[u8], now: Instant) {
        // Every packet carries the sender's credit.
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        match (self.state, hdr.op) {
            (_, OP_RST) => self.state = State::Closed,
            (State::Connecting, OP_RESPONSE) => {
                self.state = State::Established;
                self.deadline = None;
                let ok = format!("OK {}\n", self.local_port);
                self.preamble = ok.len();
                self.to_host.extend(ok.as_bytes());
                self.flush();
            }
            (State::Established, OP_RW) => self.recv_data(data),
            (State::Established | State::AwaitingRst, OP_CREDIT_UPDATE) => {}
            (State::Established, OP_CREDIT_REQUEST) => self.send_credit_update = true,
            (State::Established, OP_SHUTDOWN) => {
                self.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                self.flush();
            }
            // We are closing and wait for RST; the rest no longer matters.
            (State::AwaitingRst, _) => {}
            (state, op) => {
                tracing::debug!(?state, op, port = self.local_port, "unexpected vsock op");
                self.reset();
            }
        }
        self.check_close(now);
    }

    fn recv_data(&mut self, data: &[u8]) {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            tracing::debug!(port = self.local_port, "vsock data after SHUTDOWN(SEND)");
            self.reset();
            return;
        }
        let held = (self.rx_cnt - self.fwd_cnt).0 as usize;
        if held + data.len() > CONN_BUF_SIZE as usize {
            tracing::debug!(
                port = self.local_port,
                held,
                len = data.len(),
                "guest overran its vsock credit"
            );
            self.reset();
            return;
        }
        self.rx_cnt += Wrapping(data.len() as u32);
        if self.host_write_closed {
            // The host can take no more; the data is lost but acknowledged.
            self.fwd_cnt += Wrapping(data.len() as u32);
            return;
        }
        self.to_host.extend(data);
        self.flush();
    }

    /// Writes what the Unix stream takes now.
    fn flush(&mut self) {
        while !self.to_host.is_empty() && !self.host_write_closed {
            let (front, _) = self.to_host.as_slices();
            match send_nosignal(&self.stream, front) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    let ours = n.min(self.preamble);
                    self.preamble -= ours;
                    self.fwd_cnt += Wrapping((n - ours) as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(port = self.local_port, error = %e, "vsock host write failed");
                    self.drop_to_host();
                }
            }
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && self.to_host.is_empty() {
            if !self.host_write_closed {
                // The guest's half-close becomes the host's EOF.
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            self.host_write_closed = true;
        }
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.send_credit_update = true;
        }
    }

    /// Starts closing once neither direction can carry more data.
    fn check_close(&mut self, now: Instant) {
        if self.state != State::Established || self.send_rst {
            return;
        }
        let to_guest_done = self.host_eof || self.peer_shutdown & SHUTDOWN_RCV != 0;
        let to_host_done = self.host_write_closed && self.to_host.is_empty();
        if to_guest_done && to_host_done {
            if self.peer_shutdown == SHUTDOWN_BOTH {
                // The guest closed: its SHUTDOWN is answered with RST.
                self.send_rst = true;
            } else {
                self.send_shutdown = SHUTDOWN_BOTH;
                self.state = State::AwaitingRst;
                self.deadline = Some(now + self.shutdown_timeout);
            }
        } else if self.peer_shutdown == SHUTDOWN_BOTH && self.deadline.is_none() {
            // The guest closed with data still owed to a slow host: bound
            // the wait.
            self.deadline = Some(now + self.shutdown_timeout);
        }
    }

    /// Handles the expiry of [`Self::deadline`].
    pub fn on_deadline(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.deadline = None;
            tracing::debug!(port = self.local_port, state = ?self.state, "vsock connection timed out");
            self.reset();
        }
    }

    /// The next packet for the guest, with a payload of at most `capacity`
    /// bytes; `None` when there is nothing to send right now.
    pub fn next_packet(&mut self, capacity: usize, now: Instant) -> Option<Outgoing> {
        if self.state == State::Closed {
            return None;
        }
        if self.send_rst {
            self.send_rst = false;
            self.state = State::Closed;
            return Some(self.control(OP_RST, 0));
        }
        if self.state == State::Connecting {
            return std::mem::take(&mut self.send_request).then(|| self.control(OP_REQUEST, 0));
        }
        if std::mem::take(&mut self.send_response) {
            return Some(self.control(OP_RESPONSE, 0));
        }
        if self.send_shutdown != 0 {
            let flags = std::mem::take(&mut self.send_shutdown);
            return Some(self.control(OP_SHUTDOWN, flags));
        }
        // A zero-byte read would look like EOF.
        if capacity > 0 && self.want_read && self.can_read_host() {
            if let Some(pkt) = self.read_host(capacity, now) {
                return Some(pkt);
            }
        }
        if self.send_credit_update {
            return Some(self.control(OP_CREDIT_UPDATE, 0));
        }
        None
    }

    fn read_host(&mut self, capacity: usize, now: Instant) -> Option<Outgoing> {
        let len = capacity.min(self.peer_free() as usize);
        let mut data = vec![0u8; len];
        loop {
            match (&self.stream).read(&mut data) {
                Ok(0) => {
                    self.host_eof = true;
                    self.want_read = false;
                    self.check_close(now);
                    if self.state == State::Established && !self.send_rst {
                        // The host's half-close becomes the guest's EOF.
                        self.send_shutdown |= SHUTDOWN_SEND;
                    }
                    return self.next_packet(capacity, now);
                }
                Ok(n) => {
                    data.truncate(n);
                    self.tx_cnt += Wrapping(n as u32);
                    let mut pkt = self.control(OP_RW, 0);
                    pkt.0.len = n as u32;
                    pkt.1 = data;
                    return Some(pkt);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.want_read = false;
                    return None;
                }
                Err(e) => {
                    tracing::debug!(port = self.local_port, error = %e, "vsock host read failed");
                    self.host_hup = true;
                    self.drop_to_host();
                    self.host_eof = true;
                    self.want_read = false;
                    self.check_close(now);
                    return self.next_packet(capacity, now);
                }
            }
        }
    }

    /// A packet of this connection, carrying our current credit.
    fn control(&mut self, op: u16, flags: u32) -> Outgoing {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.send_credit_update = false;
        let hdr = Header {
            src_port: self.local_port,
            dst_port: self.peer_port,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
            ..Header::default()
        };
        (hdr, Vec::new())
    }
}
