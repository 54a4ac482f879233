//! Descriptor chains as the devices that serve their own queues (block,
//! net, vsock) take them from the guest: the descriptors turned into guest
//! buffers checked against guest memory, and the copying in and out of
//! them. Every descriptor is hostile input; the chain iterator stops after
//! queue-size descriptors (or an indirect table's), at an index out of the
//! table, on an unreadable descriptor or past 2^32 bytes, so no walk here
//! can loop.

use std::ops::Range;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::memory::GuestMemory;

/// A guest buffer already checked to lie inside guest memory.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: usize,
}

impl Segment {
    /// The `len` bytes at `addr`, None when empty; an error unless they lie
    /// inside guest memory.
    pub fn checked(
        mem: &GuestMemory,
        addr: GuestAddress,
        len: usize,
    ) -> Result<Option<Segment>, OutsideMemory> {
        if len == 0 {
            return Ok(None);
        }
        if !mem.check_range(addr, len) {
            return Err(OutsideMemory { addr: addr.0, len });
        }
        Ok(Some(Segment { addr, len }))
    }
}

/// A descriptor whose buffer is not all guest memory.
#[derive(Debug)]
pub struct OutsideMemory {
    pub addr: u64,
    pub len: usize,
}

/// Why a chain's descriptors do not end as a chain must.
#[derive(Debug)]
pub enum Incomplete {
    /// No descriptor at all: a head index out of the table, or unreadable.
    Empty,
    /// The last descriptor read still points on: a loop, a bad next index
    /// or an unreadable descriptor.
    CutShort,
}

/// The last descriptor of a chain read whole.
pub fn last_descriptor(descs: &[Descriptor]) -> Result<&Descriptor, Incomplete> {
    let last = descs.last().ok_or(Incomplete::Empty)?;
    if last.has_next() {
        return Err(Incomplete::CutShort);
    }
    Ok(last)
}

/// Why descriptors that must all go one way were refused.
#[derive(Debug)]
pub enum OneWayError {
    /// A device-readable descriptor among device-writable ones, or the
    /// other way round (`writable` says which were wanted).
    Direction {
        writable: bool,
    },
    Outside(OutsideMemory),
}

/// Guest buffers in chain order, each inside guest memory, with their total
/// length.
#[derive(Debug, Default)]
pub struct Buffers {
    segments: Vec<Segment>,
    len: usize,
}

impl Buffers {
    /// Takes `descs`, which must all be device-`writable` (or all not);
    /// `limit` sees the running total after each descriptor's direction is
    /// checked and before its memory is, and may refuse it.
    pub fn one_way<E: From<OneWayError>>(
        mem: &GuestMemory,
        descs: impl IntoIterator<Item = Descriptor>,
        writable: bool,
        mut limit: impl FnMut(usize) -> Result<(), E>,
    ) -> Result<Buffers, E> {
        let mut buffers = Buffers::default();
        let mut total = 0usize;
        for d in descs {
            if d.is_write_only() != writable {
                return Err(OneWayError::Direction { writable }.into());
            }
            let len = d.len() as usize;
            total = total.saturating_add(len);
            limit(total)?;
            if let Some(segment) =
                Segment::checked(mem, d.addr(), len).map_err(OneWayError::Outside)?
            {
                buffers.push(segment);
            }
        }
        Ok(buffers)
    }

    pub fn push(&mut self, segment: Segment) {
        self.segments.push(segment);
        self.len += segment.len;
    }

