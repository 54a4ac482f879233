//! Linux 64-bit direct boot: the kernel image (ELF vmlinux or bzImage), the
//! initrd, the command line and the zero page with its e820 map.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::layout;
use crate::memory::GuestMemory;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// A bzImage's 64-bit entry point sits this far into its protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    KernelOpen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path} is neither an ELF vmlinux nor a bzImage")]
    KernelFormat { path: String },
    #[error("cannot load kernel {path}: {source}")]
    KernelLoad {
        path: String,
        #[source]
        source: loader::Error,
    },
    #[error("cannot read initrd {path}: {source}")]
    InitrdRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "guest memory too small: the kernel ends at {kernel_end:#x} and the {initrd_size}-byte initrd does not fit below {limit:#x}"
    )]
    InitrdTooBig {
        kernel_end: u64,
        initrd_size: u64,
        limit: u64,
    },
    #[error("cannot copy the initrd into guest memory: {0}")]
    InitrdCopy(#[source] vm_memory::GuestMemoryError),
    #[error("kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line into guest memory: {0}")]
    CmdlineCopy(#[source] loader::Error),
    #[error("cannot write the zero page: {0}")]
    ZeroPage(#[source] linux_loader::configurator::Error),
}

/// Where the boot vCPU starts and what the zero page must say about the
/// kernel, as learnt from loading it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub end: u64,
    setup_header: Option<setup_header>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub address: GuestAddress,
    pub size: u64,
}

enum KernelFormat {
    Elf,
    BzImage,
}

fn detect_format(file: &mut File) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut head)?;
    file.seek(SeekFrom::Start(0))?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Some(KernelFormat::Elf));
    }
    if n >= 0x206 && head[0x202..0x206] == KERNEL_HDR_MAGIC.to_le_bytes() {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match file.read(&mut buf[total..])? {
            0 => break,
            n => total += n,
        }
    }
    Ok(total)
}

/// Loads an ELF vmlinux or a bzImage into guest memory at 1 MiB or above.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::KernelOpen {
        path: name.clone(),
        source,
    })?;
    let format = detect_format(&mut file)
        .map_err(|source| BootError::KernelOpen {
            path: name.clone(),
            source,
        })?
        .ok_or_else(|| BootError::KernelFormat { path: name.clone() })?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let load_err = |source| BootError::KernelLoad {
        path: name.clone(),
        source,
    };
    let kernel = match format {
        KernelFormat::Elf => {
            let r = loader::Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            LoadedKernel {
                entry: r.kernel_load,
                end: r.kernel_end,
                setup_header: None,
            }
        }
        KernelFormat::BzImage => {
            let r = loader::BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            LoadedKernel {
                entry: r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
                end: r.kernel_end,
                setup_header: r.setup_header,
            }
        }
    };
    Ok(kernel)
}

/// Places the initrd page-aligned at the top of low RAM, as high as the
/// kernel allows, and checks that it clears the kernel.
pub fn load_initrd(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<LoadedInitrd, BootError> {
    let read_err = |source| BootError::InitrdRead {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let ram_top = layout::low_ram_end(mem.last_addr().raw_value() + 1);
    let limit = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max) + 1)
        .filter(|&max| max > layout::HIMEM_START)
        .map_or(ram_top, |max| max.min(ram_top));
    let too_big = || BootError::InitrdTooBig {
        kernel_end: kernel.end,
        initrd_size: size,
        limit,
    };
    let address = limit.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    if address < kernel.end.max(layout::HIMEM_START) {
        return Err(too_big());
    }
    let address = GuestAddress(address);
    mem.read_exact_volatile_from(address, &mut file, size as usize)
        .map_err(BootError::InitrdCopy)?;
    Ok(LoadedInitrd { address, size })
}

/// Writes the command line at its fixed address.
pub fn load_cmdline(mem: &GuestMemory, cmdline: &Cmdline) -> Result<(), BootError> {
    loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), cmdline)
        .map_err(BootError::CmdlineCopy)
}

