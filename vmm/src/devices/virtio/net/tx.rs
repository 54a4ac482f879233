//! The transmit side: frames from the guest's transmit chains written to
//! the tap, a batch per wakeup; what the tap does not take is dropped.

use std::fs::File;
use std::io::{self, Write};

use tracing::{error, warn};

use super::frames::read_tx_chain;
use super::worker::{Handler, Stats, WarnLimit};
use super::{NET_HDR_LEN, QUEUE_SIZE};
use crate::devices::virtio::ring::{drain, RingNames};

/// Transmit chains handled per wakeup, so that a guest flooding the
/// queue cannot delay a reset or reception.
const TX_BATCH: usize = QUEUE_SIZE as usize;
/// What the transmit queue's messages call it.
const TX_NAMES: RingNames = RingNames {
    device: "virtio-net",
    queue: "virtio-net transmit",
    chain: "virtio-net transmit chain",
};

impl Handler {
    /// Sends what the driver queued to the tap, up to a batch; true when
    /// the batch ended it with chains left.
    pub(super) fn process_tx(&mut self) -> bool {
        let mem = &self.mem;
        drain(
            &mut self.tx,
            mem,
            &self.interrupt,
            &TX_NAMES,
            TX_BATCH,
            |chain| {
                let head = chain.head_index();
                match read_tx_chain(mem, chain, &mut self.tx_buf) {
                    Ok(len) => send_frame(
                        &self.tap,
                        &self.tx_buf[NET_HDR_LEN..NET_HDR_LEN + len],
                        &mut self.stats,
                        &mut self.drop_warnings,
                        &mut self.tx_error_logged,
                    ),
                    Err(e) => {
                        self.stats.tx_dropped += 1;
                        if let Some(suppressed) = self.drop_warnings.allow() {
                            warn!(
                                head,
                                error = %e,
                                tx_dropped = self.stats.tx_dropped,
                                suppressed,
                                "malformed virtio-net transmit chain dropped"
                            );
                        }
                    }
                }
                0
            },
        )
    }
}

