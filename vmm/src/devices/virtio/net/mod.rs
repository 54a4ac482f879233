//! virtio-net (virtio 1.2, section 5.1) backed by a Linux tap device.
//!
//! Two queues, receive (0) and transmit (1), served by a worker thread
//! started on activation. No offloads are offered, so each buffer holds a
//! 12-byte `virtio_net_hdr_v1` and one plain Ethernet frame: on transmit the
//! header is skipped, on receive it is all zeros but `num_buffers` = 1. The
//! tap is opened without packet information or a vnet header, so one read or
//! write on it is exactly one frame. Chains come from the guest: each is
//! checked for direction, length and guest memory before a byte moves, and a
//! bad one is returned unused so that the queue keeps moving.
//!
//! Modules: [`mac`] (the guest card's address), [`tap`] (opening or
//! adopting the tap), [`frames`] (frames in and out of guest chains),
//! `worker` (the worker thread's handler), `rx` and `tx` (its two
//! directions).

mod frames;
#[cfg(test)]
mod harness;
mod mac;
mod rx;
mod tap;
mod tx;
mod worker;

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tracing::debug;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

pub use mac::MacAddr;
pub use tap::{validate_tap_name, NetBackend, Tap};

use super::worker::{stop_slot, Worker};
use super::{
    read_config_space, ActivateContext, ActivateError, VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1,
};
use tap::TUN_PATH;
use worker::{Handler, QueueWorker, TOKEN_RX_QUEUE, TOKEN_TX_QUEUE};

