//! What the virtio-blk tests share: an image whose every byte is its sector
//! number, guest memory, and a harness that plays the driver and runs the
//! queue handler without a thread.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;

use tempfile::NamedTempFile;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::QueueHandler;
use super::{Block, HEADER_LEN, SECTOR_SIZE};
use crate::devices::virtio::test_driver::linked;
use crate::devices::virtio::Interrupt;
use crate::memory::GuestMemory;

pub(super) const MEM_SIZE: u64 = 0x10_0000;
pub(super) const QUEUE_LEN: u16 = 16;
pub(super) const SECTORS: u64 = 64;
pub(super) const HDR: u64 = 0x1_0000;
pub(super) const DATA: u64 = 0x2_0000;
pub(super) const DATA2: u64 = 0x3_0000;
pub(super) const STATUS: u64 = 0x4_0000;
pub(super) const R: bool = false;
pub(super) const W: bool = true;

/// A disk whose every byte is its sector number.
pub(super) fn image() -> NamedTempFile {
    let mut f = NamedTempFile::new().unwrap();
    for sector in 0..SECTORS {
        f.write_all(&[sector as u8; SECTOR_SIZE as usize]).unwrap();
    }
    f
}

pub(super) fn file_bytes(f: &NamedTempFile, offset: u64, len: usize) -> Vec<u8> {
    let mut all = Vec::new();
    File::open(f.path()).unwrap().read_to_end(&mut all).unwrap();
    all[offset as usize..offset as usize + len].to_vec()
}

/// virtio-queue's mock places its used ring over the tail of the
/// available ring (it sizes the latter in entries, not bytes), so the
/// queue under test gets a used ring of its own.
pub(super) const USED_RING: u64 = 0x8000;

pub(super) fn queue(vq: &MockSplitQueue<'_, GuestMemory>) -> Queue {
    let mut q: Queue = vq.create_queue().unwrap();
    q.try_set_used_ring_address(GuestAddress(USED_RING))
        .unwrap();
    q
}

pub(super) fn used_idx(mem: &GuestMemory) -> u16 {
    mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
}

pub(super) fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// Plays the driver: writes requests into a split queue at guest address
/// 0 and runs the device's queue handler on them, without a thread.
pub(super) struct Harness<'a> {
    pub(super) mem: &'a GuestMemory,
    pub(super) vq: MockSplitQueue<'a, GuestMemory>,
    pub(super) handler: QueueHandler,
}

impl<'a> Harness<'a> {
    pub(super) fn new(mem: &'a GuestMemory, block: &Block) -> Harness<'a> {
        let vq = MockSplitQueue::new(mem, QUEUE_LEN);
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let handler = QueueHandler {
            mem: mem.clone(),
            queue: queue(&vq),
            disk: block.disk.try_clone().unwrap(),
            interrupt,
        };
        Harness { mem, vq, handler }
    }

    pub(super) fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// Submits descriptors exactly as given (flags and next included) and
    /// returns the used ring's index and the last used length.
    pub(super) fn submit_raw(&mut self, descs: &[RawDescriptor]) -> (u16, u32) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.vq.add_desc_chains(descs, 0).unwrap();
        self.handler.process_queue();
        self.used()
    }

    pub(super) fn used(&self) -> (u16, u32) {
        let idx = used_idx(self.mem);
        let last = u64::from(idx.wrapping_sub(1) % QUEUE_LEN);
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(USED_RING + 4 + 8 * last + 4))
            .unwrap();
        (idx, len)
    }

    /// Submits a well-linked chain of (address, length, device-writable).
    pub(super) fn submit(&mut self, descs: &[(u64, u32, bool)]) -> (u16, u32) {
        let raw: Vec<RawDescriptor> = linked(descs).into_iter().map(RawDescriptor::from).collect();
        self.submit_raw(&raw)
    }

    pub(super) fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// A request with one data buffer; returns (used length, status).
    pub(super) fn request(
        &mut self,
        kind: u32,
        sector: u64,
        data: Option<(u32, bool)>,
    ) -> (u32, u32) {
        self.header(kind, sector);
        let mut descs = vec![(HDR, HEADER_LEN as u32, R)];
        descs.extend(data.map(|(len, write)| (DATA, len, write)));
        descs.push((STATUS, 1, W));
        let (_, len) = self.submit(&descs);
        (len, self.status().into())
    }
}

pub(super) fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
}
