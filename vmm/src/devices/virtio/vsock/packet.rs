//! virtio-vsock packets (virtio 1.2, 5.10.6): the 44-byte little-endian
//! header and the copying of packets out of tx chains and into rx chains.
//!
//! Every chain is guest-controlled. Each descriptor is checked for direction
//! and against guest memory before a byte is copied, lengths are bounded, and
//! nothing here panics; a bad chain yields a [`PacketError`] and the caller
//! returns it to the guest unused.

use std::ops::Deref;

use virtio_queue::DescriptorChain;

use crate::devices::virtio::chain::{Buffers, OneWayError, OutsideMemory};

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

impl From<OneWayError> for PacketError {
    fn from(e: OneWayError) -> Self {
        match e {
            OneWayError::Direction { writable: true } => PacketError::ReadableOnRx,
            OneWayError::Direction { writable: false } => PacketError::WritableOnTx,
            // A descriptor is at most u32::MAX bytes.
            OneWayError::Outside(OutsideMemory { addr, len }) => PacketError::OutOfMemory {
                addr,
                len: len as u32,
            },
        }
    }
}

/// Walks `chain`, keeping the descriptors of the wanted direction and
/// failing on any other. A chain cut short (a loop, a bad next index) is
/// taken as far as it goes.
fn collect<M>(
    mem: &GuestMemory,
    chain: DescriptorChain<M>,
    writable: bool,
) -> Result<Buffers, PacketError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    // No limit here: the header says how much is copied.
    Buffers::one_way(mem, chain, writable, |_| Ok(()))
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
        let segs = collect(mem, chain, false)?;
        let total = segs.len() as u64;
        if total < HDR_SIZE as u64 {
            return Err(PacketError::ShortHeader(total));
        }
        let mut raw = [0u8; HDR_SIZE];
        segs.read_at(mem, 0, &mut raw).map_err(mem_err)?;
        let hdr = Header::from_bytes(&raw);
        let avail = total - HDR_SIZE as u64;
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
        segs.read_at(mem, HDR_SIZE, &mut data).map_err(mem_err)?;
        Ok(Self { hdr, data })
    }
}

/// A validated rx chain, ready to receive one packet.
#[derive(Debug)]
pub struct RxBuffer {
    segs: Buffers,
}

