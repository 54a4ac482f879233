//! The device end to end: real Unix sockets in a temp dir on the host side,
//! the test playing the guest driver on mock queues.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{Timeouts, MAX_CONNECTIONS};
use super::connection::{CONN_BUF_SIZE, CREDIT_UPDATE_THRESHOLD};
use super::packet::*;
use super::*;
use crate::devices::virtio::test_driver::{self, DriverQueue};
use crate::devices::virtio::{Interrupt, INT_USED_RING};
use crate::memory::GuestMemory;

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
const RX_BUFS: u16 = 32;
const RX_BUF_SIZE: u32 = HDR_SIZE as u32 + 4096;
const TX_SLOTS: u16 = 64;
const TX_SLOT_SIZE: u64 = 0x11000;
const RX_BUF_BASE: u64 = 0x10_0000;
const TX_BUF_BASE: u64 = 0x80_0000;
const WAIT: Duration = Duration::from_secs(5);

/// The test's guest: a vsock driver over the device's queues.
struct Guest {
    mem: GuestMemory,
    rx: DriverQueue,
    tx: DriverQueue,
    kicks: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    tx_count: u16,
}

impl Guest {
    fn activate(dev: &mut Vsock) -> Self {
        Self::activate_with(dev, RX_BUFS)
    }

    fn activate_with(dev: &mut Vsock, rx_bufs: u16) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let (rx, rxq) = DriverQueue::new(&mem, 0, QSIZE, None);
        let (tx, txq) = DriverQueue::new(&mem, 0x1_0000, QSIZE, None);
        let (_, evq) = DriverQueue::new(&mem, 0x2_0000, QSIZE, None);
        let kicks: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![rxq, txq, evq],
            queue_events: kicks.iter().map(|e| e.try_clone().unwrap()).collect(),
            interrupt: interrupt.clone(),
            acked_features: VIRTIO_F_VERSION_1,
            thread: test_driver::thread(),
        })
        .unwrap();
        let mut guest = Self {
            mem,
            rx,
            tx,
            kicks,
            interrupt,
            tx_count: 0,
        };
        for slot in 0..rx_bufs {
            guest.post_rx(slot);
        }
        guest.kicks[0].write(1).unwrap();
        guest
    }

    fn post_rx(&mut self, slot: u16) {
        let addr = RX_BUF_BASE + u64::from(slot) * 0x2000;
        let d = Descriptor::new(addr, RX_BUF_SIZE, VRING_DESC_F_WRITE as u16, 0);
        self.rx.set_desc(&self.mem, slot, d);
        self.rx.publish(&self.mem, slot);
    }

    /// Puts raw descriptors on tx as one chain and waits for the device to
    /// return it.
    fn send_chain(&mut self, descs: &[Descriptor]) {
        let first = (self.tx_count % TX_SLOTS) * 4;
        self.tx_count = self.tx_count.wrapping_add(1);
        for (i, d) in descs.iter().enumerate() {
            let index = first + i as u16;
            let last = i + 1 == descs.len();
            let flags = if last {
                d.flags()
            } else {
                d.flags() | VRING_DESC_F_NEXT as u16
            };
            let d = Descriptor::new(d.addr().0, d.len(), flags, index + 1);
            self.tx.set_desc(&self.mem, index, d);
        }
        self.tx.publish(&self.mem, first);
        self.kicks[1].write(1).unwrap();
        let deadline = Instant::now() + WAIT;
        while self.tx.next_used(&self.mem).is_none() {
            assert!(Instant::now() < deadline, "the device did not consume tx");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn send(&mut self, hdr: Header, data: &[u8]) {
        let slot = u64::from(self.tx_count % TX_SLOTS);
        let buf = TX_BUF_BASE + slot * TX_SLOT_SIZE;
        let hdr = Header {
            len: data.len() as u32,
            ..hdr
        };
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(buf))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(buf + 0x100))
            .unwrap();
        let mut descs = vec![Descriptor::new(buf, HDR_SIZE as u32, 0, 0)];
        if !data.is_empty() {
            descs.push(Descriptor::new(buf + 0x100, data.len() as u32, 0, 0));
        }
        self.send_chain(&descs);
    }

    fn recv_within(&mut self, wait: Duration) -> Option<(Header, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((id, len)) = self.rx.next_used(&self.mem) {
                let addr = RX_BUF_BASE + u64::from(id) * 0x2000;
                let mut raw = [0u8; HDR_SIZE];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let hdr = Header::from_bytes(&raw);
                assert_eq!(len, HDR_SIZE as u32 + hdr.len, "{hdr:?}");
                let mut data = vec![0u8; hdr.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + HDR_SIZE as u64))
                    .unwrap();
                self.post_rx(id);
                self.kicks[0].write(1).unwrap();
                return Some((hdr, data));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn recv(&mut self) -> (Header, Vec<u8>) {
        self.recv_within(WAIT).expect("no packet from the device")
    }

    fn expect_op(&mut self, op: u16) -> Header {
        let (hdr, _) = self.recv();
        assert_eq!(hdr.op, op, "{hdr:?}");
        assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(hdr.type_, TYPE_STREAM);
        hdr
    }

    fn expect_nothing(&mut self) {
        if let Some(pkt) = self.recv_within(Duration::from_millis(200)) {
            panic!("unexpected packet {pkt:?}");
        }
    }
}

