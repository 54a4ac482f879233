//! The image behind the device and what one request does to it: the chain
//! checked and parsed, the request run, the status byte written last.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::Bytes;

use super::request::{status_byte, Request, RequestError};
use super::{HEADER_LEN, ID_LEN, SECTOR_SIZE};
use crate::memory::GuestMemory;

/// The backing file and what the guest may do with it.
pub(super) struct Disk {
    pub(super) file: File,
    pub(super) read_only: bool,
    /// Bytes the guest can reach: whole sectors only.
    pub(super) size: u64,
    pub(super) id: [u8; ID_LEN],
}

impl Disk {
    pub(super) fn try_clone(&self) -> io::Result<Disk> {
        Ok(Disk {
            file: self.file.try_clone()?,
            read_only: self.read_only,
            size: self.size,
            id: self.id,
        })
    }

    /// Serves one chain; returns the number of bytes written into it, for
    /// the used ring (0 when the chain was dropped).
    pub(super) fn process(
        &mut self,
        mem: &GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
    ) -> u32 {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_DISCARD;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::block::harness::*;
    use crate::devices::virtio::block::Block;

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
}
