//! The Intel MultiProcessor Specification 1.4 table: how the guest learns
//! its CPUs, its IOAPIC and how ISA interrupts reach it, without ACPI.

use vm_memory::{Bytes, GuestAddress};

use super::layout;
use crate::memory::GuestMemory;

/// APIC IDs are 8 bits and 0xff is the broadcast ID.
pub const MAX_CPUS: u8 = 254;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REVISION: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6 and the FPU/APIC feature bits: what the guest expects a
/// processor entry to claim; the real CPUID decides everything else.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const IOAPIC_PINS: u8 = 24;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
const ALL_LOCAL_APICS: u8 = 0xff;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs requested: the MP table describes 1 to {MAX_CPUS}")]
    CpuCount(u8),
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Serialises the floating pointer followed by the configuration table for
/// `num_cpus` processors, as placed at `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MpTableError::CpuCount(num_cpus));
    }
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    count += 2;
    // Every pin is the ISA IRQ of the same number (the timer on pin 0,
    // which Linux's check_timer expects to find), with the bus's default
    // polarity and trigger; the legacy PIC reaches the CPUs through LINT0.
    for pin in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            pin,
            ioapic_id,
            pin,
        ]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        entries.extend_from_slice(&[
            ENTRY_LOCAL_INTERRUPT,
            kind,
            0,
            0,
            ISA_BUS_ID,
            0,
            ALL_LOCAL_APICS,
            lint,
        ]);
        count += 1;
    }

    let table_addr = base + FLOATING_POINTER_LEN as u64;
    let mut table = Vec::with_capacity(HEADER_LEN + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REVISION, 0]);
    table.extend_from_slice(b"KATA-RS ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&[0; 4 + 2]);
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]);
    debug_assert_eq!(table.len(), HEADER_LEN);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(FLOATING_POINTER_LEN + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.extend_from_slice(&[1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `num_cpus` at its fixed address.
pub fn setup(mem: &GuestMemory, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(num_cpus, layout::MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(layout::MPTABLE_START))
        .map_err(MpTableError::Write)
}

/// The byte that makes the sum of all bytes zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_sub(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn table(num_cpus: u8) -> Vec<u8> {
        build(num_cpus, layout::MPTABLE_START).unwrap()
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_valid() {
        for cpus in [1, 2, 64, MAX_CPUS] {
            let t = table(cpus);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..FLOATING_POINTER_LEN]), 0);
            let cfg = &t[FLOATING_POINTER_LEN..];
            assert_eq!(&cfg[..4], b"PCMP");
            assert_eq!(u16::from_le_bytes([cfg[4], cfg[5]]) as usize, cfg.len());
            assert_eq!(sum(cfg), 0);
        }
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let t = table(2);
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, layout::MPTABLE_START + FLOATING_POINTER_LEN as u64);
    }

    #[test]
    fn one_processor_entry_per_cpu_and_only_cpu0_boots() {
        let t = table(3);
        let cfg = &t[FLOATING_POINTER_LEN..];
        let count = u16::from_le_bytes([cfg[34], cfg[35]]);
        assert_eq!(count, 3 + 2 + 24 + 2);
        let cpus: Vec<_> = cfg[HEADER_LEN..]
            .chunks(20)
            .take(3)
            .map(|e| (e[0], e[1], e[3]))
            .collect();
        assert_eq!(cpus, vec![(0, 0, 3), (0, 1, 1), (0, 2, 1)]);
        let ioapic = &cfg[HEADER_LEN + 60 + 8..HEADER_LEN + 60 + 16];
        assert_eq!(ioapic[0], ENTRY_IOAPIC);
        assert_eq!(ioapic[1], 3);
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()) as u64,
            layout::IOAPIC_START
        );
    }

    #[test]
    fn fits_the_bios_area() {
        assert!(layout::MPTABLE_START + table(MAX_CPUS).len() as u64 <= layout::HIMEM_START);
    }

    #[test]
    fn rejects_impossible_cpu_counts() {
        assert!(matches!(build(0, 0), Err(MpTableError::CpuCount(0))));
        assert!(matches!(build(255, 0), Err(MpTableError::CpuCount(255))));
    }
}
