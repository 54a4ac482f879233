//! The rings of a queue that a device serves itself (block, net): taking
//! the chains the driver made available, handing them back used, and
//! interrupting the guest after a pass unless it asked not to be. A ring's
//! indices come from the guest too: a bad one ends the pass, never the
//! queue.

use tracing::debug;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::Interrupt;
use crate::memory::GuestMemory;

/// What a queue's debug messages call it.
pub struct RingNames {
    /// The device, as in "virtio-blk available ring is unusable".
    pub device: &'static str,
    /// The queue, as in "cannot disable virtio-net transmit notifications".
    pub queue: &'static str,
    /// A chain handed back, as in "cannot return a virtio-net transmit
    /// chain".
    pub chain: &'static str,
}

/// The next chain the driver made available, if any. A head index out of
/// the table still comes back, as a chain that yields no descriptor.
pub fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
    device: &str,
) -> Option<DescriptorChain<&'m GuestMemory>> {
    match queue.iter(mem) {
        Ok(mut chains) => chains.next(),
        Err(e) => {
            debug!(error = %e, "{device} available ring is unusable");
            None
        }
    }
}

/// Puts chain `head` on the used ring with `len` bytes written into it.
pub fn return_chain(queue: &mut Queue, mem: &GuestMemory, head: u16, len: u32, what: &str) {
    if let Err(e) = queue.add_used(mem, head, len) {
        debug!(head, error = %e, "cannot return a {what}");
    }
}

/// Interrupts the guest for a queue that used buffers, unless it asked
/// not to be.
pub fn signal_used(queue: &mut Queue, mem: &GuestMemory, interrupt: &Interrupt, device: &str) {
    match queue.needs_notification(mem) {
        Ok(true) => interrupt.signal_used_queue(),
        Ok(false) => {}
        Err(e) => {
            debug!(error = %e, "cannot read the {device} interrupt suppression flags");
            interrupt.signal_used_queue();
        }
    }
}

/// Serves what the driver made available, each chain handed to `serve`,
/// which returns the bytes it wrote into it; with notifications off, until
/// the ring stays empty or `budget` chains are served (usize::MAX for no
/// budget). Then interrupts the guest if it wants to know. True when the
/// budget ended the pass.
pub fn drain(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &Interrupt,
    names: &RingNames,
    budget: usize,
    mut serve: impl FnMut(DescriptorChain<&GuestMemory>) -> u32,
) -> bool {
    let mut total = 0;
    let mut budget_spent = false;
    // Rounds in a row that found nothing although the ring said there was
    // more: a driver that moves avail->idx past real entries must not
    // keep this thread spinning.
    let mut empty_rounds = 0;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            debug!(error = %e, "cannot disable {} notifications", names.queue);
        }
        let mut served = 0;
        while total < budget {
            let Some(chain) = next_chain(queue, mem, names.device) else {
                break;
            };
            total += 1;
            let head = chain.head_index();
            let len = serve(chain);
            return_chain(queue, mem, head, len, names.chain);
            served += 1;
        }
        if total == budget {
            // Perhaps with nothing left: one wakeup too many at worst.
            budget_spent = true;
            break;
        }
        empty_rounds = if served == 0 { empty_rounds + 1 } else { 0 };
        match queue.enable_notification(mem) {
            Ok(true) if empty_rounds < 2 => continue,
            Ok(_) => break,
            Err(e) => {
                debug!(error = %e, "cannot enable {} notifications", names.queue);
                break;
            }
        }
    }
    if total > 0 {
        signal_used(queue, mem, interrupt, names.device);
    }
    budget_spent
}
