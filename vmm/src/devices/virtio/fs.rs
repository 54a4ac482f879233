//! virtio-fs (virtio 1.2, section 5.11) as a vhost-user frontend to
//! virtiofsd.
//!
//! The VMM owns only the control path: the config space (tag and number of
//! request queues), feature negotiation, and handing the rings to virtiofsd
//! on DRIVER_OK (SET_MEM_TABLE with the guest RAM memfd, then the vrings).
//! virtiofsd reads the rings itself: the kick fds are the transport's queue
//! eventfds, which KVM signals on QueueNotify writes. Its call fds are
//! eventfds of this device, relayed by a thread that sets the used-ring bit
//! of InterruptStatus before raising the interrupt, because virtio-mmio
//! drivers read that bit to know why they were interrupted.
//!
//! The connection is made when the VMM starts, so a missing virtiofsd fails
//! the start with one error. If virtiofsd goes away later the relay logs it
//! once and stops; the guest's requests then go unanswered, and a driver
//! reset followed by a new activation fails cleanly (DEVICE_NEEDS_RESET).

use std::io;
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::{stop_slot, DeviceThread, EventHandler, Worker};
use super::VIRTIO_F_VERSION_1;
use super::{read_config_space, ActivateContext, ActivateError, Interrupt, VirtioDevice, TYPE_FS};
use crate::memory::GuestMemory;

/// Length of the tag field of the config space; longer tags are refused.
pub const TAG_LEN: usize = 36;
/// One high-priority queue and one request queue (the only layout
/// virtiofsd serves).
const NUM_QUEUES: usize = 2;
const REQUEST_QUEUES: u32 = NUM_QUEUES as u32 - 1;
const QUEUE_SIZE: u16 = 1024;
const CONFIG_LEN: usize = TAG_LEN + 4;
/// How long a vCPU waits for virtiofsd to answer one message: a hung
/// virtiofsd must not freeze the guest for good.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Ring features the guest may use when virtiofsd implements them; they
/// concern only the rings, which virtiofsd runs.
const RING_FEATURES: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_RING_F_EVENT_IDX;
/// Protocol features used when offered: REPLY_ACK so that every request is
/// confirmed (a refused memory table or ring fails the activation instead of
/// a silent hang), RESET_DEVICE so that a driver reset also clears
/// virtiofsd's FUSE session.
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::REPLY_ACK.union(VhostUserProtocolFeatures::RESET_DEVICE);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs {tag:?}: cannot connect to virtiofsd at {path}: {source}")]
    Connect {
        tag: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("virtio-fs {tag:?}: virtiofsd at {path}: {what} failed: {source}")]
    Handshake {
        tag: String,
        path: PathBuf,
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("virtio-fs {tag:?}: virtiofsd at {path} does not offer VIRTIO_F_VERSION_1")]
    NoVersion1 { tag: String, path: PathBuf },
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_LEN} bytes without NUL")]
    BadTag(String),
}

/// Why an activation failed: a guest value refused, or virtiofsd refusing
/// or failing a request.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("the driver set up {0} queues, virtio-fs has {NUM_QUEUES}")]
    QueueCount(usize),
    #[error("queue {0} is not ready")]
    NotReady(usize),
    #[error("queue {index} has size {size}: not a power of two up to {QUEUE_SIZE}")]
    QueueSize { index: usize, size: u16 },
    #[error("queue {index}: the {ring} at {addr:#x} lies outside guest memory or is misaligned")]
    Ring {
        index: usize,
        ring: &'static str,
        addr: u64,
    },
    #[error("guest memory region at {addr:#x} has no file to share")]
    Region { addr: u64 },
    #[error("virtiofsd: {what} failed: {source}")]
    Backend {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("cannot create the interrupt relay: {0}")]
    Relay(#[source] io::Error),
}

fn backend(what: &'static str) -> impl FnOnce(vhost::Error) -> SetupError {
    move |source| SetupError::Backend { what, source }
}

/// Checks a tag for the config space.
pub fn validate_tag(tag: &str) -> Result<(), FsError> {
    if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
        return Err(FsError::BadTag(tag.to_owned()));
    }
    Ok(())
}