/// A guest packet on a connection (guest port, host port).
fn pkt(op: u16, guest_port: u32, host_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 8192,
        ..Header::default()
    }
}

/// A device listening in a fresh temporary directory (kept alive by the
/// returned guard).
fn device(timeouts: Timeouts) -> (tempfile::TempDir, PathBuf, Vsock) {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    let dev = Vsock::with_timeouts(GUEST_CID, &path, timeouts).unwrap();
    (dir, path, dev)
}

fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("vsock.sock")
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

fn connect(path: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    writeln!(s, "CONNECT {port}").unwrap();
    s
}

fn assert_eof(stream: &mut UnixStream) {
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected EOF, got {other:?}"),
    }
}

/// Host connects to guest port 1024 and the guest accepts; returns the host
/// stream and the host port.
fn establish(guest: &mut Guest, path: &Path) -> (UnixStream, u32) {
    let mut host = connect(path, 1024);
    let req = guest.expect_op(OP_REQUEST);
    assert_eq!(req.dst_port, 1024);
    assert!(req.src_port >= 1 << 30);
    assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
    guest.send(pkt(OP_RESPONSE, 1024, req.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));
    (host, req.src_port)
}

#[test]
fn host_initiated_connection_end_to_end() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let (mut host, port) = establish(&mut guest, &path);
    assert_ne!(guest.interrupt.status() & INT_USED_RING, 0);

    // Guest to host.
    guest.send(pkt(OP_RW, 1024, port), b"hello host");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");

    // Host to guest: the guest advertised 8192 bytes, so that much comes,
    // then nothing until it gives credit back.
    let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    host.write_all(&sent).unwrap();
    let mut got = Vec::new();
    while got.len() < 8192 {
        let (hdr, data) = guest.recv();
        assert_eq!(hdr.op, OP_RW);
        assert_eq!((hdr.src_port, hdr.dst_port), (port, 1024));
        got.extend(data);
    }
    assert_eq!(got.len(), 8192);
    guest.expect_nothing();
    while got.len() < sent.len() {
        let credit = Header {
            fwd_cnt: got.len() as u32,
            ..pkt(OP_CREDIT_UPDATE, 1024, port)
        };
        guest.send(credit, &[]);
        let before = got.len();
        while got.len() < (before + 8192).min(sent.len()) {
            let (hdr, data) = guest.recv();
            assert_eq!(hdr.op, OP_RW);
            got.extend(data);
        }
    }
    assert_eq!(got, sent);

    // The guest resets: the host sees the stream close.
    guest.send(pkt(OP_RST, 1024, port), &[]);
    assert_eof(&mut host);
    // The connection is gone: more data for it is answered with RST.
    guest.send(pkt(OP_RW, 1024, port), b"late");
    let rst = guest.expect_op(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (port, 1024));
}

