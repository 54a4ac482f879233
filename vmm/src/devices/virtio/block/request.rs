//! A request chain as the guest builds it (5.2.6): device-readable header
//! and data, then device-writable data and, in the last byte of the last
//! descriptor, the status.

use std::io;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::devices::virtio::chain::{last_descriptor, Buffers, Incomplete, OutsideMemory, Segment};
use crate::memory::GuestMemory;

/// Why a request got IOERR or UNSUPP.
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
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
pub(super) enum ChainError {
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
pub(super) fn status_byte(
    mem: &GuestMemory,
    descs: &[Descriptor],
) -> Result<GuestAddress, ChainError> {
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
pub(super) struct Request {
    pub(super) readable: Buffers,
    pub(super) writable: Buffers,
}

impl Request {
    pub(super) fn parse(mem: &GuestMemory, descs: &[Descriptor]) -> Result<Request, RequestError> {
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

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };

    use crate::devices::virtio::block::harness::*;
    use crate::devices::virtio::block::Block;

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
}
