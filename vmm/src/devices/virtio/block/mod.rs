//! virtio-blk (virtio 1.2, section 5.2) backed by a raw image file.
//!
//! One request queue, served by a worker thread started on activation. Each
//! request is a descriptor chain: a 16-byte header the device reads, data
//! buffers, and a status byte the device writes last. The chain comes from
//! the guest, so every descriptor is checked against guest memory before any
//! byte moves, and a malformed chain is answered (or dropped) without
//! stopping the queue.
//!
//! Modules: `disk` (serving one request on the image), `request` (a chain
//! parsed into a request), `worker` (the queue on the worker thread).

mod disk;
#[cfg(test)]
mod harness;
mod request;
mod worker;

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
};
use virtio_queue::QueueT;
use vmm_sys_util::epoll::{Epoll, EventSet};

use super::worker::{stop_slot, Worker};
use super::VIRTIO_F_VERSION_1;
use super::{read_config_space, ActivateContext, ActivateError, VirtioDevice, TYPE_BLOCK};
use disk::Disk;
use worker::{QueueHandler, QueueWorker, TOKEN_QUEUE};

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

    fn thread_kind(&self) -> crate::seccomp::ThreadKind {
        crate::seccomp::ThreadKind::Block
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
            thread,
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
        self.worker = Some(
            Worker::spawn(&thread, handler, &fds).map_err(|e| ActivateError::Worker(e.error))?,
        );
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    use tempfile::NamedTempFile;
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::harness::*;
    use super::*;
    use crate::devices::virtio::test_driver;
    use crate::devices::virtio::{Interrupt, INT_USED_RING};

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
                thread: test_driver::thread(),
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
            thread: test_driver::thread(),
        });
        assert!(matches!(e, Err(ActivateError::Invalid(_))));
    }
}
