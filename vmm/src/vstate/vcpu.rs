//! A vCPU: its initial state and the loop that runs it, dispatching trapped
//! port and MMIO accesses to the buses until the guest resets or fails.

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestAddress;

use super::vm::Vm;
use crate::arch::x86_64::{cpuid, regs};
use crate::devices::Bus;

/// The keyboard controller's command port: Linux booted with `reboot=k`
/// resets the machine by writing 0xfe here, which is our "guest is done".
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_RESET_CMD: u8 = 0xfe;

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: KVM {what} failed: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExitReason {
    /// The guest asked for a reset (its way of powering off).
    Reset,
    /// The guest triple-faulted; where it was, where KVM still knows.
    TripleFault(String),
    /// KVM could not run or emulate the guest any further.
    Failed(String),
}

pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
}

impl Vcpu {
    /// Creates vCPU `index` of `count` with the topology CPUID, MSRs and
    /// local interrupt wiring; the boot vCPU also gets the entry state.
    pub fn new(
        vm: &Vm,
        index: u8,
        count: u8,
        entry: Option<GuestAddress>,
    ) -> Result<Self, VcpuError> {
        let err = |what| {
            move |source| VcpuError::Kvm {
                index,
                what,
                source,
            }
        };
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(err("create vCPU"))?;
        let mut cpuid = vm
            .kvm()
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("get supported CPUID"))?;
        cpuid::for_vcpu(&mut cpuid, index, count);
        fd.set_cpuid2(&cpuid).map_err(err("set CPUID"))?;
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        }])
        .expect("one MSR entry fits");
        fd.set_msrs(&msrs).map_err(err("set MSRs"))?;
        let mut lapic = fd.get_lapic().map_err(err("get LAPIC"))?;
        set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(err("set LAPIC"))?;
        if let Some(entry) = entry {
            let sregs = fd.get_sregs().map_err(err("get sregs"))?;
            fd.set_sregs(&regs::boot_sregs(sregs))
                .map_err(err("set sregs"))?;
            fd.set_regs(&regs::boot_regs(entry))
                .map_err(err("set regs"))?;
            fd.set_fpu(&regs::boot_fpu()).map_err(err("set FPU"))?;
        }
        Ok(Self { fd, index })
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// Runs the guest until it resets, triple-faults or KVM gives up.
    pub fn run(&mut self, pio: &Bus, mmio: &Bus) -> VcpuExitReason {
        loop {
            match self.fd.run() {
                Ok(VcpuExit::IoOut(I8042_COMMAND_PORT, [I8042_RESET_CMD])) => {
                    return VcpuExitReason::Reset;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !mmio.read(addr, data) {
                        tracing::debug!(vcpu = self.index, addr, "read of unclaimed MMIO");
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !mmio.write(addr, data) {
                        tracing::debug!(vcpu = self.index, addr, "write to unclaimed MMIO");
                    }
                }
                Ok(VcpuExit::Shutdown) => return VcpuExitReason::TripleFault(self.where_it_was()),
                Ok(VcpuExit::Hlt) => {
                    return VcpuExitReason::Failed("the guest halted with interrupts off".into())
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return VcpuExitReason::Failed(format!(
                        "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                    ))
                }
                Ok(VcpuExit::InternalError) => {
                    return VcpuExitReason::Failed("KVM internal error (emulation failure)".into())
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    return match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET
                        | kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExitReason::Reset,
                        _ => VcpuExitReason::Failed(format!("guest system event {kind}")),
                    }
                }
                Ok(other) => {
                    return VcpuExitReason::Failed(format!("unexpected VM exit: {other:?}"))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return VcpuExitReason::Failed(format!("KVM_RUN failed: {e}")),
            }
        }
    }
}

impl Vcpu {
    /// Where a triple-faulted guest was, for the error: a triple fault
    /// leaves no other trace.
    fn where_it_was(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(regs), Ok(sregs)) => describe_shutdown(&regs, &sregs),
            (Err(e), _) | (_, Err(e)) => format!("registers unreadable: {e}"),
        }
    }
}

/// The x86 reset vector: CS selector 0xf000, IP 0xfff0.
const RESET_CS: u16 = 0xf000;
const RESET_RIP: u64 = 0xfff0;

/// Describes the registers KVM holds after a shutdown exit. On AMD SVM
/// (the emulated KVM host's) KVM has already put the vCPU through INIT by
/// then, because the VMCB is undefined after a shutdown intercept: its
/// registers are the reset state and say nothing about the fault.
fn describe_shutdown(r: &kvm_bindings::kvm_regs, s: &kvm_bindings::kvm_sregs) -> String {
    if r.rip == RESET_RIP && s.cs.selector == RESET_CS {
        return "no registers to show: KVM reset the vCPU before reporting the shutdown, \
                as it does on AMD; the console's last lines are the only trace"
            .to_owned();
    }
    format!(
        "rip {:#x} rsp {:#x} rflags {:#x} rax {:#x}; cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} \
         cr4 {:#x} efer {:#x} idt {:#x}+{:#x} gdt {:#x}+{:#x} tr {:#x}",
        r.rip,
        r.rsp,
        r.rflags,
        r.rax,
        s.cs.selector,
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.efer,
        s.idt.base,
        s.idt.limit,
        s.gdt.base,
        s.gdt.limit,
        s.tr.base
    )
}

/// Sets the delivery mode (bits 8-10) of a local vector table register.
fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shutdown_in_the_reset_state_shows_no_registers() {
        let mut regs = kvm_bindings::kvm_regs {
            rip: RESET_RIP,
            ..Default::default()
        };
        let mut sregs = kvm_bindings::kvm_sregs::default();
        sregs.cs.selector = RESET_CS;
        assert!(describe_shutdown(&regs, &sregs).starts_with("no registers to show"));

        regs.rip = 0xffff_ffff_8100_1234;
        sregs.cs.selector = 0x10;
        sregs.cr3 = 0x9000;
        let text = describe_shutdown(&regs, &sregs);
        assert!(text.contains("rip 0xffffffff81001234"), "{text}");
        assert!(text.contains("cr3 0x9000"), "{text}");
    }

    #[test]
    fn lvt_mode_replaces_only_the_delivery_mode() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x30;
        regs[APIC_LVT0 + 1] = 0x05;
        regs[APIC_LVT0 + 2] = 0x01;
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(
            [
                regs[APIC_LVT0] as u8,
                regs[APIC_LVT0 + 1] as u8,
                regs[APIC_LVT0 + 2] as u8
            ],
            [0x30, 0x07, 0x01]
        );
    }
}