/// The e820 map the guest sees: RAM below the EBDA, RAM from 1 MiB to the
/// MMIO gap (or the end of a small guest), and RAM above 4 GiB for large
/// guests. The EBDA/BIOS hole is reserved so the guest leaves the MP table
/// alone.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![
        e820(0, layout::EBDA_START, E820_RAM),
        e820(
            layout::EBDA_START,
            layout::HIMEM_START - layout::EBDA_START,
            E820_RESERVED,
        ),
    ];
    for (start, size) in layout::ram_regions(mem_size) {
        let start = start.max(layout::HIMEM_START);
        let end = if start >= layout::MMIO_GAP_END {
            start + size
        } else {
            layout::low_ram_end(mem_size)
        };
        map.push(e820(start, end - start, E820_RAM));
    }
    map
}

fn e820(addr: u64, size: u64, kind: u32) -> boot_e820_entry {
    boot_e820_entry {
        addr,
        size,
        r#type: kind,
    }
}

/// Builds and writes the zero page (`struct boot_params`).
pub fn write_zero_page(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline_len: usize,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.address.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(mem.last_addr().raw_value() + 1);
    params.e820_entries = map.len() as u8;
    params.e820_table[..map.len()].copy_from_slice(&map);
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::ZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::io::Write;

    fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn fake_kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(0x100_0000),
            end,
            setup_header: None,
        }
    }

    #[test]
    fn e820_small_guest() {
        let map = e820_map(256 << 20);
        let got: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            got,
            vec![
                (0, layout::EBDA_START, E820_RAM),
                (
                    layout::EBDA_START,
                    0x10_0000 - layout::EBDA_START,
                    E820_RESERVED
                ),
                (0x10_0000, (256 << 20) - 0x10_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_large_guest_skips_the_mmio_gap() {
        let size = 5u64 << 30;
        let map = e820_map(size);
        assert_eq!(map.len(), 4);
        assert_eq!(
            (map[2].addr, map[2].addr + map[2].size),
            (0x10_0000, layout::MMIO_GAP_START)
        );
        assert_eq!({ map[3].addr }, layout::MMIO_GAP_END);
        assert_eq!({ map[3].size }, size - layout::MMIO_GAP_START);
        let ram: u64 = map
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, size - (0x10_0000 - layout::EBDA_START));
    }

    #[test]
    fn rejects_files_that_are_not_kernels() {
        let mem = create_guest_memory(64).unwrap();
        let f = temp_file(b"definitely not a kernel");
        assert!(matches!(
            load_kernel(&mem, f.path()),
            Err(BootError::KernelFormat { .. })
        ));
        let empty = temp_file(b"");
        assert!(matches!(
            load_kernel(&mem, empty.path()),
            Err(BootError::KernelFormat { .. })
        ));
        let missing = Path::new("/nonexistent/vmlinux");
        assert!(matches!(
            load_kernel(&mem, missing),
            Err(BootError::KernelOpen { .. })
        ));
    }

    #[test]
    fn rejects_a_truncated_elf() {
        let mem = create_guest_memory(64).unwrap();
        let f = temp_file(b"\x7fELF\x02\x01\x01");
        assert!(matches!(
            load_kernel(&mem, f.path()),
            Err(BootError::KernelLoad { .. })
        ));
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_ram() {
        let mem = create_guest_memory(64).unwrap();
        let f = temp_file(&[0xab; 5000]);
        let initrd = load_initrd(&mem, &fake_kernel(0x200_0000), f.path()).unwrap();
        assert_eq!(initrd.size, 5000);
        assert_eq!(initrd.address.raw_value() % PAGE_SIZE, 0);
        assert!(initrd.address.raw_value() + 5000 <= 64 << 20);
        assert!(initrd.address.raw_value() + 5000 + PAGE_SIZE > 64 << 20);
        assert_eq!(mem.read_obj::<u8>(initrd.address).unwrap(), 0xab);
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        let mem = create_guest_memory(64).unwrap();
        let f = temp_file(&vec![0; 40 << 20]);
        let err = load_initrd(&mem, &fake_kernel(30 << 20), f.path()).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooBig { .. }), "{err}");
        assert!(err.to_string().contains("guest memory too small"));
    }

    #[test]
    fn zero_page_points_at_cmdline_and_initrd() {
        let mem = create_guest_memory(64).unwrap();
        let initrd = LoadedInitrd {
            address: GuestAddress(0x300_0000),
            size: 1234,
        };
        write_zero_page(&mem, &fake_kernel(0x200_0000), Some(initrd), 42).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 1234);
        assert_eq!(params.e820_entries, 3);
    }
}
