//! x86_64: the guest address map, boot parameters, interrupt tables and the
//! register state a vCPU starts in.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
