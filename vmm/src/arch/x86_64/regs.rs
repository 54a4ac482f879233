//! The state the boot vCPU starts in for the 64-bit direct boot protocol:
//! long mode with a flat GDT, identity-mapped first GiB, `rsi` pointing at
//! the zero page. Secondary vCPUs wait for INIT/SIPI from the guest.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::layout;
use crate::memory::GuestMemory;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Flat descriptors: null, 64-bit code, data, TSS.
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
const CODE_SELECTOR: usize = 1;
const DATA_SELECTOR: usize = 2;
const TSS_SELECTOR: usize = 3;

/// Packs a segment descriptor from its flags (access byte in bits 0-7,
/// granularity nibble in bits 12-15), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM view of a descriptor loaded through `index` of the GDT.
pub fn segment_from_gdt(entry: u64, index: usize) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: 1 - bit(47),
        padding: 0,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot {what} into guest memory: {source}")]
pub struct RegsError {
    what: &'static str,
    #[source]
    source: vm_memory::GuestMemoryError,
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemory,
    what: &'static str,
    val: T,
    addr: u64,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError { what, source })
}

/// Writes the GDT, an empty IDT and the identity page tables into guest
/// memory; shared by all vCPUs.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), RegsError> {
    for (i, entry) in GDT.iter().enumerate() {
        write(mem, "GDT", *entry, layout::BOOT_GDT_START + i as u64 * 8)?;
    }
    write(mem, "IDT", 0u64, layout::BOOT_IDT_START)?;
    write(mem, "PML4", layout::PDPTE_START | 0x03, layout::PML4_START)?;
    write(mem, "PDPT", layout::PDE_START | 0x03, layout::PDPTE_START)?;
    // 512 2-MiB pages: the first GiB, where the kernel and zero page live.
    for i in 0..512u64 {
        write(
            mem,
            "page directory",
            (i << 21) | 0x83,
            layout::PDE_START + i * 8,
        )?;
    }
    Ok(())
}

/// Special registers for long mode, built on what KVM reports for the vCPU.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(GDT[CODE_SELECTOR], CODE_SELECTOR);
    let data = segment_from_gdt(GDT[DATA_SELECTOR], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(GDT[TSS_SELECTOR], TSS_SELECTOR);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        rsi: layout::ZERO_PAGE_START,
        ..Default::default()
    }
}

/// The FPU as after FNINIT, with SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn code_segment_is_flat_64_bit() {
        let cs = segment_from_gdt(GDT[CODE_SELECTOR], CODE_SELECTOR);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x8));
        assert_eq!(
            (cs.l, cs.db, cs.present, cs.s, cs.g, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = segment_from_gdt(GDT[DATA_SELECTOR], DATA_SELECTOR);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (0x10, 0x3, 1, 0));
        let tr = segment_from_gdt(GDT[TSS_SELECTOR], TSS_SELECTOR);
        assert_eq!((tr.selector, tr.type_, tr.s), (0x18, 0xb, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn gdt_entry_round_trips_base_and_limit() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, 5);
        assert_eq!((s.base, s.limit, s.g), (0x1234_5678, 0xabcde, 0));
    }

    #[test]
    fn long_mode_sregs_and_entry_regs() {
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, layout::PML4_START);
        let r = boot_regs(GuestAddress(0x100_0000));
        assert_eq!(
            (r.rip, r.rsi, r.rflags),
            (0x100_0000, layout::ZERO_PAGE_START, 2)
        );
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = create_guest_memory(64).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, layout::PDPTE_START);
        let pde511: u64 = mem
            .read_obj(GuestAddress(layout::PDE_START + 511 * 8))
            .unwrap();
        assert_eq!(pde511, (511 << 21) | 0x83);
    }
}
