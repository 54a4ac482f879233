//! virtio-blk (virtio 1.2, section 5.2) backed by a raw image file.
//!
//! One request queue, served by a worker thread started on activation. Each
//! request is a descriptor chain: a 16-byte header the device reads, data
//! buffers, and a status byte the device writes last. The chain comes from
//! the guest, so every descriptor is checked against guest memory before any
//! byte moves, and a malformed chain is answered (or dropped) without
//! stopping the queue.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{last_descriptor, Buffers, Incomplete, OutsideMemory, Segment};
use super::ring::{drain, RingNames};
use super::worker::{stop_slot, EventHandler, Worker};
use super::VIRTIO_F_VERSION_1;
use super::{
    read_config_space, ActivateContext, ActivateError, Interrupt, VirtioDevice, TYPE_BLOCK,
};
use crate::memory::GuestMemory;

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Data segments per request: a full queue less the header and status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// type (u32), reserved (u32), sector (u64).
const HEADER_LEN: usize = 16;
const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// capacity (u64), size_max (u32), seg_max (u32): the fields we fill in.
const CONFIG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open the disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect the disk image {path}: {source}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the disk image {path} is neither a regular file nor a block device")]
    NotADisk { path: PathBuf },
    #[error("the disk image {path} is smaller than one sector")]
    Empty { path: PathBuf },
}

/// A virtio-blk device.
pub struct Block {
    disk: Disk,
    features: u64,
    config: [u8; CONFIG_LEN],
    worker: Option<Worker<()>>,
}

impl Block {
    /// Opens the raw image at `path`; with `read_only` the file is opened
    /// read-only and the guest is told so (VIRTIO_BLK_F_RO).
    pub fn new(path: &Path, read_only: bool) -> Result<Block, BlockError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        let inspect = |source| BlockError::Inspect {
            path: path.to_owned(),
            source,
        };
        let meta = file.metadata().map_err(inspect)?;
        if !meta.file_type().is_file() && !meta.file_type().is_block_device() {
            return Err(BlockError::NotADisk {
                path: path.to_owned(),
            });
        }
        // Seeking to the end also sizes block devices, whose metadata says 0.
        let bytes = file.seek(SeekFrom::End(0)).map_err(inspect)?;
        let capacity = bytes / SECTOR_SIZE;
        if capacity == 0 {
            return Err(BlockError::Empty {
                path: path.to_owned(),
            });
        }
        if bytes % SECTOR_SIZE != 0 {
            warn!(
                path = %path.display(),
                bytes,
                "disk image size is not a whole number of sectors; the guest cannot see the tail"
            );
        }

        let mut features = VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());

        Ok(Block {
            disk: Disk {
                file,
                read_only,
                size: capacity * SECTOR_SIZE,
                id: disk_id(meta.dev(), meta.ino()),
            },
            features,
            config,
            worker: None,
        })
    }

    /// The disk size in 512-byte sectors, as the guest sees it.
    pub fn capacity(&self) -> u64 {
        self.disk.size / SECTOR_SIZE
    }
}

/// The serial number the guest reads with GET_ID (/sys/block/vdX/serial):
/// stable for a given image file, NUL-padded to 20 bytes.
fn disk_id(dev: u64, ino: u64) -> [u8; ID_LEN] {
    let text = format!("{dev:x}-{ino:x}");
    let mut id = [0u8; ID_LEN];
    let n = text.len().min(ID_LEN);
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
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
            "virtio-blk config space is read-only; write ignored"
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Invalid(
                "virtio-blk is already active".into(),
            ));
        }
        let ActivateContext {
            mem,
            queues,
            queue_events,
            interrupt,
            ..
        } = ctx;
        let (Some(queue), Some(queue_evt)) =
            (queues.into_iter().next(), queue_events.into_iter().next())
        else {
            return Err(ActivateError::Invalid(
                "virtio-blk needs its request queue".into(),
            ));
        };
        if !queue.ready() {
            return Err(ActivateError::Invalid(
                "the virtio-blk request queue is not ready".into(),
            ));
        }
        let fds = [(queue_evt.as_raw_fd(), EventSet::IN, TOKEN_QUEUE)];
        let handler = QueueWorker {
            handler: QueueHandler {
                mem,
                queue,
                disk: self.disk.try_clone().map_err(ActivateError::Worker)?,
                interrupt,
            },
            epoll: Epoll::new().map_err(ActivateError::Worker)?,
            queue_evt,
        };
        self.worker =
            Some(Worker::spawn("virtio-blk", handler, &fds).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        stop_slot(&mut self.worker)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        stop_slot(&mut self.worker);
    }
}

