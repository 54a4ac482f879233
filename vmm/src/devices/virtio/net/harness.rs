//! What the virtio-net tests share: guest memory, a "tap" made of a
//! socket pair, and a harness that plays the driver over both queues and
//! runs the worker's handler without a thread.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::Handler;
use super::{MacAddr, Net, Tap, MAX_FRAME_LEN, NET_HDR_LEN};
use crate::devices::virtio::test_driver::DriverQueue;
use crate::devices::virtio::Interrupt;
use crate::memory::GuestMemory;

pub(super) const MEM_SIZE: u64 = 0x40_0000;
pub(super) const QSIZE: u16 = 16;
pub(super) const RX_RING: u64 = 0;
pub(super) const TX_RING: u64 = 0x4000;
/// Where each queue's used ring goes: virtio-queue's mock lays it over
/// the tail of the available ring.
pub(super) const USED_OFFSET: u64 = 0x1000;
pub(super) const BUF: u64 = 0x10_0000;
pub(super) const BUF2: u64 = 0x20_0000;
pub(super) const BUF3: u64 = 0x30_0000;
pub(super) const R: bool = false;
pub(super) const W: bool = true;
pub(super) const MAC: [u8; 6] = [0x02, 0xab, 0xcd, 0x00, 0x01, 0x02];

pub(super) fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// A "tap" that keeps packet boundaries, and the host end of it.
pub(super) fn tap_pair() -> (Tap, File) {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let (dev, host) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags).unwrap();
    let tap = Tap {
        file: File::from(dev),
        name: "test".into(),
    };
    (tap, File::from(host))
}

pub(super) fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The next frame the host end got, if any.
pub(super) fn host_recv(host: &mut File) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2 * MAX_FRAME_LEN];
    match host.read(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("host read: {e}"),
    }
}

/// Plays the driver over the two queues and runs the device's handler
/// on them, without a thread.
pub(super) struct Harness {
    pub(super) mem: GuestMemory,
    pub(super) rx: DriverQueue,
    pub(super) tx: DriverQueue,
    pub(super) handler: Handler,
    pub(super) host: File,
}

impl Harness {
    pub(super) fn new() -> Harness {
        let mem = guest_memory();
        let (rx, rxq) = DriverQueue::new(&mem, RX_RING, QSIZE, Some(RX_RING + USED_OFFSET));
        let (tx, txq) = DriverQueue::new(&mem, TX_RING, QSIZE, Some(TX_RING + USED_OFFSET));
        let (tap, host) = tap_pair();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let handler = Handler::new(mem.clone(), rxq, txq, tap.file, interrupt).unwrap();
        Harness {
            mem,
            rx,
            tx,
            handler,
            host,
        }
    }

    /// Submits a transmit chain; returns its used element.
    pub(super) fn transmit(&mut self, descs: &[(u64, u32, bool)]) -> (u16, u32) {
        let head = self.tx.add(&self.mem, descs);
        self.handler.process_tx();
        let used = self.tx.next_used(&self.mem).expect("chain not used");
        assert_eq!(used.0, head);
        used
    }

    pub(super) fn transmit_raw(&mut self, descs: &[Descriptor]) -> (u16, u32) {
        let head = self.tx.add_raw(&self.mem, descs);
        self.handler.process_tx();
        let used = self.tx.next_used(&self.mem).expect("chain not used");
        assert_eq!(used.0, head);
        used
    }

    pub(super) fn host_send(&mut self, frame: &[u8]) {
        assert_eq!(self.host.write(frame).unwrap(), frame.len());
    }

    /// Reads `len` bytes of guest memory at `addr`.
    pub(super) fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// A transmit chain whose header is at BUF, followed by `frame`.
    pub(super) fn put_tx(&self, frame: &[u8]) {
        let mut bytes = vec![0x5au8; NET_HDR_LEN];
        bytes.extend_from_slice(frame);
        self.mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
    }

    /// The frame that a good transmit chain delivers: the queue works.
    pub(super) fn assert_tx_works(&mut self) {
        let f = frame(60, 9);
        self.put_tx(&f);
        let (_, len) = self.transmit(&[(BUF, (NET_HDR_LEN + f.len()) as u32, R)]);
        assert_eq!(len, 0);
        assert_eq!(host_recv(&mut self.host), Some(f));
    }
}

pub(super) fn raw(addr: u64, len: u32, flags: u32, next: u16) -> Descriptor {
    Descriptor::new(addr, len, flags as u16, next)
}

pub(super) fn net(tap: Tap) -> Net {
    Net::new(tap, MacAddr(MAC), None)
}

pub(super) fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}