impl RxBuffer {
    pub fn new<M>(mem: &GuestMemory, chain: DescriptorChain<M>) -> Result<Self, PacketError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let segs = collect(mem, chain, true)?;
        if segs.len() < HDR_SIZE {
            return Err(PacketError::ShortHeader(segs.len() as u64));
        }
        Ok(Self { segs })
    }

    /// The largest payload this buffer takes.
    pub fn data_capacity(&self) -> usize {
        (self.segs.len() - HDR_SIZE).min(MAX_PKT_DATA)
    }

    /// Writes `hdr` (its `len` set to the payload's) and `data`, and returns
    /// the number of bytes written, for the used ring.
    pub fn write(&self, mem: &GuestMemory, hdr: &Header, data: &[u8]) -> Result<u32, PacketError> {
        let data = &data[..data.len().min(self.data_capacity())];
        // data_capacity() is at most MAX_PKT_DATA, so this fits.
        let len = data.len() as u32;
        let raw = Header { len, ..*hdr }.to_bytes();
        self.segs.write_at(mem, 0, &raw).map_err(mem_err)?;
        self.segs.write_at(mem, HDR_SIZE, data).map_err(mem_err)?;
        Ok(HDR_SIZE as u32 + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    const BUF: u64 = 0x10_0000;

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
    }

    fn header(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 1024,
            len,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    fn read_tx(mem: &GuestMemory, descs: &[RawDescriptor]) -> Result<TxPacket, PacketError> {
        let vq = MockSplitQueue::new(mem, 16);
        TxPacket::read(mem, vq.build_desc_chain(descs).unwrap())
    }

    fn rx_buffer(mem: &GuestMemory, descs: &[RawDescriptor]) -> Result<RxBuffer, PacketError> {
        let vq = MockSplitQueue::new(mem, 16);
        RxBuffer::new(mem, vq.build_desc_chain(descs).unwrap())
    }

    #[test]
    fn header_layout_is_little_endian() {
        let hdr = header(5);
        let raw = hdr.to_bytes();
        assert_eq!(&raw[0..8], &3u64.to_le_bytes());
        assert_eq!(&raw[24..28], &5u32.to_le_bytes());
        assert_eq!(&raw[30..32], &OP_RW.to_le_bytes());
        assert_eq!(&raw[40..44], &7u32.to_le_bytes());
        assert_eq!(Header::from_bytes(&raw), hdr);
    }

    #[test]
    fn reads_a_packet_split_anywhere() {
        let mem = memory();
        let raw = header(5).to_bytes();
        mem.write_slice(&raw[..20], GuestAddress(BUF)).unwrap();
        mem.write_slice(&raw[20..], GuestAddress(BUF + 0x100))
            .unwrap();
        mem.write_slice(b"hel", GuestAddress(BUF + 0x200)).unwrap();
        mem.write_slice(b"lo", GuestAddress(BUF + 0x300)).unwrap();
        let pkt = read_tx(
            &mem,
            &[
                desc(BUF, 20, 0),
                desc(BUF + 0x100, 24, 0),
                desc(BUF + 0x200, 3, 0),
                desc(BUF + 0x300, 100, 0),
            ],
        )
        .unwrap();
        assert_eq!(pkt.hdr, header(5));
        assert_eq!(pkt.data, b"hello");
    }

    #[test]
    fn refuses_malformed_tx_chains() {
        let mem = memory();
        mem.write_slice(&header(16).to_bytes(), GuestAddress(BUF))
            .unwrap();
        let cases = [
            (
                vec![desc(0x1f_fff0, 64, 0)],
                PacketError::OutOfMemory {
                    addr: 0x1f_fff0,
                    len: 64,
                },
            ),
            (
                vec![desc(BUF, u32::MAX, 0)],
                PacketError::OutOfMemory {
                    addr: BUF,
                    len: u32::MAX,
                },
            ),
            (
                vec![desc(u64::MAX - 8, 44, 0)],
                PacketError::OutOfMemory {
                    addr: u64::MAX - 8,
                    len: 44,
                },
            ),
            (
                vec![desc(BUF, 44, 0), desc(BUF + 44, 16, VRING_DESC_F_WRITE)],
                PacketError::WritableOnTx,
            ),
            (vec![desc(BUF, 40, 0)], PacketError::ShortHeader(40)),
            (
                vec![desc(BUF, 44, 0), desc(BUF + 44, 15, 0)],
                PacketError::LenBeyondChain { len: 16, avail: 15 },
            ),
        ];
        for (descs, want) in cases {
            assert_eq!(read_tx(&mem, &descs).unwrap_err(), want, "{descs:?}");
        }
        mem.write_slice(&header(u32::MAX).to_bytes(), GuestAddress(BUF))
            .unwrap();
        assert_eq!(
            read_tx(&mem, &[desc(BUF, 0x1000, 0)]).unwrap_err(),
            PacketError::Oversized(u32::MAX)
        );
    }

    #[test]
    fn a_looping_chain_ends() {
        let mem = memory();
        mem.write_slice(&header(0).to_bytes(), GuestAddress(BUF))
            .unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // 0 -> 1 -> 0 -> ...: the chain iterator stops after 16 descriptors.
        let looped = [
            RawDescriptor::from(Descriptor::new(BUF, 44, VRING_DESC_F_NEXT as u16, 1)),
            RawDescriptor::from(Descriptor::new(BUF, 44, VRING_DESC_F_NEXT as u16, 0)),
        ];
        vq.add_desc_chains(&looped, 0).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        let chain = queue.pop_descriptor_chain(&mem).unwrap();
        let pkt = TxPacket::read(&mem, chain).unwrap();
        assert_eq!(pkt.hdr.len, 0);
    }

    #[test]
    fn writes_a_packet_across_descriptors() {
        let mem = memory();
        let buf = rx_buffer(
            &mem,
            &[
                desc(BUF, 30, VRING_DESC_F_WRITE),
                desc(BUF + 0x100, 20, VRING_DESC_F_WRITE),
                desc(BUF + 0x200, 4, VRING_DESC_F_WRITE),
            ],
        )
        .unwrap();
        assert_eq!(buf.data_capacity(), 10);
        // Data beyond the capacity is cut, and hdr.len follows.
        let written = buf.write(&mem, &header(99), b"0123456789AB").unwrap();
        assert_eq!(written, 54);
        let mut raw = [0u8; HDR_SIZE];
        mem.read_slice(&mut raw[..30], GuestAddress(BUF)).unwrap();
        mem.read_slice(&mut raw[30..], GuestAddress(BUF + 0x100))
            .unwrap();
        assert_eq!(Header::from_bytes(&raw), header(10));
        let mut data = [0u8; 10];
        mem.read_slice(&mut data[..6], GuestAddress(BUF + 0x10e))
            .unwrap();
        mem.read_slice(&mut data[6..], GuestAddress(BUF + 0x200))
            .unwrap();
        assert_eq!(&data, b"0123456789");
    }

    #[test]
    fn caps_the_rx_payload() {
        let mem = memory();
        let buf = rx_buffer(&mem, &[desc(BUF, 0x10_0000, VRING_DESC_F_WRITE)]).unwrap();
        assert_eq!(buf.data_capacity(), MAX_PKT_DATA);
    }

    #[test]
    fn refuses_malformed_rx_chains() {
        let mem = memory();
        let cases = [
            (
                vec![desc(BUF, 64, VRING_DESC_F_WRITE), desc(BUF + 64, 64, 0)],
                PacketError::ReadableOnRx,
            ),
            (
                vec![desc(0x1f_fff0, 64, VRING_DESC_F_WRITE)],
                PacketError::OutOfMemory {
                    addr: 0x1f_fff0,
                    len: 64,
                },
            ),
            (
                vec![desc(BUF, 43, VRING_DESC_F_WRITE)],
                PacketError::ShortHeader(43),
            ),
        ];
        for (descs, want) in cases {
            assert_eq!(rx_buffer(&mem, &descs).unwrap_err(), want, "{descs:?}");
        }
    }
}