const TOKEN_QUEUE: u64 = 0;
/// What the queue's messages call it.
const NAMES: RingNames = RingNames {
    device: "virtio-blk",
    queue: "virtio-blk",
    chain: "virtio-blk chain to the guest",
};

/// The backing file and what the guest may do with it.
struct Disk {
    file: File,
    read_only: bool,
    /// Bytes the guest can reach: whole sectors only.
    size: u64,
    id: [u8; ID_LEN],
}

impl Disk {
    fn try_clone(&self) -> io::Result<Disk> {
        Ok(Disk {
            file: self.file.try_clone()?,
            read_only: self.read_only,
            size: self.size,
            id: self.id,
        })
    }

    /// Serves one chain; returns the number of bytes written into it, for
    /// the used ring (0 when the chain was dropped).
    fn process(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
        let head = chain.head_index();
        // The iterator stops after queue-size descriptors, at an index out of
        // the table, or on an unreadable descriptor, so this is bounded.
        let descs: Vec<Descriptor> = chain.collect();
        let status = match status_byte(mem, &descs) {
            Ok(addr) => addr,
            Err(e) => {
                debug!(head, error = %e, "malformed virtio-blk chain dropped");
                return 0;
            }
        };
        let (code, written) = match Request::parse(mem, &descs).and_then(|r| self.execute(mem, &r))
        {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(RequestError::Unsupported(kind)) => {
                debug!(head, kind, "unsupported virtio-blk request");
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
            // The buffers were checked against guest memory, so these are
            // host-side failures worth seeing.
            Err(e @ (RequestError::Disk(_) | RequestError::Transfer(_))) => {
                warn!(head, error = %e, "virtio-blk request failed");
                (VIRTIO_BLK_S_IOERR, 0)
            }
            Err(e) => {
                debug!(head, error = %e, "virtio-blk request refused");
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        if let Err(e) = mem.write_obj(code as u8, status) {
            debug!(head, error = %e, "cannot write the virtio-blk status byte");
            return 0;
        }
        // Data plus status fit in the chain, which the descriptor iterator
        // keeps below 2^32 bytes.
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    /// Runs a parsed request; returns the data bytes written to the guest.
    fn execute(&mut self, mem: &GuestMemory, req: &Request) -> Result<usize, RequestError> {
        let mut header = [0u8; HEADER_LEN];
        let got = req
            .readable
            .read_at(mem, 0, &mut header)
            .map_err(RequestError::Transfer)?;
        if got < HEADER_LEN {
            return Err(RequestError::ShortHeader(got));
        }
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4-byte slice"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8-byte slice"));
        // What a write carries follows the header.
        let out_len = req.readable.len() - HEADER_LEN;
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = req.writable.len();
                if len == 0 || out_len != 0 {
                    return Err(RequestError::WrongDirection("read"));
                }
                self.seek(sector, len as u64)?;
                req.writable.for_range(0, len, |addr, r| {
                    mem.read_exact_volatile_from(addr, &mut self.file, r.len())
                        .map_err(RequestError::Transfer)
                })?;
                Ok(len)
            }
            VIRTIO_BLK_T_OUT => {
                if out_len == 0 || !req.writable.is_empty() {
                    return Err(RequestError::WrongDirection("write"));
                }
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                self.seek(sector, out_len as u64)?;
                req.readable.for_range(HEADER_LEN, out_len, |addr, r| {
                    mem.write_all_volatile_to(addr, &mut self.file, r.len())
                        .map_err(RequestError::Transfer)
                })?;
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.file.sync_all().map_err(RequestError::Disk)?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                if req.writable.is_empty() {
                    return Err(RequestError::WrongDirection("get-id"));
                }
                req.writable
                    .write_at(mem, 0, &self.id)
                    .map_err(RequestError::Transfer)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// Checks that `len` bytes from `sector` lie inside the disk and moves
    /// the file offset there.
    fn seek(&mut self, sector: u64, len: u64) -> Result<(), RequestError> {
        if len % SECTOR_SIZE != 0 {
            return Err(RequestError::PartialSector(len));
        }
        let start = sector
            .checked_mul(SECTOR_SIZE)
            .filter(|start| start.checked_add(len).is_some_and(|end| end <= self.size))
            .ok_or(RequestError::PastEnd { sector, len })?;
        self.file
            .seek(SeekFrom::Start(start))
            .map_err(RequestError::Disk)?;
        Ok(())
    }
}

/// Why a request got IOERR or UNSUPP.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("descriptor {addr:#x}+{len:#x} lies outside guest memory")]
    OutsideMemory { addr: u64, len: usize },
    #[error("a device-readable buffer follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the request header is {0} bytes, not 16")]
    ShortHeader(usize),
    #[error("the data buffers of a {0} request are missing or in the wrong direction")]
    WrongDirection(&'static str),
    #[error("the data length {0} is not a whole number of sectors")]
    PartialSector(u64),
    #[error("{len} bytes from sector {sector} lie past the end of the disk")]
    PastEnd { sector: u64, len: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("copying between the disk and guest memory failed: {0}")]
    Transfer(#[source] GuestMemoryError),
    #[error("disk I/O failed: {0}")]
    Disk(#[source] io::Error),
}

/// Why a chain has no usable status byte and must be dropped.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("the chain is empty")]
    Empty,
    #[error("the chain is cut short: a loop, a bad next index or an unreadable descriptor")]
    Truncated,
    #[error("the last descriptor is not a device-writable buffer inside guest memory")]
    NoStatus,
}

impl From<Incomplete> for ChainError {
    fn from(e: Incomplete) -> Self {
        match e {
            Incomplete::Empty => ChainError::Empty,
            Incomplete::CutShort => ChainError::Truncated,
        }
    }
}

impl From<OutsideMemory> for RequestError {
    fn from(OutsideMemory { addr, len }: OutsideMemory) -> Self {
        RequestError::OutsideMemory { addr, len }
    }
}

/// The status byte is the last byte of the last descriptor (5.2.6).
fn status_byte(mem: &GuestMemory, descs: &[Descriptor]) -> Result<GuestAddress, ChainError> {
    let last = last_descriptor(descs)?;
    if !last.is_write_only() || last.len() == 0 {
        return Err(ChainError::NoStatus);
    }
    last.addr()
        .checked_add(u64::from(last.len()) - 1)
        .filter(|&addr| mem.check_range(addr, 1))
        .ok_or(ChainError::NoStatus)
}

/// A chain split by direction: what the device reads (header, then data
/// for a write) and what it writes (data for a read), the status byte
/// excluded.
struct Request {
    readable: Buffers,
    writable: Buffers,
}

impl Request {
    fn parse(mem: &GuestMemory, descs: &[Descriptor]) -> Result<Request, RequestError> {
        let mut readable = Buffers::default();
        let mut writable = Buffers::default();
        let last = descs.len().saturating_sub(1);
        for (i, d) in descs.iter().enumerate() {
            let mut len = d.len() as usize;
            if i == last {
                // The status byte, already checked by status_byte().
                len -= 1;
            }
            let Some(segment) = Segment::checked(mem, d.addr(), len)? else {
                continue;
            };
            if d.is_write_only() {
                writable.push(segment);
            } else if writable.is_empty() {
                readable.push(segment);
            } else {
                return Err(RequestError::ReadableAfterWritable);
            }
        }
        Ok(Request { readable, writable })
    }
}

/// What the worker thread owns: the queue, guest memory and its own handle
/// on the disk.
struct QueueHandler {
    mem: GuestMemory,
    queue: Queue,
    disk: Disk,
    interrupt: Arc<Interrupt>,
}

/// The queue handler on the device's worker thread, woken by the queue's
/// eventfd.
struct QueueWorker {
    handler: QueueHandler,
    epoll: Epoll,
    queue_evt: EventFd,
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
    fn process_queue(&mut self) {
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
    use std::io::{Read, Write};
    use std::thread;
    use std::time::{Duration, Instant};

    use tempfile::NamedTempFile;
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_DISCARD;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::devices::virtio::INT_USED_RING;

    const MEM_SIZE: u64 = 0x10_0000;
    const QUEUE_LEN: u16 = 16;
    const SECTORS: u64 = 64;
    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const DATA2: u64 = 0x3_0000;
    const STATUS: u64 = 0x4_0000;
    const R: bool = false;
    const W: bool = true;

    /// A disk whose every byte is its sector number.
    fn image() -> NamedTempFile {
        let mut f = NamedTempFile::new().unwrap();
        for sector in 0..SECTORS {
            f.write_all(&[sector as u8; SECTOR_SIZE as usize]).unwrap();
        }
        f
    }

    fn file_bytes(f: &NamedTempFile, offset: u64, len: usize) -> Vec<u8> {
        let mut all = Vec::new();
        File::open(f.path()).unwrap().read_to_end(&mut all).unwrap();
        all[offset as usize..offset as usize + len].to_vec()
    }

    /// virtio-queue's mock places its used ring over the tail of the
    /// available ring (it sizes the latter in entries, not bytes), so the
    /// queue under test gets a used ring of its own.
    const USED_RING: u64 = 0x8000;

    fn queue(vq: &MockSplitQueue<'_, GuestMemory>) -> Queue {
        let mut q: Queue = vq.create_queue().unwrap();
        q.try_set_used_ring_address(GuestAddress(USED_RING))
            .unwrap();
        q
    }

    fn used_idx(mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
    }

    fn guest_memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
    }

    /// Plays the driver: writes requests into a split queue at guest address
    /// 0 and runs the device's queue handler on them, without a thread.
    struct Harness<'a> {
        mem: &'a GuestMemory,
        vq: MockSplitQueue<'a, GuestMemory>,
        handler: QueueHandler,
    }

    impl<'a> Harness<'a> {
        fn new(mem: &'a GuestMemory, block: &Block) -> Harness<'a> {
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

        fn header(&self, kind: u32, sector: u64) {
            let mut h = [0u8; HEADER_LEN];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        }

        /// Submits descriptors exactly as given (flags and next included) and
        /// returns the used ring's index and the last used length.
        fn submit_raw(&mut self, descs: &[RawDescriptor]) -> (u16, u32) {
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            self.vq.add_desc_chains(descs, 0).unwrap();
            self.handler.process_queue();
            self.used()
        }

        fn used(&self) -> (u16, u32) {
            let idx = used_idx(self.mem);
            let last = u64::from(idx.wrapping_sub(1) % QUEUE_LEN);
            let len: u32 = self
                .mem
                .read_obj(GuestAddress(USED_RING + 4 + 8 * last + 4))
                .unwrap();
            (idx, len)
        }

        /// Submits a well-linked chain of (address, length, device-writable).
        fn submit(&mut self, descs: &[(u64, u32, bool)]) -> (u16, u32) {
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, write))| {
                    let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
                    if i + 1 < descs.len() {
                        flags |= VRING_DESC_F_NEXT;
                    }
                    raw(addr, len, flags, i as u16 + 1)
                })
                .collect();
            self.submit_raw(&raw)
        }

        fn status(&self) -> u8 {
            self.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }

        /// A request with one data buffer; returns (used length, status).
        fn request(&mut self, kind: u32, sector: u64, data: Option<(u32, bool)>) -> (u32, u32) {
            self.header(kind, sector);
            let mut descs = vec![(HDR, HEADER_LEN as u32, R)];
            descs.extend(data.map(|(len, write)| (DATA, len, write)));
            descs.push((STATUS, 1, W));
            let (_, len) = self.submit(&descs);
            (len, self.status().into())
        }
    }

    fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    }

    #[test]
    fn new_names_the_file_it_cannot_use() {
        let missing = Path::new("/nonexistent/kata-rs-disk.img");
        let e = Block::new(missing, true).err().unwrap();
        assert!(matches!(e, BlockError::Open { .. }));
        assert!(
            e.to_string().contains("/nonexistent/kata-rs-disk.img"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let e = Block::new(dir.path(), true).err().unwrap();
        assert!(matches!(e, BlockError::NotADisk { .. }), "{e}");

        let empty = NamedTempFile::new().unwrap();
        let e = Block::new(empty.path(), false).err().unwrap();
        assert!(matches!(e, BlockError::Empty { .. }), "{e}");
    }

    #[test]
    fn describes_the_disk() {
        let img = image();
        let rw = Block::new(img.path(), false).unwrap();
        assert_eq!(rw.device_type(), TYPE_BLOCK);
        assert_eq!(rw.capacity(), SECTORS);
        assert_eq!(rw.queue_max_sizes(), &[QUEUE_SIZE]);
        let base = VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
        assert_eq!(rw.features(), base);
        let ro = Block::new(img.path(), true).unwrap();
        assert_eq!(ro.features(), base | 1 << VIRTIO_BLK_F_RO);

        let mut b = [0u8; 8];
        rw.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), SECTORS);
        let mut b = [0u8; 4];
        rw.read_config(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), SEG_MAX);
        let mut b = [0xffu8; 8];
        rw.read_config(12, &mut b);
        assert_eq!(b, [SEG_MAX as u8, 0, 0, 0, 0, 0, 0, 0]);
        for offset in [CONFIG_LEN as u64, 0x1000, u64::MAX] {
            let mut b = [0xffu8; 4];
            rw.read_config(offset, &mut b);
            assert_eq!(b, [0; 4]);
        }
    }

