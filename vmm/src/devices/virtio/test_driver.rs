//! The driver's side of a split queue, for the devices' unit tests: the
//! test writes descriptors and available entries into guest memory as a
//! guest driver would, and reads back what the device used.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::worker::DeviceThread;
use crate::memory::GuestMemory;
use crate::seccomp::{SeccompMode, ThreadKind};

/// A device thread without a seccomp filter, as a unit test's device
/// gets.
pub fn thread() -> DeviceThread {
    DeviceThread::spawn(ThreadKind::Block, SeccompMode::Off).unwrap()
}

/// The descriptors of a well-linked chain of (address, length,
/// device-writable), each `next` the index after its own, from 0.
pub fn linked(descs: &[(u64, u32, bool)]) -> Vec<Descriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, write))| {
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            Descriptor::new(addr, len, flags as u16, i as u16 + 1)
        })
        .collect()
}

/// One queue as the driver sees it. [`DriverQueue::add`] writes chains in
/// order from table index 0, wrapping; [`DriverQueue::set_desc`] lets a
/// test place descriptors itself.
pub struct DriverQueue {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    /// A queue of `size` entries laid out from `base`, and the device's
    /// view of it. With `used_at`, the used ring goes there: virtio-queue's
    /// mock lays a small queue's used ring over the tail of its available
    /// ring (it sizes the latter in entries, not bytes).
    pub fn new(
        mem: &GuestMemory,
        base: u64,
        size: u16,
        used_at: Option<u64>,
    ) -> (DriverQueue, Queue) {
        let mock = MockSplitQueue::create(mem, GuestAddress(base), size);
        let mut queue: Queue = mock.create_queue().unwrap();
        let used = match used_at {
            Some(at) => {
                let used = GuestAddress(at);
                queue.try_set_used_ring_address(used).unwrap();
                // Fresh rings, as a driver allocates them: flags and index zero.
                mem.write_obj(0u32, used).unwrap();
                used
            }
            None => mock.used_addr(),
        };
        let dq = DriverQueue {
            size,
            desc: mock.desc_table_addr(),
            avail: mock.avail_addr(),
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        (dq, queue)
    }

    /// Writes descriptor `d` at table index `index`.
    pub fn set_desc(&self, mem: &GuestMemory, index: u16, d: Descriptor) {
        let addr = self.desc.unchecked_add(16 * u64::from(index));
        mem.write_obj(RawDescriptor::from(d), addr).unwrap();
    }

    /// Writes `descs` at consecutive table indices, their `next` fields
    /// taken as relative to the first, and makes the first available.
    pub fn add_raw(&mut self, mem: &GuestMemory, descs: &[Descriptor]) -> u16 {
        if self.next_desc + descs.len() as u16 > self.size {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let d = Descriptor::new(d.addr().0, d.len(), d.flags(), head + d.next());
            self.set_desc(mem, head + i as u16, d);
        }
        self.next_desc += descs.len() as u16;
        self.publish(mem, head);
        head
    }

    /// A well-linked chain of (address, length, device-writable).
    pub fn add(&mut self, mem: &GuestMemory, descs: &[(u64, u32, bool)]) -> u16 {
        self.add_raw(mem, &linked(descs))
    }

    /// Makes the chain at `head` available.
    pub fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = self
            .avail
            .unchecked_add(4 + 2 * u64::from(self.avail_idx % self.size));
        mem.write_obj(head, slot).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.write_obj(self.avail_idx, self.avail.unchecked_add(2))
            .unwrap();
    }

    /// Writes the available ring's index as it stands, whatever chains it
    /// claims: a hostile driver's.
    pub fn set_avail_idx(&self, mem: &GuestMemory, idx: u16) {
        mem.write_obj(idx, self.avail.unchecked_add(2)).unwrap();
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        let idx = mem.read_obj(self.used.unchecked_add(2)).unwrap();
        fence(Ordering::SeqCst);
        idx
    }

    /// The next used element (id, len), if any.
    pub fn next_used(&mut self, mem: &GuestMemory) -> Option<(u16, u32)> {
        if self.used_idx(mem) == self.used_seen {
            return None;
        }
        let elem = self
            .used
            .unchecked_add(4 + 8 * u64::from(self.used_seen % self.size));
        let id: u32 = mem.read_obj(elem).unwrap();
        let len: u32 = mem.read_obj(elem.unchecked_add(4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id as u16, len))
    }
}