const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`: with VIRTIO_F_VERSION_1 the header always
/// carries `num_buffers`, in its last two bytes.
pub const NET_HDR_LEN: usize = 12;
/// The largest frame either way: 64 KiB of payload behind a 14-byte
/// Ethernet header.
pub const MAX_FRAME_LEN: usize = 65550;
/// mac (6 bytes), status (u16), max_virtqueue_pairs (u16, not offered),
/// mtu (u16): the fields our features make valid.
const CONFIG_LEN: usize = 12;
const CONFIG_MTU: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "invalid MAC address {0:?}: expected 6 colon-separated hex octets, like 02:00:00:00:00:01"
    )]
    BadMac(String),
    #[error("MAC address {0:?} is not a unicast address: a network card needs one")]
    NotUnicastMac(String),
    #[error("invalid tap name {0:?}: 1 to 15 bytes without '/', ':' or whitespace")]
    BadTapName(String),
    #[error("cannot open {TUN_PATH} for tap {name}: {source}")]
    OpenTun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach to tap {name} (TUNSETIFF): {source}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap fd {fd} is not open: {source}")]
    FdNotOpen {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is not an attached tun/tap device (TUNGETIFF): {source}")]
    NotTun {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is the tun device {name}, not a tap")]
    NotTap { fd: RawFd, name: String },
    #[error("fd {fd} (tap {name}) must be opened with IFF_NO_PI and without IFF_VNET_HDR")]
    TapFlags { fd: RawFd, name: String },
    #[error("cannot make tap fd {fd} non-blocking and close-on-exec: {source}")]
    FdFlags {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
}

/// A virtio-net device on a tap.
pub struct Net {
    tap: Tap,
    config: [u8; CONFIG_LEN],
    features: u64,
    worker: Option<Worker<()>>,
}

impl Net {
    /// A device whose guest card has address `mac` and whose link is up;
    /// with `mtu`, the device offers VIRTIO_NET_F_MTU, and a Linux guest
    /// above 1500 bytes then posts receive chains of whole pages, which
    /// [`frames::write_rx_chain`] fills across.
    pub fn new(tap: Tap, mac: MacAddr, mtu: Option<u16>) -> Net {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac.octets());
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        let mut features = VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS;
        if let Some(mtu) = mtu {
            config[CONFIG_MTU..CONFIG_MTU + 2].copy_from_slice(&mtu.to_le_bytes());
            features |= 1 << VIRTIO_NET_F_MTU;
        }
        Net {
            tap,
            config,
            features,
            worker: None,
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn thread_kind(&self) -> crate::seccomp::ThreadKind {
        crate::seccomp::ThreadKind::Net
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only legacy drivers write the MAC here; modern ones cannot.
        debug!(
            offset,
            len = data.len(),
            "virtio-net config space is read-only; write ignored"
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Invalid(
                "virtio-net is already active".into(),
            ));
        }
        let ActivateContext {
            mem,
            queues,
            queue_events,
            interrupt,
            thread,
            ..
        } = ctx;
        let (Ok([rx, tx]), Ok([rx_evt, tx_evt])) = (
            <[Queue; 2]>::try_from(queues),
            <[EventFd; 2]>::try_from(queue_events),
        ) else {
            return Err(ActivateError::Invalid(
                "virtio-net needs its receive and transmit queues".into(),
            ));
        };
        if !rx.ready() || !tx.ready() {
            return Err(ActivateError::Invalid(
                "the virtio-net receive and transmit queues are not both ready".into(),
            ));
        }
        let tap = self.tap.file.try_clone().map_err(ActivateError::Worker)?;
        let handler = Handler::new(mem, rx, tx, tap, interrupt).map_err(ActivateError::Worker)?;
        let fds = [
            (rx_evt.as_raw_fd(), EventSet::IN, TOKEN_RX_QUEUE),
            (tx_evt.as_raw_fd(), EventSet::IN, TOKEN_TX_QUEUE),
        ];
        let worker = QueueWorker {
            handler,
            rx_evt,
            tx_evt,
        };
        self.worker =
            Some(Worker::spawn(&thread, worker, &fds).map_err(|e| ActivateError::Worker(e.error))?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // The tap stays open here, so the device can be activated again.
        stop_slot(&mut self.worker)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        stop_slot(&mut self.worker);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::harness::*;
    use super::*;
    use crate::devices::virtio::test_driver::{self, DriverQueue};
    use crate::devices::virtio::{Interrupt, INT_USED_RING};

    #[test]
    fn describes_itself() {
        let (tap, _host) = tap_pair();
        let dev = net(tap);
        assert_eq!(dev.device_type(), TYPE_NET);
        assert_eq!(dev.queue_max_sizes(), &[256, 256]);
        assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | 1 << 5 | 1 << 16);

        let mut mac = [0u8; 6];
        dev.read_config(0, &mut mac);
        assert_eq!(mac, MAC);
        let mut status = [0u8; 2];
        dev.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), 1);
        let mut all = [0xffu8; 12];
        dev.read_config(0, &mut all);
        assert_eq!(all, [0x02, 0xab, 0xcd, 0, 1, 2, 1, 0, 0, 0, 0, 0]);
        for offset in [CONFIG_LEN as u64, 0x1000, u64::MAX] {
            let mut b = [0xffu8; 4];
            dev.read_config(offset, &mut b);
            assert_eq!(b, [0; 4]);
        }
        let mut dev = dev;
        dev.write_config(0, &[0; 6]);
        dev.read_config(0, &mut mac);
        assert_eq!(mac, MAC, "the MAC is read-only");
    }

    #[test]
    fn offers_its_mtu_when_given_one() {
        let (tap, _host) = tap_pair();
        let dev = Net::new(tap, MacAddr(MAC), Some(9000));
        assert_eq!(
            dev.features(),
            VIRTIO_F_VERSION_1 | 1 << 3 | 1 << 5 | 1 << 16
        );
        let mut mtu = [0u8; 2];
        dev.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 9000);
    }

    #[test]
    fn worker_serves_both_queues_until_reset() {
        let (tap, mut host) = tap_pair();
        let mut dev = net(tap);
        let mem = guest_memory();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let kicks = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        let activate = |dev: &mut Net| {
            let (rx, rxq) = DriverQueue::new(&mem, RX_RING, QSIZE, Some(RX_RING + USED_OFFSET));
            let (tx, txq) = DriverQueue::new(&mem, TX_RING, QSIZE, Some(TX_RING + USED_OFFSET));
            dev.activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![rxq, txq],
                queue_events: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
                interrupt: interrupt.clone(),
                acked_features: dev.features(),
                thread: test_driver::thread(),
            })
            .map(|()| (rx, tx))
        };
        let (mut rx, mut tx) = activate(&mut dev).unwrap();
        assert!(matches!(activate(&mut dev), Err(ActivateError::Invalid(_))));

        // A frame from the host with no buffer yet: it waits for the kick.
        let f = frame(300, 10);
        assert_eq!(host.write(&f).unwrap(), f.len());
        thread::sleep(Duration::from_millis(20));
        assert_eq!(rx.next_used(&mem), None);
        rx.add(&mem, &[(BUF, 4096, W)]);
        kicks[0].write(1).unwrap();
        wait_for("receive", || interrupt.status() & INT_USED_RING != 0);
        let (_, len) = rx.next_used(&mem).unwrap();
        assert_eq!(len as usize, NET_HDR_LEN + f.len());
        let mut got = vec![0u8; f.len()];
        mem.read_slice(&mut got, GuestAddress(BUF + NET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(got, f);

        // Watched again: the next frame needs no kick.
        rx.add(&mem, &[(BUF2, 4096, W)]);
        kicks[0].write(1).unwrap();
        thread::sleep(Duration::from_millis(20));
        assert_eq!(host.write(&f).unwrap(), f.len());
        wait_for("second receive", || rx.next_used(&mem).is_some());

        let out = frame(80, 11);
        let mut bytes = vec![0u8; NET_HDR_LEN];
        bytes.extend_from_slice(&out);
        mem.write_slice(&bytes, GuestAddress(BUF3)).unwrap();
        tx.add(&mem, &[(BUF3, bytes.len() as u32, R)]);
        kicks[1].write(1).unwrap();
        wait_for("transmit", || tx.next_used(&mem).is_some());
        assert_eq!(host_recv(&mut host), Some(out));

        assert!(dev.reset());
        assert!(dev.worker.is_none());
        assert!(dev.reset(), "a second reset has nothing to stop");
        // The tap survives a reset: activatable again, and it still works.
        let (_, mut tx) = activate(&mut dev).unwrap();
        tx.add(&mem, &[(BUF3, bytes.len() as u32, R)]);
        kicks[1].write(1).unwrap();
        wait_for("transmit after reset", || tx.next_used(&mem).is_some());
        assert_eq!(host_recv(&mut host).map(|b| b.len()), Some(80));
        drop(dev);

        let (tap, _host) = tap_pair();
        let mut one_queue = net(tap);
        let (_, q) = DriverQueue::new(&mem, RX_RING, QSIZE, Some(RX_RING + USED_OFFSET));
        let e = one_queue.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![q],
            queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
            interrupt: interrupt.clone(),
            acked_features: 0,
            thread: test_driver::thread(),
        });
        assert!(matches!(e, Err(ActivateError::Invalid(_))));
    }
}