    #[test]
    fn write_then_read_round_trip() {
        let img = image();
        let block = Block::new(img.path(), false).unwrap();
        let mem = guest_memory();
        let mut h = Harness::new(&mem, &block);
        let payload: Vec<u8> = (0..1024).map(|i| (i * 7 % 251) as u8).collect();
        h.mem
            .write_slice(&payload[..512], GuestAddress(DATA))
            .unwrap();
        h.mem
            .write_slice(&payload[512..], GuestAddress(DATA2))
            .unwrap();
        h.header(VIRTIO_BLK_T_OUT, 3);
        let (idx, len) = h.submit(&[
            (HDR, 16, R),
            (DATA, 512, R),
            (DATA2, 512, R),
            (STATUS, 1, W),
        ]);
        assert_eq!((idx, len, h.status()), (1, 1, VIRTIO_BLK_S_OK as u8));
        assert_eq!(file_bytes(&img, 3 * SECTOR_SIZE, 1024), payload);
        assert_eq!(file_bytes(&img, 5 * SECTOR_SIZE, 1), [5]);

        h.header(VIRTIO_BLK_T_IN, 2);
        let (idx, len) = h.submit(&[(HDR, 16, R), (DATA, 1536, W), (STATUS, 1, W)]);
        assert_eq!((idx, len, h.status()), (2, 1537, VIRTIO_BLK_S_OK as u8));
        let mut back = vec![0u8; 1536];
        h.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back[..512], [2u8; 512]);
        assert_eq!(back[512..], payload[..]);
    }

    #[test]
    fn any_descriptor_layout_is_accepted() {
        let img = image();
        let block = Block::new(img.path(), false).unwrap();
        let mem = guest_memory();
        let mut h = Harness::new(&mem, &block);
        // Header and data in one descriptor, status in the next.
        h.header(VIRTIO_BLK_T_OUT, 1);
        h.mem
            .write_slice(&[0xabu8; 512], GuestAddress(HDR + 16))
            .unwrap();
        let (_, len) = h.submit(&[(HDR, 16 + 512, R), (STATUS, 1, W)]);
        assert_eq!((len, h.status()), (1, VIRTIO_BLK_S_OK as u8));
        assert_eq!(file_bytes(&img, SECTOR_SIZE, 512), [0xab; 512]);
        // Data and status in one descriptor: the status is its last byte.
        h.header(VIRTIO_BLK_T_IN, 4);
        let (_, len) = h.submit(&[(HDR, 16, R), (DATA, 513, W)]);
        assert_eq!(len, 513);
        let status: u8 = h.mem.read_obj(GuestAddress(DATA + 512)).unwrap();
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        let first: u8 = h.mem.read_obj(GuestAddress(DATA)).unwrap();
        assert_eq!(first, 4);
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let img = image();
        let block = Block::new(img.path(), true).unwrap();
        let mem = guest_memory();
        let mut h = Harness::new(&mem, &block);
        h.mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            h.request(VIRTIO_BLK_T_OUT, 0, Some((512, R))),
            (1, VIRTIO_BLK_S_IOERR)
        );
        assert_eq!(file_bytes(&img, 0, 512), [0; 512]);
        assert_eq!(
            h.request(VIRTIO_BLK_T_IN, 9, Some((512, W))),
            (513, VIRTIO_BLK_S_OK)
        );
        assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, None), (1, VIRTIO_BLK_S_OK));
    }

    #[test]
    fn flush_get_id_and_unsupported_requests() {
        let img = image();
        let block = Block::new(img.path(), false).unwrap();
        let mem = guest_memory();
        let mut h = Harness::new(&mem, &block);
        assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, None), (1, VIRTIO_BLK_S_OK));

        assert_eq!(
            h.request(VIRTIO_BLK_T_GET_ID, 0, Some((ID_LEN as u32, W))),
            (ID_LEN as u32 + 1, VIRTIO_BLK_S_OK)
        );
        let meta = std::fs::metadata(img.path()).unwrap();
        let want = format!("{:x}-{:x}", meta.dev(), meta.ino());
        let mut id = [0u8; ID_LEN];
        h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        let n = want.len().min(ID_LEN);
        assert_eq!(&id[..n], &want.as_bytes()[..n]);
        assert!(id[n..].iter().all(|&b| b == 0));
        // A shorter buffer gets what fits.
        assert_eq!(
            h.request(VIRTIO_BLK_T_GET_ID, 0, Some((4, W))),
            (5, VIRTIO_BLK_S_OK)
        );
        assert_eq!(
            h.request(VIRTIO_BLK_T_GET_ID, 0, None),
            (1, VIRTIO_BLK_S_IOERR)
        );

        for kind in [VIRTIO_BLK_T_DISCARD, 2, u32::MAX] {
            assert_eq!(h.request(kind, 0, Some((512, R))), (1, VIRTIO_BLK_S_UNSUPP));
        }
    }

    #[test]
    fn bad_buffers_get_ioerr() {
        let img = image();
        let block = Block::new(img.path(), false).unwrap();
        let mem = guest_memory();
        let mut h = Harness::new(&mem, &block);
        let ioerr = (1, VIRTIO_BLK_S_IOERR);
        // Sectors past the end, or whose byte offset overflows.
        assert_eq!(
            h.request(VIRTIO_BLK_T_IN, SECTORS - 1, Some((1024, W))),
            ioerr
        );
        assert_eq!(h.request(VIRTIO_BLK_T_IN, SECTORS, Some((512, W))), ioerr);
        assert_eq!(h.request(VIRTIO_BLK_T_OUT, u64::MAX, Some((512, R))), ioerr);
        assert_eq!(
            h.request(VIRTIO_BLK_T_IN, u64::MAX / 512, Some((1024, W))),
            ioerr
        );
        assert_eq!(
            h.request(VIRTIO_BLK_T_IN, SECTORS - 1, Some((512, W))),
            (513, VIRTIO_BLK_S_OK)
        );
        // Not a whole sector.
        assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, Some((100, W))), ioerr);
        // Data in the wrong direction, or missing.
        assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, Some((512, R))), ioerr);
        assert_eq!(h.request(VIRTIO_BLK_T_OUT, 0, Some((512, W))), ioerr);
        assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, None), ioerr);
        assert_eq!(h.request(VIRTIO_BLK_T_OUT, 0, None), ioerr);

        h.header(VIRTIO_BLK_T_OUT, 0);
        // A device-readable buffer after a device-writable one.
        let (_, len) = h.submit(&[
            (HDR, 16, R),
            (DATA, 512, W),
            (DATA2, 512, R),
            (STATUS, 1, W),
        ]);
        assert_eq!((len, h.status()), (1, VIRTIO_BLK_S_IOERR as u8));
        // A header that is too short.
        let (_, len) = h.submit(&[(HDR, 8, R), (STATUS, 1, W)]);
        assert_eq!((len, h.status()), (1, VIRTIO_BLK_S_IOERR as u8));
        let (_, len) = h.submit(&[(STATUS, 1, W)]);
        assert_eq!((len, h.status()), (1, VIRTIO_BLK_S_IOERR as u8));
        // Data buffers outside guest memory: past its end, and wrapping
        // around the address space.
        h.header(VIRTIO_BLK_T_IN, 0);
        for addr in [MEM_SIZE - 256, MEM_SIZE + 0x1000, u64::MAX - 16] {
            let (_, len) = h.submit(&[(HDR, 16, R), (addr, 512, W), (STATUS, 1, W)]);
            assert_eq!(
                (len, h.status()),
                (1, VIRTIO_BLK_S_IOERR as u8),
                "{addr:#x}"
            );
        }
        h.header(VIRTIO_BLK_T_OUT, 0);
        let (_, len) = h.submit(&[(HDR, 16, R), (u64::MAX - 16, 512, R), (STATUS, 1, W)]);
        assert_eq!((len, h.status()), (1, VIRTIO_BLK_S_IOERR as u8));
        // The header itself outside guest memory.
        let (_, len) = h.submit(&[(MEM_SIZE - 8, 16, R), (STATUS, 1, W)]);
        assert_eq!((len, h.status()), (1, VIRTIO_BLK_S_IOERR as u8));
        assert_eq!(file_bytes(&img, 0, 512), [0; 512]);
    }

    #[test]
    fn chains_without_a_status_byte_are_dropped() {
        let img = image();
        let block = Block::new(img.path(), false).unwrap();
        let mem = guest_memory();
        let mut h = Harness::new(&mem, &block);
        h.header(VIRTIO_BLK_T_IN, 0);
        let mut served = 0;
        let mut dropped = |h: &mut Harness, (idx, len): (u16, u32)| {
            served += 1;
            assert_eq!((idx, len, h.status()), (served, 0, 0xff));
        };
        // The last descriptor is device-readable, empty, or outside memory.
        let r = h.submit(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)]);
        dropped(&mut h, r);
        let r = h.submit(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 0, W)]);
        dropped(&mut h, r);
        let r = h.submit(&[(HDR, 16, R), (MEM_SIZE, 1, W)]);
        dropped(&mut h, r);
        let r = h.submit(&[(HDR, 16, R), (u64::MAX, 1, W)]);
        dropped(&mut h, r);
        // A loop: 0 -> 1 -> 0 -> ...
        let r = h.submit_raw(&[
            raw(HDR, 16, VRING_DESC_F_NEXT, 1),
            raw(STATUS, 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0),
        ]);
        dropped(&mut h, r);
        // A next index outside the descriptor table.
        let r = h.submit_raw(&[raw(HDR, 16, VRING_DESC_F_NEXT, 200)]);
        dropped(&mut h, r);
        // Lengths adding up past 2^32 bytes.
        let r = h.submit_raw(&[
            raw(HDR, 16, VRING_DESC_F_NEXT, 1),
            raw(
                DATA,
                u32::MAX - 8,
                VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                2,
            ),
            raw(STATUS, 1, VRING_DESC_F_WRITE, 0),
        ]);
        dropped(&mut h, r);
        // An indirect table outside guest memory.
        let r = h.submit_raw(&[raw(MEM_SIZE, 64, VRING_DESC_F_INDIRECT, 0)]);
        dropped(&mut h, r);

        // The queue still serves good requests.
        let r = h.submit(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
        assert_eq!((r, h.status()), ((served + 1, 513), VIRTIO_BLK_S_OK as u8));
    }

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

    #[test]
    fn worker_serves_the_queue_until_reset() {
        let img = image();
        let mut block = Block::new(img.path(), false).unwrap();
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_LEN);
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let queue_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let activate = |block: &mut Block| {
            block.activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![queue(&vq)],
                queue_events: vec![queue_evt.try_clone().unwrap()],
                interrupt: interrupt.clone(),
                acked_features: block.features(),
            })
        };
        activate(&mut block).unwrap();
        assert!(matches!(
            activate(&mut block),
            Err(ActivateError::Invalid(_))
        ));

        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h[8..16].copy_from_slice(&7u64.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        vq.add_desc_chains(
            &[
                raw(HDR, 16, VRING_DESC_F_NEXT, 1),
                raw(DATA, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
                raw(STATUS, 1, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        queue_evt.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while interrupt.status() & INT_USED_RING == 0 {
            assert!(
                Instant::now() < deadline,
                "the worker did not serve the queue"
            );
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(used_idx(&mem), 1);
        let byte: u8 = mem.read_obj(GuestAddress(DATA)).unwrap();
        assert_eq!(byte, 7);

        assert!(block.reset());
        assert!(block.worker.is_none());
        assert!(block.reset(), "a second reset has nothing to stop");
        // Activatable again after a reset; dropping the device stops it.
        activate(&mut block).unwrap();
        drop(block);

        let mut no_queue = Block::new(img.path(), false).unwrap();
        let e = no_queue.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![],
            queue_events: vec![],
            interrupt: interrupt.clone(),
            acked_features: 0,
        });
        assert!(matches!(e, Err(ActivateError::Invalid(_))));
    }
}
