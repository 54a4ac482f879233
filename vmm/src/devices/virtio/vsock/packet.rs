//! virtio-vsock packets (virtio 1.2, 5.10.6): the 44-byte little-endian
//! header and the copying of packets out of tx chains and into rx chains.
//!
//! Every chain is guest-controlled. Each descriptor is checked for direction
//! and against guest memory before a byte is copied, lengths are bounded, and
//! nothing here panics; a bad chain yields a [`PacketError`] and the caller
//! returns it to the guest unused.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemory;

pub const HDR_SIZE: usize = 44;
/// The payload limit of one packet, in both directions. Linux never puts
/// more than 64 KiB in a packet; anything larger is refused rather than
/// buffered.
pub const MAX_PKT_DATA: usize = 64 * 1024;

pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor [{addr:#x}, +{len:#x}) is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("device-writable descriptor in a tx chain")]
    WritableOnTx,
    #[error("device-readable descriptor in an rx chain")]
    ReadableOnRx,
    #[error("chain of {0} bytes cannot hold the {HDR_SIZE}-byte header")]
    ShortHeader(u64),
    #[error("header announces {len} payload bytes, the chain holds {avail}")]
    LenBeyondChain { len: u32, avail: u64 },
    #[error("payload of {0} bytes exceeds the {MAX_PKT_DATA}-byte limit")]
    Oversized(u32),
    #[error("guest memory access failed: {0}")]
    Memory(String),
}

/// A checked scatter-gather list: every segment lies inside guest memory.
#[derive(Debug)]
struct Segments {
    segs: Vec<(GuestAddress, u32)>,
    total: u64,
}

impl Segments {
    /// Walks `chain`, keeping the descriptors of the wanted direction and
    /// failing on any other. The chain iterator itself stops on loops (it
    /// yields at most queue-size descriptors) and on unreadable descriptors.
    fn collect<M>(
        mem: &GuestMemory,
        chain: DescriptorChain<M>,
        writable: bool,
    ) -> Result<Self, PacketError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut segs = Vec::new();
        let mut total: u64 = 0;
        for desc in chain {
            if desc.is_write_only() != writable {
                return Err(if writable {
                    PacketError::ReadableOnRx
                } else {
                    PacketError::WritableOnTx
                });
            }
            if !mem.check_range(desc.addr(), desc.len() as usize) {
                return Err(PacketError::OutOfMemory {
                    addr: desc.addr().0,
                    len: desc.len(),
                });
            }
            total += u64::from(desc.len());
            segs.push((desc.addr(), desc.len()));
        }
        Ok(Self { segs, total })
    }

    /// Visits the guest ranges covering `[offset, offset + len)`.
    fn for_range(
        &self,
        mut offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), PacketError>,
    ) -> Result<(), PacketError> {
        let mut done = 0usize;
        for &(addr, seg_len) in &self.segs {
            if done == len {
                break;
            }
            let seg_len = u64::from(seg_len);
            if offset >= seg_len {
                offset -= seg_len;
                continue;
            }
            // Bounded by `len`, so it fits a usize.
            let n = (seg_len - offset).min((len - done) as u64) as usize;
            // The segment lies in guest memory, so this cannot overflow.
            f(GuestAddress(addr.0 + offset), done..done + n)?;
            done += n;
            offset = 0;
        }
        Ok(())
    }
}

fn mem_err(e: vm_memory::GuestMemoryError) -> PacketError {
    PacketError::Memory(e.to_string())
}

/// A packet the guest sent on the tx queue.
#[derive(Debug, PartialEq, Eq)]
pub struct TxPacket {
    pub hdr: Header,
    pub data: Vec<u8>,
}

impl TxPacket {
    /// Copies a packet out of a tx chain: the header, then `hdr.len` bytes of
    /// payload (only RW carries one; other ops may not claim any).
    pub fn read<M>(mem: &GuestMemory, chain: DescriptorChain<M>) -> Result<Self, PacketError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let segs = Segments::collect(mem, chain, false)?;
        if segs.total < HDR_SIZE as u64 {
            return Err(PacketError::ShortHeader(segs.total));
        }
        let mut raw = [0u8; HDR_SIZE];
        segs.for_range(0, HDR_SIZE, |addr, r| {
            mem.read_slice(&mut raw[r], addr).map_err(mem_err)
        })?;
        let hdr = Header::from_bytes(&raw);
        let avail = segs.total - HDR_SIZE as u64;
        if hdr.len as usize > MAX_PKT_DATA {
            return Err(PacketError::Oversized(hdr.len));
        }
        if u64::from(hdr.len) > avail {
            return Err(PacketError::LenBeyondChain {
                len: hdr.len,
                avail,
            });
        }
        let mut data = vec![0u8; hdr.len as usize];
        segs.for_range(HDR_SIZE as u64, data.len(), |addr, r| {
            mem.read_slice(&mut data[r], addr).map_err(mem_err)
        })?;
        Ok(Self { hdr, data })
    }
}

/// A validated rx chain, ready to receive one packet.
#[derive(Debug)]
pub struct RxBuffer {
    segs: Segments,
}

impl RxBuffer {
    pub fn new<M>(mem: &GuestMemory, chain: DescriptorChain<M>) -> Result<Self, PacketError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let segs = Segments::collect(mem, chain, true)?;
        if segs.total < HDR_SIZE as u64 {
            return Err(PacketError::ShortHeader(segs.total));
        }
        Ok(Self { segs })
    }

    /// The largest payload this buffer takes.
    pub fn data_capacity(&self) -> usize {
        let room = self.segs.total - HDR_SIZE as u64;
        room.min(MAX_PKT_DATA as u64) as usize
    }

    /// Writes `hdr` (its `len` set to the payload's) and `data`, and returns
    /// the number of bytes written, for the used ring.
    pub fn write(&self, mem: &GuestMemory, hdr: &Header, data: &[u8]) -> Result<u32, PacketError> {
        let data = &data[..data.len().min(self.data_capacity())];
        // data_capacity() is at most MAX_PKT_DATA, so this fits.
        let len = data.len() as u32;
        let raw = Header { len, ..*hdr }.to_bytes();
        self.segs.for_range(0, HDR_SIZE, |addr, r| {
            mem.write_slice(&raw[r], addr).map_err(mem_err)
        })?;
        self.segs
            .for_range(HDR_SIZE as u64, data.len(), |addr, r| {
                mem.write_slice(&data[r], addr).map_err(mem_err)
            })?;
        Ok(HDR_SIZE as u32 + len)
    }
}