/// Writes one frame to the tap; a frame the tap does not take is dropped,
/// as a network card drops what the wire cannot carry.
fn send_frame(
    mut tap: &File,
    frame: &[u8],
    stats: &mut Stats,
    warnings: &mut WarnLimit,
    error_logged: &mut bool,
) {
    let Err(e) = tap.write(frame) else {
        return;
    };
    stats.tx_dropped += 1;
    if e.kind() == io::ErrorKind::WouldBlock {
        if let Some(suppressed) = warnings.allow() {
            warn!(
                tx_dropped = stats.tx_dropped,
                suppressed, "the tap's queue is full; virtio-net frame dropped"
            );
        }
    } else if !std::mem::replace(error_logged, true) {
        error!(tap_error = %e, "cannot write to the tap; frames are dropped");
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::net::harness::*;
    use crate::devices::virtio::net::rx::TapState;
    use crate::devices::virtio::net::MAX_FRAME_LEN;
    use crate::devices::virtio::INT_USED_RING;

    #[test]
    fn transmits_a_frame_split_over_descriptors() {
        let mut h = Harness::new();
        let f = frame(1514, 1);
        h.put_tx(&f);
        // Header alone, then the frame in two pieces.
        let (_, len) = h.transmit(&[
            (BUF, NET_HDR_LEN as u32, R),
            (BUF + NET_HDR_LEN as u64, 1000, R),
            (BUF + NET_HDR_LEN as u64 + 1000, 514, R),
        ]);
        assert_eq!(len, 0);
        assert_eq!(host_recv(&mut h.host), Some(f.clone()));
        // Header and the start of the frame in one descriptor, the rest
        // elsewhere.
        h.mem.write_slice(&f[20..], GuestAddress(BUF2)).unwrap();
        h.transmit(&[(BUF, NET_HDR_LEN as u32 + 20, R), (BUF2, 1494, R)]);
        assert_eq!(host_recv(&mut h.host), Some(f));
        // The largest frame.
        let big = frame(MAX_FRAME_LEN, 2);
        h.put_tx(&big);
        h.transmit(&[(BUF, (NET_HDR_LEN + MAX_FRAME_LEN) as u32, R)]);
        assert_eq!(host_recv(&mut h.host), Some(big));
        assert_eq!(host_recv(&mut h.host), None);
        assert_eq!(h.handler.stats.tx_dropped, 0);
    }

    #[test]
    fn transmit_drains_the_queue_and_signals_once() {
        let mut h = Harness::new();
        let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(64 + i, i as u8)).collect();
        for (i, f) in frames.iter().enumerate() {
            let addr = BUF + 0x1_0000 * i as u64;
            let mut bytes = vec![0u8; NET_HDR_LEN];
            bytes.extend_from_slice(f);
            h.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
            h.tx.add(&h.mem, &[(addr, bytes.len() as u32, R)]);
        }
        h.handler.process_tx();
        for f in &frames {
            assert_eq!(host_recv(&mut h.host).as_ref(), Some(f));
            assert!(h.tx.next_used(&h.mem).is_some());
        }
        assert_eq!(h.handler.interrupt.status(), INT_USED_RING);
        assert_eq!(h.handler.interrupt.eventfd().read().unwrap(), 1);
        // Nothing available: no interrupt.
        h.handler.interrupt.ack(INT_USED_RING);
        h.handler.process_tx();
        assert_eq!(h.handler.interrupt.status(), 0);
    }

    #[test]
    fn hostile_transmit_chains_are_consumed() {
        let mut h = Harness::new();
        let f = frame(100, 3);
        h.put_tx(&f);
        let hdr = NET_HDR_LEN as u32;
        let mut dropped = 0;
        let mut check = |h: &mut Harness, (_, len): (u16, u32)| {
            dropped += 1;
            assert_eq!(len, 0);
            assert_eq!(h.handler.stats.tx_dropped, dropped);
            assert_eq!(host_recv(&mut h.host), None, "a bad chain reached the tap");
        };
        // Too short: less than the header, or no Ethernet header after it.
        let r = h.transmit(&[(BUF, hdr - 1, R)]);
        check(&mut h, r);
        let r = h.transmit(&[(BUF, hdr + 13, R)]);
        check(&mut h, r);
        let r = h.transmit(&[(BUF, 0, R)]);
        check(&mut h, r);
        // A device-writable descriptor.
        let r = h.transmit(&[(BUF, hdr, R), (BUF + u64::from(hdr), 100, W)]);
        check(&mut h, r);
        let r = h.transmit(&[(BUF, hdr + 100, W)]);
        check(&mut h, r);
        // Outside guest memory: past its end, straddling it, wrapping.
        for addr in [MEM_SIZE, MEM_SIZE - 50, u64::MAX - 16] {
            let r = h.transmit(&[(BUF, hdr, R), (addr, 100, R)]);
            check(&mut h, r);
        }
        // Longer than header plus the largest frame, in one descriptor or
        // many.
        let r = h.transmit(&[(BUF, hdr + MAX_FRAME_LEN as u32 + 1, R)]);
        check(&mut h, r);
        let r = h.transmit(&[(BUF, u32::MAX, R)]);
        check(&mut h, r);
        let r = h.transmit(&[
            (BUF, hdr, R),
            (BUF, 40_000, R),
            (BUF, 40_000, R),
            (BUF, 10, R),
        ]);
        check(&mut h, r);
        // A loop: 0 -> 1 -> 0 -> ...
        let r = h.transmit_raw(&[
            raw(BUF, hdr, VRING_DESC_F_NEXT, 1),
            raw(BUF + u64::from(hdr), 100, VRING_DESC_F_NEXT, 0),
        ]);
        check(&mut h, r);
        // A next index outside the descriptor table.
        let r = h.transmit_raw(&[raw(BUF, hdr + 100, VRING_DESC_F_NEXT, 200)]);
        check(&mut h, r);
        // An indirect table outside guest memory.
        let r = h.transmit_raw(&[raw(MEM_SIZE, 64, VRING_DESC_F_INDIRECT, 0)]);
        check(&mut h, r);

        h.assert_tx_works();
    }

    #[test]
    fn bad_available_ring_entries_do_not_stop_the_queue() {
        let mut h = Harness::new();
        // A head index beyond the queue size: it cannot even be returned.
        h.tx.publish(&h.mem, 100);
        h.handler.process_tx();
        assert_eq!(h.tx.next_used(&h.mem), None);
        assert_eq!(h.handler.stats.tx_dropped, 1);
        h.assert_tx_works();

        // An index claiming more chains than the queue holds is refused
        // and the handler returns instead of spinning.
        h.tx.set_avail_idx(&h.mem, 1000);
        h.handler.process_tx();
        h.rx.set_avail_idx(&h.mem, 1000);
        h.host_send(&frame(60, 0));
        h.handler.process_rx();
        assert_eq!(h.handler.tap_state, TapState::Paused);
    }

    #[test]
    fn a_full_tap_drops_frames_and_the_queue_goes_on() {
        let mut h = Harness::new();
        let f = frame(1000, 4);
        h.put_tx(&f);
        let len = (NET_HDR_LEN + f.len()) as u32;
        // The host end reads nothing, so its queue fills up.
        for _ in 0..2000 {
            if h.handler.stats.tx_dropped > 0 {
                break;
            }
            for _ in 0..QSIZE {
                h.tx.add(&h.mem, &[(BUF, len, R)]);
            }
            h.handler.process_tx();
            while h.tx.next_used(&h.mem).is_some() {}
        }
        assert!(h.handler.stats.tx_dropped > 0, "the tap never filled up");
        assert!(!h.handler.tx_error_logged, "a full queue is not an error");
        while host_recv(&mut h.host).is_some() {}
        h.assert_tx_works();
    }
}
