//! Frames in and out of guest chains: a transmit chain is a 12-byte
//! header and one frame, all device-readable; a receive chain must take
//! the header and the whole frame, all device-writable.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryError;

use super::{MAX_FRAME_LEN, NET_HDR_LEN};
use crate::devices::virtio::chain::{
    last_descriptor, Buffers, Incomplete, OneWayError, OutsideMemory,
};
use crate::memory::GuestMemory;

/// Destination, source and EtherType: no shorter frame is valid Ethernet,
/// and the tap refuses it.
const ETH_HLEN: usize = 14;

/// Why a chain was returned unused.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChainError {
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
pub(super) fn read_tx_chain(
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
pub(super) fn write_rx_chain(
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