    /// The total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands `f` the guest ranges that cover bytes `[offset, offset + len)`
    /// of the buffers, each with where it falls in that span; stops at the
    /// buffers' end. Returns the bytes covered.
    pub fn for_range<E>(
        &self,
        mut offset: usize,
        len: usize,
        mut f: impl FnMut(GuestAddress, Range<usize>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut done = 0;
        for s in &self.segments {
            if done == len {
                break;
            }
            if offset >= s.len {
                offset -= s.len;
                continue;
            }
            let n = (s.len - offset).min(len - done);
            // Inside guest memory, so the address cannot overflow.
            f(s.addr.unchecked_add(offset as u64), done..done + n)?;
            done += n;
            offset = 0;
        }
        Ok(done)
    }

    /// Copies from the buffers, `offset` bytes in, into `buf`, as much as
    /// they hold; returns the bytes copied.
    pub fn read_at(
        &self,
        mem: &GuestMemory,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<usize, GuestMemoryError> {
        self.for_range(offset, buf.len(), |addr, r| {
            mem.read_slice(&mut buf[r], addr)
        })
    }

    /// Copies `data` into the buffers, `offset` bytes in, as much as fits;
    /// returns the bytes copied.
    pub fn write_at(
        &self,
        mem: &GuestMemory,
        offset: usize,
        data: &[u8],
    ) -> Result<usize, GuestMemoryError> {
        self.for_range(offset, data.len(), |addr, r| {
            mem.write_slice(&data[r], addr)
        })
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    use super::*;

    const MEM_SIZE: u64 = 0x1_0000;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    fn any_length(_: usize) -> Result<(), OneWayError> {
        Ok(())
    }

    fn one_way(descs: &[Descriptor], writable: bool) -> Result<Buffers, OneWayError> {
        Buffers::one_way(&memory(), descs.iter().copied(), writable, any_length)
    }

    #[test]
    fn one_way_checks_direction_and_memory() {
        let b = one_way(&[desc(0x100, 8, W), desc(0, 0, W)], true).unwrap();
        assert_eq!((b.len(), b.segments.len()), (8, 1));
        assert!(matches!(
            one_way(&[desc(0x100, 8, 0), desc(0x200, 8, W)], false),
            Err(OneWayError::Direction { writable: false })
        ));
        for addr in [MEM_SIZE - 4, u64::MAX - 2] {
            assert!(matches!(
                one_way(&[desc(addr, 8, 0)], false),
                Err(OneWayError::Outside(OutsideMemory { len: 8, .. }))
            ));
        }
    }

    #[test]
    fn the_limit_sees_the_running_total_before_memory() {
        let mut seen = Vec::new();
        let descs = [desc(0, 8, 0), desc(u64::MAX, 3, 0)];
        let e = Buffers::one_way(&memory(), descs, false, |total| {
            seen.push(total);
            if total > 8 {
                Err(OneWayError::Direction { writable: true })
            } else {
                Ok(())
            }
        });
        assert!(matches!(e, Err(OneWayError::Direction { writable: true })));
        assert_eq!(seen, [8, 11]);
    }

    #[test]
    fn copies_across_buffers_from_an_offset() {
        let mem = memory();
        let descs = [desc(0x100, 3, W), desc(0x200, 4, W), desc(0x300, 2, W)];
        let b = Buffers::one_way(&mem, descs, true, any_length).unwrap();
        assert_eq!(b.write_at(&mem, 2, b"abcdefghij").unwrap(), 7);
        let mut got = [0u8; 9];
        assert_eq!(b.read_at(&mem, 0, &mut got).unwrap(), 9);
        assert_eq!(&got, b"\0\0abcdefg");
        let mut tail = [0u8; 4];
        assert_eq!(b.read_at(&mem, 6, &mut tail).unwrap(), 3);
        assert_eq!(&tail[..3], b"efg");
        assert_eq!(b.read_at(&mem, 9, &mut tail).unwrap(), 0);
    }

    #[test]
    fn a_chain_must_end() {
        assert!(matches!(last_descriptor(&[]), Err(Incomplete::Empty)));
        let looped = [desc(0, 1, VRING_DESC_F_NEXT as u16)];
        assert!(matches!(
            last_descriptor(&looped),
            Err(Incomplete::CutShort)
        ));
        assert_eq!(last_descriptor(&[desc(7, 1, W)]).unwrap().addr().0, 7);
    }
}
