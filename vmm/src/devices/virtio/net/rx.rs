//! The receive side: frames read from the tap into the guest's receive
//! buffers. While no buffer is free the frame in hand waits and the tap is
//! left out of the epoll set, so that the host cannot make the worker spin.

use std::io::{self, Read};
use std::os::fd::AsRawFd;

use tracing::{error, warn};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::frames::write_rx_chain;
use super::worker::{Handler, TOKEN_TAP};
use super::{NET_HDR_LEN, QUEUE_SIZE};
use crate::devices::virtio::ring::{next_chain, return_chain, signal_used};

/// Frames received per pass before the worker looks at its other events,
/// so that a flood from the host cannot delay a reset or transmission.
const RX_BATCH: usize = QUEUE_SIZE as usize;
/// What the receive queue's messages call it.
const RX_DEVICE: &str = "virtio-net";

/// Whether the worker reads the tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TapState {
    /// In the epoll set: readable means frames to deliver.
    Watched,
    /// Out of the epoll set while a frame waits for a receive buffer; the
    /// guest's next rx notification resumes it.
    Paused,
    /// Out of the epoll set for good: the tap failed or was closed.
    Failed,
}

impl Handler {
    /// Moves frames from the tap into receive buffers: the pending one
    /// first, then more until the tap is empty, the buffers run out (the
    /// frame in hand waits and the tap is no longer watched) or a batch is
    /// done.
    pub(super) fn process_rx(&mut self) {
        let mut used = false;
        let mut next_state = TapState::Watched;
        for _ in 0..RX_BATCH {
            let len = match self.rx_pending {
                Some(len) => len,
                None if self.tap_state == TapState::Failed => break,
                None => match self.read_frame() {
                    Some(len) => len,
                    None => break,
                },
            };
            let mem = &self.mem;
            let Some(chain) = next_chain(&mut self.rx, mem, RX_DEVICE) else {
                self.rx_pending = Some(len);
                next_state = TapState::Paused;
                break;
            };
            self.rx_pending = None;
            let head = chain.head_index();
            let used_len = match write_rx_chain(mem, chain, &self.rx_buf[..NET_HDR_LEN + len]) {
                Ok(n) => n,
                Err(e) => {
                    self.stats.rx_dropped += 1;
                    if let Some(suppressed) = self.drop_warnings.allow() {
                        warn!(
                            head,
                            error = %e,
                            rx_dropped = self.stats.rx_dropped,
                            suppressed,
                            "virtio-net receive buffer unusable; frame dropped"
                        );
                    }
                    0
                }
            };
            return_chain(
                &mut self.rx,
                mem,
                head,
                used_len,
                "virtio-net receive buffer",
            );
            used = true;
        }
        if self.tap_state != TapState::Failed {
            self.set_tap_state(next_state);
        }
        if used {
            signal_used(&mut self.rx, &self.mem, &self.interrupt, RX_DEVICE);
        }
    }

    /// Reads one frame into `rx_buf`; None when the tap has none now or
    /// cannot be read any more.
    fn read_frame(&mut self) -> Option<usize> {
        loop {
            match self.tap.read(&mut self.rx_buf[NET_HDR_LEN..]) {
                Ok(0) => {
                    self.tap_failed("the tap was closed");
                    return None;
                }
                Ok(len) => return Some(len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error!(tap_error = %e, "cannot read from the tap; the guest receives no more frames");
                    self.set_tap_state(TapState::Failed);
                    return None;
                }
            }
        }
    }

    pub(super) fn tap_failed(&mut self, why: &str) {
        if self.tap_state != TapState::Failed {
            error!(why, "the guest receives no more frames");
            self.set_tap_state(TapState::Failed);
        }
    }

