//! Guest physical address map of an x86_64 microVM.
//!
//! ```text
//! 0x0000_0000  real-mode area: GDT/IDT (0x500), zero page (0x7000),
//!              identity page tables (0x9000..0xc000), MP table (EBDA),
//!              kernel command line (0x20000)
//! 0x0010_0000  high memory: kernel, then free RAM, initrd at the top
//! 0xc000_0000  32-bit MMIO gap (1 GiB, never RAM):
//!   0xd000_0000  virtio-mmio devices, 4 KiB apart
//!   0xe000_0000  reserved for the PCI ECAM window
//!   0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC
//! 0x1_0000_0000 RAM above the gap, when the guest has more than 3 GiB
//! after RAM     64-bit MMIO window for PCI BARs (VFIO devices)
//! ```

/// Boot-time GDT and IDT, placed where the direct boot protocol expects
/// nothing else.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Identity-mapped page tables for the first GiB (PML4, PDPT, PD).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The kernel command line and its maximum length (Linux's
/// COMMAND_LINE_SIZE on x86_64).
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the guest scans for the MP
/// floating pointer; everything from here to 1 MiB is reserved in the e820 map.
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;

pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Room for 256 virtio-mmio devices before the PCI reservation.
pub const VIRTIO_MMIO_END: u64 = PCI_ECAM_START;

pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;

pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

/// Legacy ISA interrupt of the first serial port.
pub const SERIAL_IRQ: u32 = 4;
/// IOAPIC pins handed to virtio-mmio devices (the IOAPIC has 24 pins;
/// 0-4 are taken by legacy devices).
pub const IRQ_FIRST_DEVICE: u32 = 5;
pub const IRQ_LAST_DEVICE: u32 = 23;

/// 32-bit address of the top of usable low RAM.
pub const fn low_ram_end(mem_size: u64) -> u64 {
    if mem_size < MMIO_GAP_START {
        mem_size
    } else {
        MMIO_GAP_START
    }
}

/// Guest RAM regions as (start, size): one below the MMIO gap and, for guests
/// larger than the space below it, one above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    let low = low_ram_end(mem_size);
    let mut regions = vec![(0, low)];
    if mem_size > low {
        regions.push((MMIO_GAP_END, mem_size - low));
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_have_one_region_below_the_gap() {
        assert_eq!(ram_regions(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn large_guests_skip_the_mmio_gap() {
        let size = 4u64 << 30;
        assert_eq!(
            ram_regions(size),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
        );
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        const {
            assert!(BOOT_IDT_START + 8 <= ZERO_PAGE_START);
            assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
            assert!(BOOT_STACK_POINTER < PML4_START);
            assert!(PDE_START + 0x1000 <= CMDLINE_START);
            assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
            assert!(VIRTIO_MMIO_START >= MMIO_GAP_START && VIRTIO_MMIO_END <= IOAPIC_START);
        }
        assert_eq!(
            (VIRTIO_MMIO_END - VIRTIO_MMIO_START) / VIRTIO_MMIO_SLOT_SIZE,
            0x1_0000
        );
    }
}
