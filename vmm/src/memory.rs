//! Guest RAM: one shareable memfd mapped into the VMM, so that vhost-user
//! backends (virtiofsd) can map the same pages later.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};

use crate::arch::layout;

/// The guest memory type used throughout the VMM.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} MiB is too small (at least 64 MiB)")]
    TooSmall(u64),
    #[error("cannot create the guest memory file: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Mmap {
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory region at {0:#x} is not page-aligned")]
    Unaligned(u64),
    #[error("cannot build the guest memory map: {0}")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
}

pub const MIN_MEMORY_MIB: u64 = 64;

/// Creates guest RAM of `mib` MiB following the x86_64 layout.
pub fn create_guest_memory(mib: u64) -> Result<GuestMemory, MemoryError> {
    if mib < MIN_MEMORY_MIB {
        return Err(MemoryError::TooSmall(mib));
    }
    let size = mib << 20;
    let file = memfd("kata-rs-guest-ram", size)?;
    let mut regions = Vec::new();
    let mut file_offset = 0;
    for (start, len) in layout::ram_regions(size) {
        let fo = FileOffset::new(file.try_clone().map_err(MemoryError::Memfd)?, file_offset);
        let region = MmapRegion::from_file(fo, len as usize)
            .map_err(|source| MemoryError::Mmap { size: len, source })?;
        // The guest's memory is the tenant's: a crashing VMM (a seccomp
        // kill included) must not write it into a core file. Best effort:
        // a kernel that refuses only means larger core files.
        // SAFETY: the range is the mapping just made, owned by `region`.
        unsafe {
            libc::madvise(region.as_ptr().cast(), region.size(), libc::MADV_DONTDUMP);
        }
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(start))
                .ok_or(MemoryError::Unaligned(start))?,
        );
        file_offset += len;
    }
    GuestMemory::from_regions(regions).map_err(MemoryError::Layout)
}

fn memfd(name: &str, size: u64) -> Result<File, MemoryError> {
    let cname = std::ffi::CString::new(name).expect("static name has no NUL");
    // SAFETY: memfd_create takes a valid C string and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Memfd)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn creates_readable_writable_ram() {
        let mem = create_guest_memory(64).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(mem.read_obj::<u8>(GuestAddress(64 << 20)).is_err());
    }

    #[test]
    fn refuses_tiny_guests() {
        assert!(matches!(
            create_guest_memory(16),
            Err(MemoryError::TooSmall(16))
        ));
    }
}
