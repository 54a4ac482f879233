//! kata-rs-vmm: a KVM microVM monitor built on the rust-vmm crates.
//!
//! - [`arch`]: the x86_64 guest address map, boot parameters, MP table and
//!   initial vCPU state;
//! - [`memory`]: guest RAM backed by a shareable memfd;
//! - [`devices`]: the trapped-access bus and the devices on it.

pub mod arch;
pub mod devices;
pub mod memory;
