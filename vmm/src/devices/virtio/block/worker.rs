//! The request queue on the device's worker thread: every chain the driver
//! made available served in turn, the guest interrupted after each pass.

use std::ops::ControlFlow;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use crate::devices::virtio::ring::{drain, RingNames};
use crate::devices::virtio::worker::EventHandler;
use crate::devices::virtio::Interrupt;
use crate::memory::GuestMemory;

pub(super) const TOKEN_QUEUE: u64 = 0;
/// What the queue's messages call it.
const NAMES: RingNames = RingNames {
    device: "virtio-blk",
    queue: "virtio-blk",
    chain: "virtio-blk chain to the guest",
};

/// What the worker thread owns: the queue, guest memory and its own handle
/// on the disk.
pub(super) struct QueueHandler {
    pub(super) mem: GuestMemory,
    pub(super) queue: Queue,
    pub(super) disk: Disk,
    pub(super) interrupt: Arc<Interrupt>,
}

/// The queue handler on the device's worker thread, woken by the queue's
/// eventfd.
pub(super) struct QueueWorker {
    pub(super) handler: QueueHandler,
    pub(super) epoll: Epoll,
    pub(super) queue_evt: EventFd,
}

impl EventHandler for QueueWorker {
    type Output = ();

    fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    fn handle(&mut self, _token: u64, _set: EventSet) -> ControlFlow<()> {
        // Clear the eventfd before looking at the ring, so a notification
        // racing with this pass is not lost.
        let _ = self.queue_evt.read();
        self.handler.process_queue();
        ControlFlow::Continue(())
    }

    fn finish(self) {}
}

impl QueueHandler {
    /// Serves every available chain, then interrupts the guest if it
    /// wants to know.
    pub(super) fn process_queue(&mut self) {
        let mem = &self.mem;
        let disk = &mut self.disk;
        drain(
            &mut self.queue,
            mem,
            &self.interrupt,
            &NAMES,
            usize::MAX,
            |chain| disk.process(mem, chain),
        );
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN};
    use vm_memory::{Address, Bytes};

    use crate::devices::virtio::block::harness::*;
    use crate::devices::virtio::block::Block;
    use crate::devices::virtio::INT_USED_RING;

    #[test]
    fn bad_available_ring_entries_do_not_stop_the_queue() {
        let img = image();
        let block = Block::new(img.path(), false).unwrap();
        let mem = guest_memory();
        let mut h = Harness::new(&mem, &block);
        let avail = h.vq.avail_addr();
        // A head index beyond the queue size: it cannot even be returned.
        h.mem.write_obj(100u16, avail.unchecked_add(4)).unwrap();
        h.mem.write_obj(1u16, avail.unchecked_add(2)).unwrap();
        h.handler.process_queue();
        assert_eq!(h.used().0, 0);
        h.header(VIRTIO_BLK_T_IN, 0);
        let r = h.submit(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
        assert_eq!(r, (1, 513));

        // An index claiming more chains than the queue holds is refused
        // and the handler returns instead of spinning.
        h.mem.write_obj(1000u16, avail.unchecked_add(2)).unwrap();
        h.handler.process_queue();
        assert_eq!(h.used().0, 1);
    }

    #[test]
    fn signals_the_guest_after_using_buffers() {
        let img = image();
        let block = Block::new(img.path(), false).unwrap();
        let mem = guest_memory();
        let mut h = Harness::new(&mem, &block);
        h.handler.process_queue();
        assert_eq!(h.handler.interrupt.status(), 0);
        h.request(VIRTIO_BLK_T_FLUSH, 0, None);
        assert_eq!(h.handler.interrupt.status(), INT_USED_RING);
        assert_eq!(h.handler.interrupt.eventfd().read().unwrap(), 1);
    }
}
