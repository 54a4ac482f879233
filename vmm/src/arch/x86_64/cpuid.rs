//! The CPUID each vCPU reports: KVM's supported set, with the topology
//! (APIC IDs, CPU count) of this VM and the hypervisor bit.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Adjusts `cpuid` for vCPU `index` of `count`: one socket, one thread per
/// core, `count` cores, APIC ID = index (matching the MP table).
pub fn for_vcpu(cpuid: &mut CpuId, index: u8, count: u8) {
    let core_shift = u32::BITS - (u32::from(count).max(1) - 1).leading_zeros();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
                entry.edx = u32::from(index);
                let (eax, ebx, level) = match entry.index {
                    0 => (0, 1, TOPOLOGY_LEVEL_SMT),
                    1 => (core_shift, u32::from(count), TOPOLOGY_LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                entry.eax = eax;
                entry.ebx = ebx;
                entry.ecx = (level << 8) | (entry.index & 0xff);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_0808,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_count_and_hypervisor_bit() {
        let mut c =
            CpuId::from_entries(&[leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)]).unwrap();
        for_vcpu(&mut c, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0808);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(
            (e[1].eax, e[1].ebx, e[1].ecx >> 8, e[1].edx),
            (0, 1, TOPOLOGY_LEVEL_SMT, 3)
        );
        assert_eq!(
            (e[2].eax, e[2].ebx, e[2].ecx >> 8, e[2].ecx & 0xff),
            (2, 4, TOPOLOGY_LEVEL_CORE, 1)
        );
        assert_eq!((e[3].ebx, e[3].ecx), (0, 2));
    }

    #[test]
    fn single_cpu_has_no_htt_and_zero_shift() {
        let mut c = CpuId::from_entries(&[leaf(1, 0), leaf(0xb, 1)]).unwrap();
        for_vcpu(&mut c, 0, 1);
        assert_eq!(c.as_slice()[0].edx & EDX_HTT, 0);
        assert_eq!(c.as_slice()[1].eax, 0);
    }
}