#[test]
fn host_close_shuts_the_guest_side_down() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let (host, port) = establish(&mut guest, &path);
    drop(host);
    let shut = guest.expect_op(OP_SHUTDOWN);
    assert_eq!(shut.flags, SHUTDOWN_BOTH);
    guest.send(pkt(OP_RST, 1024, port), &[]);
    guest.expect_nothing();
}

#[test]
fn half_closes_map_to_shutdown() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let (mut host, port) = establish(&mut guest, &path);

    // Host half-close: the guest is told the host sends no more...
    host.shutdown(Shutdown::Write).unwrap();
    let shut = guest.expect_op(OP_SHUTDOWN);
    assert_eq!(shut.flags, SHUTDOWN_SEND);
    // ...and can still send.
    guest.send(pkt(OP_RW, 1024, port), b"still open");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still open");

    // Guest half-close: the host reads EOF, and with both directions done
    // the device closes.
    let guest_shut = Header {
        flags: SHUTDOWN_SEND,
        ..pkt(OP_SHUTDOWN, 1024, port)
    };
    guest.send(guest_shut, &[]);
    assert_eof(&mut host);
    let shut = guest.expect_op(OP_SHUTDOWN);
    assert_eq!(shut.flags, SHUTDOWN_BOTH);
    guest.send(pkt(OP_RST, 1024, port), &[]);
}

#[test]
fn guest_half_close_leaves_the_host_sending() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let (mut host, port) = establish(&mut guest, &path);
    guest.send(pkt(OP_RW, 1024, port), b"last words");
    let guest_shut = Header {
        flags: SHUTDOWN_SEND,
        ..pkt(OP_SHUTDOWN, 1024, port)
    };
    guest.send(guest_shut, &[]);
    let mut buf = Vec::new();
    host.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"last words");
    host.write_all(b"reply").unwrap();
    let (hdr, data) = guest.recv();
    assert_eq!((hdr.op, data.as_slice()), (OP_RW, &b"reply"[..]));
    // A full close from the guest is answered with RST.
    let guest_shut = Header {
        flags: SHUTDOWN_BOTH,
        ..pkt(OP_SHUTDOWN, 1024, port)
    };
    guest.send(guest_shut, &[]);
    guest.expect_op(OP_RST);
    assert_eof(&mut host);
}

#[test]
fn guest_refusal_closes_the_host_stream() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let mut host = connect(&path, 99);
    let req = guest.expect_op(OP_REQUEST);
    guest.send(pkt(OP_RST, 99, req.src_port), &[]);
    assert_eof(&mut host);
}

#[test]
fn unanswered_request_times_out() {
    let (_dir, path, mut dev) = device(Timeouts {
        connect: Duration::from_millis(100),
        ..Timeouts::default()
    });
    let mut guest = Guest::activate(&mut dev);
    let mut host = connect(&path, 1024);
    let req = guest.expect_op(OP_REQUEST);
    let start = Instant::now();
    assert_eof(&mut host);
    assert!(start.elapsed() < Duration::from_secs(2));
    let rst = guest.expect_op(OP_RST);
    assert_eq!(rst.src_port, req.src_port);
}

#[test]
fn malformed_handshakes_close_only_their_stream() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let (mut good, port) = establish(&mut guest, &path);
    for line in [
        &b"HELLO 1024\n"[..],
        b"CONNECT 99999999999\n",
        b"CONNECT x\n",
        &[b'A'; 40],
    ] {
        let mut bad = UnixStream::connect(&path).unwrap();
        bad.set_read_timeout(Some(WAIT)).unwrap();
        bad.write_all(line).unwrap();
        assert_eof(&mut bad);
    }
    guest.expect_nothing();
    guest.send(pkt(OP_RW, 1024, port), b"ok");
    let mut buf = [0u8; 2];
    good.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

