//! The KVM VM: capability checks, guest memory slots, the in-kernel IOAPIC,
//! PIC and PIT, and the eventfd wiring of device interrupts and doorbells.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::mptable;
use crate::memory::GuestMemory;

/// Where KVM on Intel keeps the real-mode TSS and identity page it needs;
/// inside the MMIO gap, below the IOAPIC, never RAM.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Capabilities the VMM cannot work without.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::Irqchip, "in-kernel IRQ chip"),
    (Cap::UserMemory, "user memory regions"),
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::Irqfd, "irqfd"),
    (Cap::Pit2, "in-kernel PIT"),
];

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the supported version 12")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("{requested} vCPUs requested: at most {max} are possible on this host")]
    TooManyVcpus { requested: u8, max: usize },
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens KVM, checks it can run this VM with `vcpus` vCPUs, and creates
    /// the VM with its in-kernel interrupt controllers and timer.
    pub fn new(vcpus: u8) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::ApiVersion(api));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let max = kvm.get_max_vcpus().min(usize::from(mptable::MAX_CPUS));
        if vcpus == 0 || usize::from(vcpus) > max {
            return Err(VmError::TooManyVcpus {
                requested: vcpus,
                max,
            });
        }
        let fd = kvm.create_vm().map_err(kvm_err("create VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set identity map address"))?;
        fd.create_irq_chip().map_err(kvm_err("create IRQ chip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("create PIT"))?;
        Ok(Self { kvm, fd })
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Maps every guest memory region into the VM, one slot each.
    pub fn map_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::Kvm {
                    what: "map guest memory",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let slot_region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the
            // VMM keeps alive for as long as the VM exists.
            unsafe { self.fd.set_user_memory_region(slot_region) }
                .map_err(kvm_err("set user memory region"))?;
        }
        Ok(())
    }

    /// Delivers writes to `evt` as edges on interrupt line `gsi`.
    pub fn register_irq(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(kvm_err("register irqfd"))
    }

    /// Turns a guest 32-bit write of `value` at MMIO `addr` into a signal on
    /// `evt`, without a VM exit to userspace.
    pub fn register_mmio_doorbell(
        &self,
        evt: &EventFd,
        addr: u64,
        value: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), value)
            .map_err(kvm_err("register ioeventfd"))
    }
}