/// A virtio-fs device served by one virtiofsd.
pub struct Fs {
    frontend: Frontend,
    /// A duplicate of the connection, watched by the relay for virtiofsd
    /// hanging up.
    socket: UnixStream,
    /// VHOST_USER_F_PROTOCOL_FEATURES was offered: rings start disabled
    /// and are switched with SET_VRING_ENABLE.
    protocol: bool,
    protocol_features: VhostUserProtocolFeatures,
    features: u64,
    config: [u8; CONFIG_LEN],
    relay: Option<Worker<()>>,
}

impl Fs {
    /// Connects to virtiofsd's socket and negotiates what does not depend
    /// on the guest: ownership, features and protocol features.
    pub fn new(tag: &str, socket_path: &Path) -> Result<Fs, FsError> {
        validate_tag(tag)?;
        let connect = |source| FsError::Connect {
            tag: tag.to_owned(),
            path: socket_path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(socket_path).map_err(connect)?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(connect)?;
        let socket = stream.try_clone().map_err(connect)?;
        Self::handshake(tag, stream, socket).map_err(|(what, source)| match source {
            Some(source) => FsError::Handshake {
                tag: tag.to_owned(),
                path: socket_path.to_owned(),
                what,
                source,
            },
            None => FsError::NoVersion1 {
                tag: tag.to_owned(),
                path: socket_path.to_owned(),
            },
        })
    }

    /// The vhost-user start of a session; errors name the failed step, or
    /// carry no source when VERSION_1 is missing.
    fn handshake(
        tag: &str,
        stream: UnixStream,
        socket: UnixStream,
    ) -> Result<Fs, (&'static str, Option<vhost::Error>)> {
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        frontend.set_owner().map_err(|e| ("SET_OWNER", Some(e)))?;
        let offered = frontend
            .get_features()
            .map_err(|e| ("GET_FEATURES", Some(e)))?;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(("GET_FEATURES", None));
        }
        let protocol = offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        let mut protocol_features = VhostUserProtocolFeatures::empty();
        if protocol {
            protocol_features = frontend
                .get_protocol_features()
                .map_err(|e| ("GET_PROTOCOL_FEATURES", Some(e)))?
                & WANTED_PROTOCOL_FEATURES;
            frontend
                .set_protocol_features(protocol_features)
                .map_err(|e| ("SET_PROTOCOL_FEATURES", Some(e)))?;
            if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
        Ok(Fs {
            frontend,
            socket,
            protocol,
            protocol_features,
            features: VIRTIO_F_VERSION_1 | offered & RING_FEATURES,
            config,
            relay: None,
        })
    }

    /// Hands guest memory and the rings to virtiofsd and starts the relay.
    fn start(&mut self, ctx: ActivateContext) -> Result<(), SetupError> {
        let rings = ring_addresses(&ctx.mem, &ctx.queues)?;
        let regions = ctx
            .mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|_| SetupError::Region {
                    addr: vm_memory::GuestMemoryRegion::start_addr(r).0,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let calls = (0..NUM_QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SetupError::Relay)?;

        // The transport accepts only offered features; masking again keeps a
        // transport bug from reaching virtiofsd.
        let mut acked = ctx.acked_features & self.features;
        if self.protocol {
            acked |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(acked)
            .map_err(backend("SET_FEATURES"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(backend("SET_MEM_TABLE"))?;
        for (index, ((queue, ring), (call, kick))) in ctx
            .queues
            .iter()
            .zip(&rings)
            .zip(calls.iter().zip(&ctx.queue_events))
            .enumerate()
        {
            self.frontend
                .set_vring_num(index, queue.size())
                .map_err(backend("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(index, ring)
                .map_err(backend("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, queue.next_avail())
                .map_err(backend("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(index, call)
                .map_err(backend("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(index, kick)
                .map_err(backend("SET_VRING_KICK"))?;
            if self.protocol {
                self.frontend
                    .set_vring_enable(index, true)
                    .map_err(backend("SET_VRING_ENABLE"))?;
            }
        }
        self.relay = Some(start_relay(
            &ctx.thread,
            calls,
            &self.socket,
            ctx.interrupt,
        )?);
        Ok(())
    }

    /// Stops every ring in virtiofsd (GET_VRING_BASE is the spec's stop) and
    /// clears its device state. Failures mean virtiofsd is gone, which the
    /// relay has already reported.
    fn stop_rings(&mut self) {
        for index in 0..NUM_QUEUES {
            if self.protocol {
                if let Err(e) = self.frontend.set_vring_enable(index, false) {
                    debug!(index, error = %e, "virtio-fs: SET_VRING_ENABLE(0) failed");
                }
            }
            if let Err(e) = self.frontend.get_vring_base(index) {
                debug!(index, error = %e, "virtio-fs: GET_VRING_BASE failed");
            }
        }
        if self
            .protocol_features
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            if let Err(e) = self.frontend.reset_device() {
                debug!(error = %e, "virtio-fs: RESET_DEVICE failed");
            }
        }
    }
}

/// Checks each queue the guest configured and translates its rings to the
/// VMM addresses vhost-user expects (virtiofsd maps them back through the
/// memory table). Each ring must lie whole inside one memory region, since
/// virtiofsd maps the regions separately.
fn ring_addresses(mem: &GuestMemory, queues: &[Queue]) -> Result<Vec<VringConfigData>, SetupError> {
    if queues.len() != NUM_QUEUES {
        return Err(SetupError::QueueCount(queues.len()));
    }
    queues
        .iter()
        .enumerate()
        .map(|(index, q)| {
            if !q.ready() {
                return Err(SetupError::NotReady(index));
            }
            let size = q.size();
            if !size.is_power_of_two() || size > QUEUE_SIZE {
                return Err(SetupError::QueueSize { index, size });
            }
            let n = usize::from(size);
            // virtio 1.2, 2.7: sizes and alignments of the split rings.
            let host = |ring: &'static str, addr: u64, len: usize, align: u64| {
                let bad = || SetupError::Ring { index, ring, addr };
                if addr % align != 0 {
                    return Err(bad());
                }
                mem.get_slice(GuestAddress(addr), len)
                    .map(|s| s.ptr_guard().as_ptr() as u64)
                    .map_err(|_| bad())
            };
            Ok(VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: size,
                flags: 0,
                desc_table_addr: host("descriptor table", q.desc_table(), 16 * n, 16)?,
                used_ring_addr: host("used ring", q.used_ring(), 6 + 8 * n, 4)?,
                avail_ring_addr: host("available ring", q.avail_ring(), 6 + 2 * n, 2)?,
                log_addr: None,
            })
        })
        .collect()
}

const TOKEN_HANGUP: u64 = u64::MAX - 1;

/// Turns virtiofsd's used-buffer notifications (its call eventfds) into
/// guest interrupts until told to stop or virtiofsd hangs up.
struct Relay {
    epoll: Epoll,
    calls: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
}

impl EventHandler for Relay {
    type Output = ();

    fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    fn handle(&mut self, token: u64, _set: EventSet) -> ControlFlow<()> {
        if token == TOKEN_HANGUP {
            error!("virtiofsd closed its connection; the virtio-fs device stops");
            return ControlFlow::Break(());
        }
        if let Some(call) = self.calls.get(token as usize) {
            // Clear the count first so a call racing with the interrupt is
            // not lost.
            let _ = call.read();
            self.interrupt.signal_used_queue();
        }
        ControlFlow::Continue(())
    }

    fn finish(self) {}
}

fn start_relay(
    thread: &DeviceThread,
    calls: Vec<EventFd>,
    socket: &UnixStream,
    interrupt: Arc<Interrupt>,
) -> Result<Worker<()>, SetupError> {
    let mut fds: Vec<(i32, EventSet, u64)> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_raw_fd(), EventSet::IN, i as u64))
        .collect();
    // Only the hang-up: the vCPU threads read virtiofsd's replies on this
    // socket, and those must not wake the relay.
    fds.push((socket.as_raw_fd(), EventSet::READ_HANG_UP, TOKEN_HANGUP));
    let relay = Relay {
        epoll: Epoll::new().map_err(SetupError::Relay)?,
        calls,
        interrupt,
    };
    Worker::spawn(thread, relay, &fds).map_err(|e| SetupError::Relay(e.error))
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn thread_kind(&self) -> crate::seccomp::ThreadKind {
        crate::seccomp::ThreadKind::FsRelay
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            offset,
            len = data.len(),
            "virtio-fs config space is read-only; write ignored"
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.relay.is_some() {
            return Err(ActivateError::Invalid("virtio-fs is already active".into()));
        }
        self.start(ctx).map_err(|e| {
            // Rings virtiofsd may already run must not outlive the failure.
            if matches!(e, SetupError::Backend { .. }) {
                self.stop_rings();
            }
            ActivateError::Invalid(e.to_string())
        })
    }

    fn reset(&mut self) -> bool {
        if self.relay.is_some() {
            self.stop_rings();
        }
        stop_slot(&mut self.relay)
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        stop_slot(&mut self.relay);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixListener;
    use std::sync::{mpsc, Mutex};
    use std::thread;

    use crate::devices::virtio::test_driver;
    use vhost::vhost_user::message::FrontendReq;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::virtio::INT_USED_RING;

    type Requests = Arc<Mutex<Vec<(u32, Vec<u8>)>>>;

    const ALL_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
        .union(VhostUserProtocolFeatures::REPLY_ACK)
        .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
        .union(VhostUserProtocolFeatures::RESET_DEVICE)
        .union(VhostUserProtocolFeatures::CONFIG);
    /// What virtiofsd 1.14 offers.
    const VIRTIOFSD_FEATURES: u64 = VIRTIO_F_VERSION_1
        | RING_FEATURES
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        | VhostUserVirtioFeatures::LOG_ALL.bits();

    /// A stand-in for virtiofsd that records every request and answers the
    /// ones that need an answer; enough for negotiation and error paths (it
    /// drops the fds it is sent, so it never touches a ring).
    struct FakeBackend {
        _dir: tempfile::TempDir,
        path: PathBuf,
        requests: Requests,
        conn: mpsc::Receiver<UnixStream>,
    }

    impl FakeBackend {
        fn start(features: u64, protocol: VhostUserProtocolFeatures) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("vfsd.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let requests = Requests::default();
            let (tx, conn) = mpsc::channel();
            let record = requests.clone();
            thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                tx.send(s.try_clone().unwrap()).unwrap();
                let mut hdr = [0u8; 12];
                while s.read_exact(&mut hdr).is_ok() {
                    let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
                    let (req, flags, size) = (word(0), word(4), word(8));
                    let mut payload = vec![0u8; size as usize];
                    if s.read_exact(&mut payload).is_err() {
                        return;
                    }
                    let body = match req {
                        r if r == FrontendReq::GET_FEATURES as u32 => {
                            features.to_le_bytes().to_vec()
                        }
                        r if r == FrontendReq::GET_PROTOCOL_FEATURES as u32 => {
                            protocol.bits().to_le_bytes().to_vec()
                        }
                        r if r == FrontendReq::GET_VRING_BASE as u32 => {
                            [&payload[..4], &[0u8; 4][..]].concat()
                        }
                        _ if flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 => {
                            0u64.to_le_bytes().to_vec()
                        }
                        _ => Vec::new(),
                    };
                    record.lock().unwrap().push((req, payload));
                    if !body.is_empty() {
                        let mut reply = Vec::new();
                        for w in [
                            req,
                            0x1 | VhostUserHeaderFlag::REPLY.bits(),
                            body.len() as u32,
                        ] {
                            reply.extend_from_slice(&w.to_le_bytes());
                        }
                        reply.extend_from_slice(&body);
                        if s.write_all(&reply).is_err() {
                            return;
                        }
                    }
                }
            });
            FakeBackend {
                _dir: dir,
                path,
                requests,
                conn,
            }
        }

        /// The requests so far, at least `min` of them: requests without
        /// a reply may still be on their way when the frontend returns.
        fn codes_after(&self, min: usize) -> Vec<u32> {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let codes: Vec<u32> = self.requests.lock().unwrap().iter().map(|r| r.0).collect();
                if codes.len() >= min || std::time::Instant::now() > deadline {
                    return codes;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }

        fn payload(&self, code: FrontendReq, nth: usize) -> Vec<u8> {
            let r = self.requests.lock().unwrap();
            r.iter()
                .filter(|(c, _)| *c == code as u32)
                .nth(nth)
                .map(|(_, p)| p.clone())
                .unwrap()
        }

        fn die(&self) {
            let s = self.conn.recv().unwrap();
            s.shutdown(Shutdown::Both).unwrap();
        }
    }

    fn u64_at(p: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(p[at..at + 8].try_into().unwrap())
    }

    /// Queue `i` at `0x10000 * (3i + 1)`: descriptor table, then the
    /// available and the used ring 64 KiB apart.
    fn queue(i: u64, size: u16) -> Queue {
        let mut q = Queue::new(4096).unwrap();
        q.set_size(size);
        let base = 0x10000 * (3 * i + 1);
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some((base + 0x10000) as u32), Some(0));
        q.set_used_ring_address(Some((base + 0x20000) as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn context(
        mem: &GuestMemory,
        queues: Vec<Queue>,
        acked: u64,
    ) -> (ActivateContext, Arc<Interrupt>) {
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let ctx = ActivateContext {
            mem: mem.clone(),
            queue_events: queues
                .iter()
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            queues,
            interrupt: interrupt.clone(),
            acked_features: acked,
            thread: test_driver::thread(),
        };
        (ctx, interrupt)
    }

    fn guest_memory() -> GuestMemory {
        crate::memory::create_guest_memory(64).unwrap()
    }

    #[test]
    fn config_space_holds_tag_and_one_request_queue() {
        let backend = FakeBackend::start(VIRTIOFSD_FEATURES, ALL_PROTOCOL);
        let fs = Fs::new("myfs", &backend.path).unwrap();
        assert_eq!(fs.device_type(), 26);
        assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
        let mut config = [0xffu8; 40];
        fs.read_config(0, &mut config);
        let mut want = [0u8; 40];
        want[..4].copy_from_slice(b"myfs");
        want[36] = 1;
        assert_eq!(config, want);
        // Partial, unaligned and out-of-range reads.
        let mut b = [0xffu8; 6];
        fs.read_config(34, &mut b);
        assert_eq!(b, [0, 0, 1, 0, 0, 0]);
        fs.read_config(40, &mut b);
        assert_eq!(b, [0; 6]);
        fs.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 6]);
        // The tag may fill the whole field, without a NUL.
        let tag = "t".repeat(TAG_LEN);
        let backend = FakeBackend::start(VIRTIOFSD_FEATURES, ALL_PROTOCOL);
        let mut fs = Fs::new(&tag, &backend.path).unwrap();
        fs.write_config(0, b"evil");
        fs.read_config(0, &mut config);
        assert_eq!(&config[..TAG_LEN], tag.as_bytes());
    }

    #[test]
    fn negotiates_features_and_only_the_protocol_features_it_uses() {
        let backend = FakeBackend::start(VIRTIOFSD_FEATURES | 1 << 40, ALL_PROTOCOL);
        let fs = Fs::new("myfs", &backend.path).unwrap();
        // Ring features pass through; vhost-user and unknown bits do not.
        assert_eq!(fs.features(), VIRTIO_F_VERSION_1 | RING_FEATURES);
        let codes = backend.codes_after(4);
        assert_eq!(
            codes,
            [
                FrontendReq::SET_OWNER,
                FrontendReq::GET_FEATURES,
                FrontendReq::GET_PROTOCOL_FEATURES,
                FrontendReq::SET_PROTOCOL_FEATURES
            ]
            .map(|c| c as u32)
        );
        let acked = u64_at(&backend.payload(FrontendReq::SET_PROTOCOL_FEATURES, 0), 0);
        assert_eq!(acked, WANTED_PROTOCOL_FEATURES.bits());

        // A backend with neither ring features nor protocol features.
        let backend = FakeBackend::start(VIRTIO_F_VERSION_1, ALL_PROTOCOL);
        let fs = Fs::new("myfs", &backend.path).unwrap();
        assert_eq!(fs.features(), VIRTIO_F_VERSION_1);
        assert_eq!(backend.codes_after(2).len(), 2);
    }

    #[test]
    fn start_fails_clearly_without_virtiofsd_or_version_1() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        let e = Fs::new("myfs", &missing).err().unwrap().to_string();
        assert!(
            e.contains("cannot connect to virtiofsd") && e.contains("none.sock"),
            "{e}"
        );

        let backend = FakeBackend::start(RING_FEATURES, ALL_PROTOCOL);
        let e = Fs::new("myfs", &backend.path).err().unwrap();
        assert!(matches!(e, FsError::NoVersion1 { .. }), "{e}");

        for bad in ["", "a\0b", &"x".repeat(TAG_LEN + 1)] {
            assert!(matches!(Fs::new(bad, &missing), Err(FsError::BadTag(_))));
        }
    }

    #[test]
    fn activation_hands_memory_and_rings_to_the_backend() {
        let backend = FakeBackend::start(VIRTIOFSD_FEATURES, ALL_PROTOCOL);
        let mut fs = Fs::new("myfs", &backend.path).unwrap();
        let mem = guest_memory();
        // A bit the device did not offer is not passed on.
        let acked = VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << 40;
        let (ctx, _) = context(&mem, vec![queue(0, 128), queue(1, 1024)], acked);
        fs.activate(ctx).unwrap();

        let sent = u64_at(&backend.payload(FrontendReq::SET_FEATURES, 0), 0);
        assert_eq!(
            sent,
            VIRTIO_F_VERSION_1
                | 1 << VIRTIO_RING_F_EVENT_IDX
                | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        );
        let per_queue = [
            FrontendReq::SET_VRING_NUM,
            FrontendReq::SET_VRING_ADDR,
            FrontendReq::SET_VRING_BASE,
            FrontendReq::SET_VRING_CALL,
            FrontendReq::SET_VRING_KICK,
            FrontendReq::SET_VRING_ENABLE,
        ];
        let want: Vec<u32> = [FrontendReq::SET_FEATURES, FrontendReq::SET_MEM_TABLE]
            .into_iter()
            .chain(per_queue)
            .chain(per_queue)
            .map(|c| c as u32)
            .collect();
        assert_eq!(backend.codes_after(4 + want.len())[4..], want[..]);

        // One region: the memfd mapping at guest address 0.
        let table = backend.payload(FrontendReq::SET_MEM_TABLE, 0);
        assert_eq!(u32::from_le_bytes(table[..4].try_into().unwrap()), 1);
        let host = |a: u64| mem.get_host_address(GuestAddress(a)).unwrap() as u64;
        assert_eq!(u64_at(&table, 8), 0);
        assert_eq!(u64_at(&table, 16), 64 << 20);
        assert_eq!(u64_at(&table, 24), host(0));

        let num = backend.payload(FrontendReq::SET_VRING_NUM, 1);
        assert_eq!(num, [1, 0, 0, 0, 0, 4, 0, 0]);
        // index, flags, then the descriptor, used and available rings as
        // VMM addresses.
        let addr = backend.payload(FrontendReq::SET_VRING_ADDR, 1);
        assert_eq!(addr[0], 1);
        assert_eq!(u64_at(&addr, 8), host(0x40000));
        assert_eq!(u64_at(&addr, 16), host(0x60000));
        assert_eq!(u64_at(&addr, 24), host(0x50000));

        // A second activation without a reset is refused.
        let (ctx, _) = context(&mem, vec![queue(0, 16), queue(1, 16)], VIRTIO_F_VERSION_1);
        assert!(fs.activate(ctx).is_err());

        // Reset stops both rings and the FUSE session, then the device can
        // run again.
        let before = backend.codes_after(0).len();
        assert!(fs.reset());
        let stop: Vec<u32> = [
            FrontendReq::SET_VRING_ENABLE,
            FrontendReq::GET_VRING_BASE,
            FrontendReq::SET_VRING_ENABLE,
            FrontendReq::GET_VRING_BASE,
            FrontendReq::RESET_DEVICE,
        ]
        .map(|c| c as u32)
        .to_vec();
        assert_eq!(backend.codes_after(before + stop.len())[before..], stop[..]);
        let (ctx, _) = context(&mem, vec![queue(0, 16), queue(1, 16)], VIRTIO_F_VERSION_1);
        fs.activate(ctx).unwrap();
        assert_eq!(backend.payload(FrontendReq::SET_MEM_TABLE, 1), table);
    }

    #[test]
    fn refuses_bad_guest_rings_before_talking_to_the_backend() {
        let mem = guest_memory();
        let end = 64u64 << 20;
        let mut too_big = queue(1, 2048);
        too_big.set_ready(true);
        let mut past_end = queue(1, 256);
        past_end.set_used_ring_address(Some((end - 8) as u32), Some(0));
        let mut high = queue(1, 256);
        high.set_desc_table_address(Some(0), Some(1));
        let mut not_ready = queue(1, 256);
        not_ready.set_ready(false);
        let cases: Vec<(Vec<Queue>, &str)> = vec![
            (vec![queue(0, 16)], "virtio-fs has 2"),
            (vec![queue(0, 16), too_big], "size 2048"),
            (vec![queue(0, 16), past_end], "used ring"),
            (vec![queue(0, 16), high], "descriptor table"),
            (vec![queue(0, 16), not_ready], "not ready"),
        ];
        for (queues, why) in cases {
            let backend = FakeBackend::start(VIRTIOFSD_FEATURES, ALL_PROTOCOL);
            let mut fs = Fs::new("myfs", &backend.path).unwrap();
            let (ctx, _) = context(&mem, queues, VIRTIO_F_VERSION_1);
            let e = fs.activate(ctx).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
            assert_eq!(
                backend.codes_after(4).len(),
                4,
                "{why}: nothing reaches virtiofsd"
            );
            assert!(fs.relay.is_none());
        }
        // Memory without a file cannot be shared.
        let anon = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let backend = FakeBackend::start(VIRTIOFSD_FEATURES, ALL_PROTOCOL);
        let mut fs = Fs::new("myfs", &backend.path).unwrap();
        let (ctx, _) = context(&anon, vec![queue(0, 16), queue(1, 16)], VIRTIO_F_VERSION_1);
        assert!(fs
            .activate(ctx)
            .unwrap_err()
            .to_string()
            .contains("no file"));
    }

    #[test]
    fn relay_raises_the_used_ring_interrupt() {
        let calls: Vec<EventFd> = (0..NUM_QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let call = calls[1].try_clone().unwrap();
        let (socket, _peer) = UnixStream::pair().unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let relay = start_relay(&test_driver::thread(), calls, &socket, interrupt.clone()).unwrap();
        call.write(1).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while interrupt.status() == 0 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(interrupt.status(), INT_USED_RING);
        assert_eq!(interrupt.eventfd().read().unwrap(), 1);
        assert!(relay.stop().is_ok());
    }

    #[test]
    fn backend_death_stops_the_device_without_panic() {
        let backend = FakeBackend::start(VIRTIOFSD_FEATURES, ALL_PROTOCOL);
        let mut fs = Fs::new("myfs", &backend.path).unwrap();
        let mem = guest_memory();
        let (ctx, _) = context(&mem, vec![queue(0, 16), queue(1, 16)], VIRTIO_F_VERSION_1);
        fs.activate(ctx).unwrap();
        backend.die();
        // The relay sees the hang-up and ends on its own.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fs.relay.as_ref().unwrap().is_finished() {
            assert!(std::time::Instant::now() < deadline, "relay still running");
            thread::sleep(Duration::from_millis(5));
        }
        assert!(fs.reset());
        let (ctx, _) = context(&mem, vec![queue(0, 16), queue(1, 16)], VIRTIO_F_VERSION_1);
        let e = fs.activate(ctx).unwrap_err().to_string();
        assert!(e.contains("SET_FEATURES"), "{e}");
        assert!(fs.relay.is_none());
    }
}