#[test]
fn guest_initiated_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    let listener = UnixListener::bind(dir.path().join("vsock.sock_5000")).unwrap();
    let mut dev = Vsock::new(GUEST_CID, &path).unwrap();
    let mut guest = Guest::activate(&mut dev);

    guest.send(pkt(OP_REQUEST, 40000, 5000), &[]);
    let resp = guest.expect_op(OP_RESPONSE);
    assert_eq!((resp.src_port, resp.dst_port), (5000, 40000));
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(WAIT)).unwrap();

    guest.send(pkt(OP_RW, 40000, 5000), b"ping");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    host.write_all(b"pong").unwrap();
    let (hdr, data) = guest.recv();
    assert_eq!((hdr.op, data.as_slice()), (OP_RW, &b"pong"[..]));

    // A guest that waits for credit gets it on request.
    guest.send(pkt(OP_CREDIT_REQUEST, 40000, 5000), &[]);
    let update = guest.expect_op(OP_CREDIT_UPDATE);
    assert_eq!((update.buf_alloc, update.fwd_cnt), (CONN_BUF_SIZE, 4));
}

#[test]
fn guest_connection_without_listener_is_reset() {
    let (_dir, _path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    guest.send(pkt(OP_REQUEST, 40000, 6000), &[]);
    let rst = guest.expect_op(OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (6000, 40000));
}

#[test]
fn stray_packets_are_answered_with_rst() {
    let (_dir, _path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let wrong_cid = Header {
        dst_cid: 7,
        ..pkt(OP_REQUEST, 1, 2)
    };
    let wrong_type = Header {
        type_: 2,
        ..pkt(OP_REQUEST, 1, 2)
    };
    for hdr in [
        wrong_cid,
        wrong_type,
        pkt(OP_RW, 1, 2),
        pkt(OP_SHUTDOWN, 1, 2),
    ] {
        guest.send(hdr, &[]);
        let (rst, _) = guest.recv();
        assert_eq!(rst.op, OP_RST);
        assert_eq!((rst.src_port, rst.dst_port), (2, 1));
    }
    // An RST is never answered.
    guest.send(pkt(OP_RST, 1, 2), &[]);
    guest.expect_nothing();
}

#[test]
fn credit_bounds_buffering_and_is_returned() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let (mut host, port) = establish(&mut guest, &path);

    // The host does not read; a well-behaved guest sends while its credit
    // lasts. What the kernel's socket buffer takes is forwarded and
    // credited back, the rest the device holds.
    let chunk = vec![0x5a; MAX_PKT_DATA];
    let (mut sent, mut fwd) = (0u32, 0u32);
    loop {
        let update = match guest.recv_within(Duration::ZERO) {
            Some(update) => Some(update),
            None if CONN_BUF_SIZE - (sent - fwd) >= chunk.len() as u32 => {
                guest.send(pkt(OP_RW, 1024, port), &chunk);
                sent += chunk.len() as u32;
                continue;
            }
            // Starved: wait for credit, which stops once the host's socket
            // is full.
            None => guest.recv_within(Duration::from_millis(300)),
        };
        let Some((hdr, _)) = update else { break };
        assert_eq!(hdr.op, OP_CREDIT_UPDATE);
        fwd = hdr.fwd_cnt;
    }
    assert_eq!(sent - fwd, CONN_BUF_SIZE, "sent {sent}, forwarded {fwd}");

    // Once the host drains it all, the starved guest gets its credit back.
    let mut buf = vec![0u8; sent as usize];
    host.read_exact(&mut buf).unwrap();
    while CONN_BUF_SIZE - (sent - fwd) < CONN_BUF_SIZE - CREDIT_UPDATE_THRESHOLD {
        fwd = guest.expect_op(OP_CREDIT_UPDATE).fwd_cnt;
    }
}

#[test]
fn credit_overrun_resets_the_connection() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let (mut host, port) = establish(&mut guest, &path);
    // A guest that ignores credit, with a host that does not read: the
    // device holds at most its buffer, then resets.
    let chunk = vec![0x5a; MAX_PKT_DATA];
    let mut sent = 0usize;
    let rst = loop {
        assert!(sent < 64 * MAX_PKT_DATA, "no reset after {sent} bytes");
        guest.send(pkt(OP_RW, 1024, port), &chunk);
        sent += chunk.len();
        if let Some((hdr, _)) = guest.recv_within(Duration::ZERO) {
            if hdr.op == OP_RST {
                break hdr;
            }
            assert_eq!(hdr.op, OP_CREDIT_UPDATE);
        }
    };
    assert_eq!((rst.src_port, rst.dst_port), (port, 1024));
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert!(got.len() < sent);
}

