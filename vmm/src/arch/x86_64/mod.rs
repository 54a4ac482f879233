//! x86_64: the guest address map, boot parameters, interrupt tables and the
//! register state a vCPU starts in.

pub mod layout;