    /// Adds the tap to the epoll set or takes it out: level-triggered, a
    /// readable tap left in the set with nowhere to put its frames would
    /// keep waking the worker.
    fn set_tap_state(&mut self, state: TapState) {
        let was_watched = self.tap_state == TapState::Watched;
        let watch = state == TapState::Watched;
        let result = match (was_watched, watch) {
            (false, true) => self.epoll.ctl(
                ControlOperation::Add,
                self.tap.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_TAP),
            ),
            (true, false) => self.epoll.ctl(
                ControlOperation::Delete,
                self.tap.as_raw_fd(),
                EpollEvent::default(),
            ),
            _ => Ok(()),
        };
        match result {
            Ok(()) => self.tap_state = state,
            Err(e) if watch => {
                error!(error = %e, "cannot watch the tap; the guest receives no more frames");
                self.tap_state = TapState::Failed;
            }
            // Still in the set: keep saying so, and try again next time.
            Err(e) => error!(error = %e, "cannot stop watching the tap"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::epoll::EpollEvent;

    use super::*;
    use crate::devices::virtio::net::harness::*;
    use crate::devices::virtio::INT_USED_RING;

    #[test]
    fn a_jumbo_frame_fills_a_chain_of_pages() {
        // As Linux posts receive buffers for an MTU above 1500 without
        // mergeable buffers: the header, then whole pages.
        let mut h = Harness::new();
        let head = h.rx.add(
            &h.mem,
            &[
                (BUF, NET_HDR_LEN as u32, W),
                (BUF2, 4096, W),
                (BUF2 + 4096, 4096, W),
                (BUF3, 4096, W),
            ],
        );
        let f = frame(9014, 9);
        h.host_send(&f);
        h.handler.process_rx();
        let (id, len) = h.rx.next_used(&h.mem).unwrap();
        assert_eq!((id, len as usize), (head, NET_HDR_LEN + f.len()));
        let mut got = h.guest_bytes(BUF2, 8192);
        got.extend(h.guest_bytes(BUF3, 9014 - 8192));
        assert_eq!(got, f);

        // And one that does not fit is dropped, the chain given back.
        let head =
            h.rx.add(&h.mem, &[(BUF, NET_HDR_LEN as u32, W), (BUF2, 4096, W)]);
        h.host_send(&f);
        h.handler.process_rx();
        assert_eq!(h.rx.next_used(&h.mem), Some((head, 0)));
    }

    #[test]
    fn receives_a_frame_with_a_header() {
        let mut h = Harness::new();
        // The driver's buffer: header alone, then the rest split in two.
        let head = h.rx.add(
            &h.mem,
            &[
                (BUF, NET_HDR_LEN as u32, W),
                (BUF2, 1000, W),
                (BUF3, 1000, W),
            ],
        );
        h.mem.write_slice(&[0xee; 64], GuestAddress(BUF)).unwrap();
        let f = frame(1514, 5);
        h.host_send(&f);
        h.handler.process_rx();
        let (id, len) = h.rx.next_used(&h.mem).unwrap();
        assert_eq!((id, len as usize), (head, NET_HDR_LEN + f.len()));
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[10] = 1;
        assert_eq!(h.guest_bytes(BUF, NET_HDR_LEN), hdr);
        let mut got = h.guest_bytes(BUF2, 1000);
        got.extend(h.guest_bytes(BUF3, 514));
        assert_eq!(got, f);
        assert_eq!(h.handler.interrupt.status(), INT_USED_RING);
        assert_eq!(h.handler.tap_state, TapState::Watched);

        // Header and frame in one buffer; several frames in one pass.
        let heads: Vec<u16> = (0..3)
            .map(|i| h.rx.add(&h.mem, &[(BUF + 0x1_0000 * i, 2000, W)]))
            .collect();
        let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(60 + i, i as u8)).collect();
        for f in &frames {
            h.host_send(f);
        }
        h.handler.process_rx();
        for (i, f) in frames.iter().enumerate() {
            let (id, len) = h.rx.next_used(&h.mem).unwrap();
            assert_eq!((id, len as usize), (heads[i], NET_HDR_LEN + f.len()));
            let got = h.guest_bytes(BUF + 0x1_0000 * i as u64, NET_HDR_LEN + f.len());
            assert_eq!(got[..NET_HDR_LEN], hdr);
            assert_eq!(&got[NET_HDR_LEN..], &f[..]);
        }
        assert_eq!(h.handler.tap_state, TapState::Watched);
    }

    #[test]
    fn a_frame_waits_for_a_receive_buffer() {
        let mut h = Harness::new();
        let first = frame(100, 6);
        let second = frame(200, 7);
        h.host_send(&first);
        h.host_send(&second);
        h.handler.process_rx();
        assert_eq!(h.handler.tap_state, TapState::Paused);
        assert_eq!(h.handler.rx_pending, Some(first.len()));
        assert_eq!(h.handler.interrupt.status(), 0);
        // Out of the epoll set: the worker would not wake for the tap.
        let mut events = [EpollEvent::default(); 2];
        assert_eq!(h.handler.epoll.wait(0, &mut events).unwrap(), 0);

        // The driver adds one buffer: the pending frame goes first, the next
        // one waits again.
        h.rx.add(&h.mem, &[(BUF, 4096, W)]);
        h.handler.process_rx();
        let (_, len) = h.rx.next_used(&h.mem).unwrap();
        assert_eq!(len as usize, NET_HDR_LEN + first.len());
        assert_eq!(h.guest_bytes(BUF + NET_HDR_LEN as u64, first.len()), first);
        assert_eq!(h.handler.tap_state, TapState::Paused);
        assert_eq!(h.handler.rx_pending, Some(second.len()));

        h.rx.add(&h.mem, &[(BUF2, 4096, W)]);
        h.rx.add(&h.mem, &[(BUF3, 4096, W)]);
        h.handler.process_rx();
        let (_, len) = h.rx.next_used(&h.mem).unwrap();
        assert_eq!(len as usize, NET_HDR_LEN + second.len());
        assert_eq!(
            h.guest_bytes(BUF2 + NET_HDR_LEN as u64, second.len()),
            second
        );
        // Buffers left and the tap empty: watched again.
        assert_eq!(h.handler.tap_state, TapState::Watched);
        assert_eq!(h.handler.rx_pending, None);
        assert_eq!(h.rx.next_used(&h.mem), None);
        h.host_send(&first);
        assert_eq!(h.handler.epoll.wait(0, &mut events).unwrap(), 1);
        assert_eq!(events[0].data(), TOKEN_TAP);
    }

    #[test]
    fn unusable_receive_buffers_drop_the_frame() {
        let mut h = Harness::new();
        let f = frame(1000, 8);
        let hdr = NET_HDR_LEN as u32;
        let mut dropped = 0;
        let mut check = |h: &mut Harness, descs: &[Descriptor]| {
            let head = h.rx.add_raw(&h.mem, descs);
            h.host_send(&f);
            h.handler.process_rx();
            dropped += 1;
            assert_eq!(h.rx.next_used(&h.mem), Some((head, 0)));
            assert_eq!(h.handler.stats.rx_dropped, dropped);
            assert_eq!(h.handler.rx_pending, None);
        };
        let w = VRING_DESC_F_WRITE;
        // Too small by one byte, or for even the header.
        check(&mut h, &[raw(BUF, hdr + 999, w, 0)]);
        check(&mut h, &[raw(BUF, 4, w, 0)]);
        // A device-readable descriptor.
        check(&mut h, &[raw(BUF, 4096, 0, 0)]);
        check(
            &mut h,
            &[
                raw(BUF, hdr, w | VRING_DESC_F_NEXT, 1),
                raw(BUF2, 4096, 0, 0),
            ],
        );
        // Outside guest memory.
        check(&mut h, &[raw(MEM_SIZE - 100, 4096, w, 0)]);
        check(&mut h, &[raw(u64::MAX - 100, 4096, w, 0)]);
        // A loop, and a next index outside the table.
        check(
            &mut h,
            &[
                raw(BUF, hdr, w | VRING_DESC_F_NEXT, 1),
                raw(BUF2, 16, w | VRING_DESC_F_NEXT, 0),
            ],
        );
        check(&mut h, &[raw(BUF, 4096, w | VRING_DESC_F_NEXT, 300)]);

        // A good buffer gets the next frame.
        h.rx.add(&h.mem, &[(BUF3, 4096, W)]);
        h.host_send(&f);
        h.handler.process_rx();
        let (_, len) = h.rx.next_used(&h.mem).unwrap();
        assert_eq!(len, hdr + 1000);
        assert_eq!(h.guest_bytes(BUF3 + u64::from(hdr), f.len()), f);
    }

    #[test]
    fn a_closed_tap_stops_receive_only() {
        let mut h = Harness::new();
        h.rx.add(&h.mem, &[(BUF2, 4096, W)]);
        let f = frame(60, 0);
        h.put_tx(&f);
        drop(std::mem::replace(
            &mut h.host,
            File::open("/dev/null").unwrap(),
        ));
        h.handler.process_rx();
        assert_eq!(h.handler.tap_state, TapState::Failed);
        let mut events = [EpollEvent::default(); 2];
        assert_eq!(h.handler.epoll.wait(0, &mut events).unwrap(), 0);
        // Nothing more is read, even when the driver adds buffers.
        h.rx.add(&h.mem, &[(BUF3, 4096, W)]);
        h.handler.process_rx();
        assert_eq!(h.rx.next_used(&h.mem), None);
        // Transmission still returns chains; the frames are dropped.
        for _ in 0..3 {
            let (_, len) = h.transmit(&[(BUF, (NET_HDR_LEN + f.len()) as u32, R)]);
            assert_eq!(len, 0);
        }
        assert_eq!(h.handler.stats.tx_dropped, 3);
        assert!(h.handler.tx_error_logged);
    }
}