#[test]
fn malformed_chains_are_returned_and_the_device_goes_on() {
    let (_dir, _path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let bad_chains = [
        vec![Descriptor::new(0xdead_0000_0000, 44, 0, 0)],
        vec![Descriptor::new(
            TX_BUF_BASE,
            44,
            VRING_DESC_F_WRITE as u16,
            0,
        )],
        vec![Descriptor::new(TX_BUF_BASE, 10, 0, 0)],
        vec![Descriptor::new(TX_BUF_BASE, u32::MAX, 0, 0)],
    ];
    for chain in &bad_chains {
        guest.send_chain(chain);
    }
    // A header claiming more payload than the chain holds.
    let liar = Header {
        len: 1000,
        ..pkt(OP_RW, 1, 2)
    };
    guest
        .mem
        .write_slice(&liar.to_bytes(), GuestAddress(TX_BUF_BASE))
        .unwrap();
    guest.send_chain(&[Descriptor::new(TX_BUF_BASE, 100, 0, 0)]);
    guest.expect_nothing();
    // Still serving: a valid packet is answered.
    guest.send(pkt(OP_RW, 1, 2), &[]);
    guest.expect_op(OP_RST);
}

#[test]
fn malformed_rx_buffers_are_returned_unused() {
    let (_dir, _path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate_with(&mut dev, 0);
    let bad = [
        Descriptor::new(RX_BUF_BASE, RX_BUF_SIZE, 0, 0),
        Descriptor::new(RX_BUF_BASE, 20, VRING_DESC_F_WRITE as u16, 0),
        Descriptor::new(0xdead_0000_0000, RX_BUF_SIZE, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (slot, d) in bad.into_iter().enumerate() {
        guest.rx.set_desc(&guest.mem, slot as u16, d);
        guest.rx.publish(&guest.mem, slot as u16);
    }
    guest.post_rx(3);
    guest.kicks[0].write(1).unwrap();
    guest.send(pkt(OP_REQUEST, 40000, 6000), &[]);
    let deadline = Instant::now() + WAIT;
    let mut used = Vec::new();
    while used.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "rx buffers not returned: {used:?}"
        );
        match guest.rx.next_used(&guest.mem) {
            Some(elem) => used.push(elem),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    assert_eq!(used, [(0, 0), (1, 0), (2, 0), (3, HDR_SIZE as u32)]);
}

#[test]
fn no_interrupt_without_used_buffers() {
    let (_dir, _path, mut dev) = device(Timeouts::default());
    let guest = Guest::activate(&mut dev);
    guest.kicks[1].write(1).unwrap();
    guest.kicks[2].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(guest.interrupt.status(), 0);
}

#[test]
fn reset_drops_connections_and_the_device_restarts() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let (mut host, _) = establish(&mut guest, &path);
    assert!(dev.reset());
    assert_eof(&mut host);
    assert!(path.exists());
    let mut guest = Guest::activate(&mut dev);
    let (mut host, port) = establish(&mut guest, &path);
    guest.send(pkt(OP_RW, 1024, port), b"again");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"again");
}

#[test]
fn config_space_holds_the_cid() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Vsock::new(0x1_2345, &socket_path(&dir)).unwrap();
    assert_eq!(dev.device_type(), crate::devices::virtio::TYPE_VSOCK);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 0x1_2345);
    let mut high = [0xffu8; 4];
    dev.read_config(4, &mut high);
    assert_eq!(high, [0; 4]);
    let mut past = [0xffu8; 4];
    dev.read_config(6, &mut past);
    assert_eq!(past, [0; 4]);
    dev.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn refuses_reserved_cids() {
    let dir = tempfile::tempdir().unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(matches!(
            Vsock::new(cid, &socket_path(&dir)),
            Err(VsockError::InvalidCid(c)) if c == cid
        ));
    }
}

