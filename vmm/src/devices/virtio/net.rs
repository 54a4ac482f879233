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

use std::ffi::c_int;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryError;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{last_descriptor, Buffers, Incomplete, OneWayError, OutsideMemory};
use super::ring::{drain, next_chain, return_chain, signal_used, RingNames};
use super::worker::{stop_slot, EventHandler, Worker};
use super::{
    read_config_space, ActivateContext, ActivateError, Interrupt, VirtioDevice, TYPE_NET,
    VIRTIO_F_VERSION_1,
};
use crate::config::NetBackend;
use crate::memory::GuestMemory;

const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`: with VIRTIO_F_VERSION_1 the header always
/// carries `num_buffers`, in its last two bytes.
pub const NET_HDR_LEN: usize = 12;
/// The largest frame either way: 64 KiB of payload behind a 14-byte
/// Ethernet header.
pub const MAX_FRAME_LEN: usize = 65550;
/// Destination, source and EtherType: no shorter frame is valid Ethernet,
/// and the tap refuses it.
const ETH_HLEN: usize = 14;
/// mac (6 bytes), status (u16), max_virtqueue_pairs (u16, not offered),
/// mtu (u16): the fields our features make valid.
const CONFIG_LEN: usize = 12;
const CONFIG_MTU: usize = 10;
const TUN_PATH: &str = "/dev/net/tun";
/// Frames received per pass before the worker looks at its other events,
/// so that a flood from the host cannot delay a reset or transmission.
const RX_BATCH: usize = QUEUE_SIZE as usize;
/// Transmit chains handled per wakeup, for the same reason.
const TX_BATCH: usize = QUEUE_SIZE as usize;
/// At most one warning about dropped frames per interval: a guest that
/// floods the queues with bad chains must not flood the log as well.
const WARN_INTERVAL: Duration = Duration::from_secs(5);

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

/// An Ethernet address for the guest's card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = NetError;
    /// Exactly `xx:xx:xx:xx:xx:xx`, hex digits of either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetError::BadMac(s.to_owned());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            // from_str_radix alone would take "+f" or "f".
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        // The guest driver would replace such an address with a random one.
        if octets[0] & 1 != 0 || octets == [0; 6] {
            return Err(NetError::NotUnicastMac(s.to_owned()));
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Checks an interface name as Linux does (dev_valid_name), so that a bad
/// one is refused before any ioctl.
pub fn validate_tap_name(name: &str) -> Result<(), NetError> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(NetError::BadTapName(name.to_owned()))
    }
}

/// A tap device attached with IFF_TAP | IFF_NO_PI, non-blocking.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the tap `backend` names, or adopts the inherited fd it names.
    pub fn open(backend: &NetBackend) -> Result<Tap, NetError> {
        match backend {
            NetBackend::Tap(name) => Self::open_named(name),
            NetBackend::Fd(fd) => Self::adopt(*fd),
        }
    }

    /// The interface name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attaches to the tap `name` in this network namespace, creating it
    /// (non-persistent) if it does not exist.
    fn open_named(name: &str) -> Result<Tap, NetError> {
        validate_tap_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| NetError::OpenTun {
                name: name.to_owned(),
                source,
            })?;
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        // Shorter than IFNAMSIZ (validated), so the name stays NUL-terminated.
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and updates one ifreq, which `req` is, on
        // an fd this function owns.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(NetError::Attach {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_owned(),
        })
    }

    /// Takes over `fd`, inherited from the parent and already attached to a
    /// tap. Until it is known to be one, the fd is left alone: an error
    /// must not close whatever fd N really is.
    fn adopt(fd: RawFd) -> Result<Tap, NetError> {
        // SAFETY: F_GETFD only reads the descriptor flags of any fd number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(NetError::FdNotOpen {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one ifreq, which `req` is; on anything
        // but an attached tun/tap it fails without writing.
        if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } < 0 {
            return Err(NetError::NotTun {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let name_len = req
            .ifr_name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(req.ifr_name.len());
        let name_bytes: Vec<u8> = req.ifr_name[..name_len].iter().map(|&c| c as u8).collect();
        let name = String::from_utf8_lossy(&name_bytes).into_owned();
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let flags = c_int::from(unsafe { req.ifr_ifru.ifru_flags });
        if flags & c_int::from(libc::TUN_TYPE_MASK) != libc::IFF_TAP {
            return Err(NetError::NotTap { fd, name });
        }
        // TUNGETIFF also reports IFF_NOFILTER, which shares IFF_NO_PI's bit,
        // so a set bit proves nothing; a clear one proves IFF_NO_PI missing.
        if flags & libc::IFF_NO_PI == 0 || flags & libc::IFF_VNET_HDR != 0 {
            return Err(NetError::TapFlags { fd, name });
        }
        set_nonblocking_cloexec(fd).map_err(|source| NetError::FdFlags { fd, source })?;
        // SAFETY: fd is open and the parent handed it to this process, which
        // owns it from here on (the builder refuses the same fd twice).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Tap {
            file: File::from(owned),
            name,
        })
    }
}

fn set_nonblocking_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd this process owns, with integer arguments only.
    unsafe {
        let status = libc::fcntl(fd, libc::F_GETFL);
        if status < 0
            || libc::fcntl(fd, libc::F_SETFL, status | libc::O_NONBLOCK) < 0
            || libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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
    /// [`write_rx_chain`] fills across.
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
            Some(Worker::spawn("virtio-net", worker, &fds).map_err(ActivateError::Worker)?);
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

const TOKEN_RX_QUEUE: u64 = 0;
const TOKEN_TX_QUEUE: u64 = 1;
const TOKEN_TAP: u64 = 2;

/// Why a chain was returned unused.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("the chain is empty or its head is unreadable")]
    Empty,
    #[error("the chain is cut short: a loop, a bad next index or an unreadable descriptor")]
    Truncated,
    #[error("a device-writable descriptor in a transmit chain")]
    WritableOnTx,
    #[error("a device-readable descriptor in a receive chain")]
    ReadableOnRx,
    #[error("descriptor {addr:#x}+{len:#x} lies outside guest memory")]
    OutsideMemory { addr: u64, len: usize },
    #[error("a transmit chain of {0} bytes holds no Ethernet frame after the 12-byte header")]
    TooShort(usize),
    #[error("a transmit chain longer than {} bytes", NET_HDR_LEN + MAX_FRAME_LEN)]
    TooLong,
    #[error("a receive chain of {capacity} bytes cannot hold {needed} bytes")]
    TooSmall { capacity: usize, needed: usize },
    #[error("copying from or to guest memory failed: {0}")]
    Memory(#[source] GuestMemoryError),
}

impl From<Incomplete> for ChainError {
    fn from(e: Incomplete) -> Self {
        match e {
            Incomplete::Empty => ChainError::Empty,
            Incomplete::CutShort => ChainError::Truncated,
        }
    }
}

impl From<OneWayError> for ChainError {
    fn from(e: OneWayError) -> Self {
        match e {
            OneWayError::Direction { writable: true } => ChainError::ReadableOnRx,
            OneWayError::Direction { writable: false } => ChainError::WritableOnTx,
            OneWayError::Outside(OutsideMemory { addr, len }) => {
                ChainError::OutsideMemory { addr, len }
            }
        }
    }
}

/// Walks a chain whose descriptors must all be `writable` (or all not);
/// fails once the total passes `max_len`.
fn buffers(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    writable: bool,
    max_len: usize,
) -> Result<Buffers, ChainError> {
    let descs: Vec<Descriptor> = chain.collect();
    let buffers = Buffers::one_way(mem, descs.iter().copied(), writable, |total| {
        if total > max_len {
            Err(ChainError::TooLong)
        } else {
            Ok(())
        }
    })?;
    last_descriptor(&descs)?;
    Ok(buffers)
}

/// Copies a transmit chain (header and frame) into `buf`; returns the
/// frame's length, which follows the header there.
fn read_tx_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8; NET_HDR_LEN + MAX_FRAME_LEN],
) -> Result<usize, ChainError> {
    let buffers = buffers(mem, chain, false, buf.len())?;
    let total = buffers.len();
    if total < NET_HDR_LEN + ETH_HLEN {
        return Err(ChainError::TooShort(total));
    }
    buffers
        .read_at(mem, 0, &mut buf[..total])
        .map_err(ChainError::Memory)?;
    Ok(total - NET_HDR_LEN)
}

/// Copies `data` (header and frame) into a receive chain; returns the
/// length for the used ring.
fn write_rx_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    data: &[u8],
) -> Result<u32, ChainError> {
    let buffers = buffers(mem, chain, true, usize::MAX)?;
    let capacity = buffers.len();
    // Without VIRTIO_NET_F_MRG_RXBUF a frame may not span buffers (5.1.6.3),
    // so a buffer too small for it is the guest's error.
    if capacity < data.len() {
        return Err(ChainError::TooSmall {
            capacity,
            needed: data.len(),
        });
    }
    buffers.write_at(mem, 0, data).map_err(ChainError::Memory)?;
    // At most NET_HDR_LEN + MAX_FRAME_LEN.
    Ok(data.len() as u32)
}

/// What the receive queue's messages call it.
const RX_DEVICE: &str = "virtio-net";
/// What the transmit queue's messages call it.
const TX_NAMES: RingNames = RingNames {
    device: "virtio-net",
    queue: "virtio-net transmit",
    chain: "virtio-net transmit chain",
};

/// Whether the worker reads the tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TapState {
    /// In the epoll set: readable means frames to deliver.
    Watched,
    /// Out of the epoll set while a frame waits for a receive buffer; the
    /// guest's next rx notification resumes it.
    Paused,
    /// Out of the epoll set for good: the tap failed or was closed.
    Failed,
}

/// What the worker counts, for its messages.
#[derive(Debug, Default)]
struct Stats {
    tx_dropped: u64,
    rx_dropped: u64,
}

/// Lets one warning through per WARN_INTERVAL and counts the rest.
#[derive(Default)]
struct WarnLimit {
    next: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    /// Some(warnings suppressed since the last one) if this one may go out.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + WARN_INTERVAL);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What the worker thread owns: the queues, guest memory, its own handle on
/// the tap and the epoll set that the tap enters and leaves.
struct Handler {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    tap: File,
    interrupt: Arc<Interrupt>,
    epoll: Epoll,
    tap_state: TapState,
    /// The zeroed header (num_buffers = 1), then room for one frame; the
    /// first `rx_pending` bytes are a frame read from the tap that no
    /// receive buffer has taken yet.
    rx_buf: Box<[u8; NET_HDR_LEN + MAX_FRAME_LEN]>,
    rx_pending: Option<usize>,
    tx_buf: Box<[u8; NET_HDR_LEN + MAX_FRAME_LEN]>,
    stats: Stats,
    drop_warnings: WarnLimit,
    /// Tap write errors other than a full queue are logged once.
    tx_error_logged: bool,
}

/// The handler on the device's worker thread, woken by the queues'
/// eventfds and the tap.
struct QueueWorker {
    handler: Handler,
    rx_evt: EventFd,
    tx_evt: EventFd,
}

impl EventHandler for QueueWorker {
    type Output = ();

    fn epoll(&self) -> &Epoll {
        &self.handler.epoll
    }

    fn handle(&mut self, token: u64, set: EventSet) -> ControlFlow<()> {
        // Each eventfd is cleared before its ring is looked at, so a
        // notification racing with this pass is not lost.
        match token {
            TOKEN_RX_QUEUE => {
                let _ = self.rx_evt.read();
                self.handler.process_rx();
            }
            TOKEN_TX_QUEUE => {
                let _ = self.tx_evt.read();
                // A full batch yields to the other events; the eventfd
                // brings this thread back for the rest.
                if self.handler.process_tx() {
                    let _ = self.tx_evt.write(1);
                }
            }
            _ => {
                self.handler.process_rx();
                // Level-triggered: an error or hang-up would wake this loop
                // forever.
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    self.handler
                        .tap_failed("the tap reported an error or hang-up");
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn finish(self) {
        debug!(stats = ?self.handler.stats, "virtio-net worker stopped");
    }
}

impl Handler {
    /// Creates the epoll set with the tap in it; the caller adds the rest.
    fn new(
        mem: GuestMemory,
        rx: Queue,
        tx: Queue,
        tap: File,
        interrupt: Arc<Interrupt>,
    ) -> io::Result<Handler> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            tap.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_TAP),
        )?;
        let mut rx_buf = Box::new([0u8; NET_HDR_LEN + MAX_FRAME_LEN]);
        rx_buf[NET_HDR_LEN - 2..NET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        Ok(Handler {
            mem,
            rx,
            tx,
            tap,
            interrupt,
            epoll,
            tap_state: TapState::Watched,
            rx_buf,
            rx_pending: None,
            tx_buf: Box::new([0u8; NET_HDR_LEN + MAX_FRAME_LEN]),
            stats: Stats::default(),
            drop_warnings: WarnLimit::default(),
            tx_error_logged: false,
        })
    }

    /// Moves frames from the tap into receive buffers: the pending one
    /// first, then more until the tap is empty, the buffers run out (the
    /// frame in hand waits and the tap is no longer watched) or a batch is
    /// done.
    fn process_rx(&mut self) {
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

    fn tap_failed(&mut self, why: &str) {
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

    /// Sends what the driver queued to the tap, up to a batch; true when
    /// the batch ended it with chains left.
    fn process_tx(&mut self) -> bool {
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
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::thread;

    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::split::Descriptor;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::virtio::test_driver::DriverQueue;
    use crate::devices::virtio::INT_USED_RING;

    const MEM_SIZE: u64 = 0x40_0000;
    const QSIZE: u16 = 16;
    const RX_RING: u64 = 0;
    const TX_RING: u64 = 0x4000;
    /// Where each queue's used ring goes: virtio-queue's mock lays it over
    /// the tail of the available ring.
    const USED_OFFSET: u64 = 0x1000;
    const BUF: u64 = 0x10_0000;
    const BUF2: u64 = 0x20_0000;
    const BUF3: u64 = 0x30_0000;
    const R: bool = false;
    const W: bool = true;
    const MAC: [u8; 6] = [0x02, 0xab, 0xcd, 0x00, 0x01, 0x02];

    fn guest_memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
    }

    /// A "tap" that keeps packet boundaries, and the host end of it.
    fn tap_pair() -> (Tap, File) {
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let (dev, host) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags).unwrap();
        let tap = Tap {
            file: File::from(dev),
            name: "test".into(),
        };
        (tap, File::from(host))
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The next frame the host end got, if any.
    fn host_recv(host: &mut File) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2 * MAX_FRAME_LEN];
        match host.read(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("host read: {e}"),
        }
    }

    /// Plays the driver over the two queues and runs the device's handler
    /// on them, without a thread.
    struct Harness {
        mem: GuestMemory,
        rx: DriverQueue,
        tx: DriverQueue,
        handler: Handler,
        host: File,
    }

    impl Harness {
        fn new() -> Harness {
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
        fn transmit(&mut self, descs: &[(u64, u32, bool)]) -> (u16, u32) {
            let head = self.tx.add(&self.mem, descs);
            self.handler.process_tx();
            let used = self.tx.next_used(&self.mem).expect("chain not used");
            assert_eq!(used.0, head);
            used
        }

        fn transmit_raw(&mut self, descs: &[Descriptor]) -> (u16, u32) {
            let head = self.tx.add_raw(&self.mem, descs);
            self.handler.process_tx();
            let used = self.tx.next_used(&self.mem).expect("chain not used");
            assert_eq!(used.0, head);
            used
        }

        fn host_send(&mut self, frame: &[u8]) {
            assert_eq!(self.host.write(frame).unwrap(), frame.len());
        }

        /// Reads `len` bytes of guest memory at `addr`.
        fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            buf
        }

        /// A transmit chain whose header is at BUF, followed by `frame`.
        fn put_tx(&self, frame: &[u8]) {
            let mut bytes = vec![0x5au8; NET_HDR_LEN];
            bytes.extend_from_slice(frame);
            self.mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
        }

        /// The frame that a good transmit chain delivers: the queue works.
        fn assert_tx_works(&mut self) {
            let f = frame(60, 9);
            self.put_tx(&f);
            let (_, len) = self.transmit(&[(BUF, (NET_HDR_LEN + f.len()) as u32, R)]);
            assert_eq!(len, 0);
            assert_eq!(host_recv(&mut self.host), Some(f));
        }
    }

    fn raw(addr: u64, len: u32, flags: u32, next: u16) -> Descriptor {
        Descriptor::new(addr, len, flags as u16, next)
    }

    fn net(tap: Tap) -> Net {
        Net::new(tap, MacAddr(MAC), None)
    }

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
    fn mac_addresses() {
        let mac: MacAddr = "02:AB:cd:00:01:02".parse().unwrap();
        assert_eq!(mac.octets(), MAC);
        assert_eq!(mac.to_string(), "02:ab:cd:00:01:02");
        for bad in [
            "",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:02:03",
            "02:ab:cd:00:01:2",
            "02:ab:cd:00:01:002",
            "02-ab-cd-00-01-02",
            "02:ab:cd:00:01:0g",
            "02:ab:cd:00:01:+2",
            "02:ab:cd:00:01:02:",
            "02ab:cd:00:01:02:",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(matches!(e, NetError::BadMac(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        for not_unicast in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            let e = not_unicast.parse::<MacAddr>().unwrap_err();
            assert!(matches!(e, NetError::NotUnicastMac(_)), "{e}");
        }
    }

    #[test]
    fn tap_names() {
        for good in ["tap0", "a", "tap_kata-rs.1", &"x".repeat(15)] {
            validate_tap_name(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a:1", "a b", "a\0b", &"x".repeat(16)] {
            assert!(validate_tap_name(bad).is_err(), "{bad:?}");
        }
    }

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

    #[test]
    fn warnings_are_rate_limited() {
        let mut limit = WarnLimit::default();
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        limit.next = Some(Instant::now());
        assert_eq!(limit.allow(), Some(2));
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            thread::sleep(Duration::from_millis(5));
        }
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
        });
        assert!(matches!(e, Err(ActivateError::Invalid(_))));
    }

    /// A tap name no other test or process uses.
    fn unique_tap_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        format!("krst{}{n}", std::process::id() % 10000)
    }

    fn tun_flags(fd: RawFd) -> c_int {
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one ifreq, which `req` is.
        assert!(unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } >= 0);
        // SAFETY: TUNGETIFF filled in the flags.
        c_int::from(unsafe { req.ifr_ifru.ifru_flags })
    }

    #[test]
    fn opens_a_real_tap_by_name_and_by_fd() {
        let name = unique_tap_name();
        let tap = match Tap::open(&NetBackend::Tap(name.clone())) {
            Ok(tap) => tap,
            Err(NetError::OpenTun { source, .. } | NetError::Attach { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EPERM | libc::EACCES | libc::ENOENT | libc::ENODEV)
                ) =>
            {
                println!("SKIP: cannot create a tap here: {source}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(tap.name(), name);
        let fd = tap.file.as_raw_fd();
        let flags = tun_flags(fd);
        assert_eq!(flags & c_int::from(libc::TUN_TYPE_MASK), libc::IFF_TAP);
        assert_ne!(flags & libc::IFF_NO_PI, 0);
        assert_eq!(flags & libc::IFF_VNET_HDR, 0);
        // SAFETY: F_GETFL and F_GETFD only read flags.
        let (status, fd_flags) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        assert_ne!(status & libc::O_NONBLOCK, 0);
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        // The interface is down: nothing to read, and no blocking.
        let mut buf = [0u8; 64];
        assert_eq!(
            (&tap.file).read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );

        // The same tap handed over as an fd, as the runtime does.
        let dup = tap.file.try_clone().unwrap();
        let dup_fd = dup.as_raw_fd();
        // Ownership moves to the adopted Tap.
        std::mem::forget(dup);
        let adopted = Tap::open(&NetBackend::Fd(dup_fd)).unwrap();
        assert_eq!(adopted.name(), name);
        // The tap goes away once both are closed, so the adopted one owned
        // its fd.
        drop(adopted);
        drop(tap);
        let sys = std::path::PathBuf::from(format!("/sys/class/net/{name}"));
        wait_for("the tap to go away", || !sys.exists());

        // An interface that exists but is no tap.
        let e = Tap::open(&NetBackend::Tap("lo".into())).err().unwrap();
        assert!(matches!(e, NetError::Attach { .. }), "{e}");
        assert!(e.to_string().contains("tap lo"), "{e}");
    }

    /// A /dev/net/tun fd attached to a new interface with `flags`.
    fn attach_raw(name: &str, flags: c_int) -> io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).open(TUN_PATH)?;
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and updates one ifreq, which `req` is.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    }

    #[test]
    fn refuses_inherited_tuns_and_taps_with_other_flags() {
        // A tap without IFF_NO_PI is not among them: TUNGETIFF cannot tell
        // (see Tap::adopt).
        let cases = [
            (libc::IFF_TUN | libc::IFF_NO_PI, "not a tap"),
            (
                libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
                "IFF_VNET_HDR",
            ),
        ];
        for (flags, why) in cases {
            let name = unique_tap_name();
            let file = match attach_raw(&name, flags) {
                Ok(file) => file,
                Err(e) => {
                    println!("SKIP: cannot create a tun/tap here: {e}");
                    return;
                }
            };
            let fd = file.as_raw_fd();
            let e = match Tap::open(&NetBackend::Fd(fd)) {
                Ok(tap) => {
                    // `file` still owns the fd: do not close it twice.
                    std::mem::forget(tap);
                    panic!("{name} accepted, expected {why:?}");
                }
                Err(e) => e,
            };
            assert!(
                matches!(e, NetError::NotTap { .. } | NetError::TapFlags { .. }),
                "{e}"
            );
            let msg = e.to_string();
            assert!(msg.contains(why) && msg.contains(&name), "{msg}");
            // Refused, so still ours: it names the same interface.
            assert_eq!(
                tun_flags(fd) & c_int::from(libc::TUN_TYPE_MASK),
                flags & 0xf
            );
        }
    }

    #[test]
    fn refuses_fds_that_are_not_taps_and_leaves_them_open() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let e = Tap::open(&NetBackend::Fd(fd)).err().unwrap();
        assert!(
            matches!(e, NetError::NotTun { fd: f, .. } if f == fd),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("fd {fd}")), "{e}");
        // Still open and still ours.
        assert!(file.metadata().unwrap().ino() > 0);

        // A tun device opened but never attached.
        let tun = OpenOptions::new().read(true).write(true).open(TUN_PATH);
        if let Ok(tun) = tun {
            let e = Tap::open(&NetBackend::Fd(tun.as_raw_fd())).err().unwrap();
            assert!(matches!(e, NetError::NotTun { .. }), "{e}");
        }

        // An fd number nothing uses.
        let e = Tap::open(&NetBackend::Fd(999_999)).err().unwrap();
        assert!(matches!(e, NetError::FdNotOpen { .. }), "{e}");
    }
}