#[test]
fn socket_path_in_use_stale_and_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);

    // A live listener: refused, and its file left alone.
    let live = UnixListener::bind(&path).unwrap();
    let err = Vsock::new(GUEST_CID, &path).err().unwrap();
    assert!(matches!(err, VsockError::InUse(_)), "{err}");
    assert!(err.to_string().contains("in use"));
    assert!(path.exists());

    // The same file with nobody listening is stale: replaced.
    drop(live);
    assert!(path.exists());
    let dev = Vsock::new(GUEST_CID, &path).unwrap();
    UnixStream::connect(&path).unwrap();
    assert!(matches!(
        Vsock::new(GUEST_CID, &path),
        Err(VsockError::InUse(_))
    ));

    // Dropping the device removes its socket.
    drop(dev);
    assert!(!path.exists());

    // A file that is not a socket is not ours to remove.
    std::fs::write(&path, b"data").unwrap();
    assert!(matches!(
        Vsock::new(GUEST_CID, &path),
        Err(VsockError::NotSocket(_))
    ));
    assert!(path.exists());
}

#[test]
fn dropping_an_active_device_removes_its_socket() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let (mut host, _) = establish(&mut guest, &path);
    drop(dev);
    assert!(!path.exists());
    assert_eof(&mut host);
}

#[test]
fn connections_are_limited() {
    let (_dir, path, mut dev) = device(Timeouts {
        connect: Duration::from_secs(60),
        ..Timeouts::default()
    });
    // No rx buffers: every connection stays waiting for the guest.
    let _guest = Guest::activate_with(&mut dev, 0);
    let mut open = Vec::new();
    for batch in 0..MAX_CONNECTIONS / 32 {
        for i in 0..32 {
            open.push(connect(&path, (batch * 32 + i) as u32));
        }
        // Paced below the handshake limit.
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut refused = connect(&path, 9999);
    assert_eof(&mut refused);
    for stream in &open {
        stream.set_nonblocking(true).unwrap();
        let err = (&*stream).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
    }
}

#[test]
fn host_data_sent_before_ok_is_relayed() {
    let (_dir, path, mut dev) = device(Timeouts::default());
    let mut guest = Guest::activate(&mut dev);
    let mut host = UnixStream::connect(&path).unwrap();
    host.set_read_timeout(Some(WAIT)).unwrap();
    host.write_all(b"CONNECT 1024\nearly").unwrap();
    let req = guest.expect_op(OP_REQUEST);
    guest.send(pkt(OP_RESPONSE, 1024, req.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));
    let (hdr, data) = guest.recv();
    assert_eq!((hdr.op, data.as_slice()), (OP_RW, &b"early"[..]));
}

#[test]
fn silent_host_connections_time_out() {
    let (_dir, path, mut dev) = device(Timeouts {
        handshake: Duration::from_millis(100),
        ..Timeouts::default()
    });
    let _guest = Guest::activate(&mut dev);
    let mut silent = UnixStream::connect(&path).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    silent.write_all(b"CONN").unwrap();
    assert_eof(&mut silent);
}
