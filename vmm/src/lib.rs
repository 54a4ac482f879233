//! kata-rs-vmm: a KVM microVM monitor built on the rust-vmm crates.
//!
//! - [`config`]: what a VM is made of;
//! - [`builder`]: the one place that assembles a VM from a config and runs it;
//! - [`arch`]: the x86_64 guest address map, boot parameters, MP table and
//!   initial vCPU state;
//! - [`memory`]: guest RAM backed by a shareable memfd;
//! - [`vstate`]: the KVM VM and its vCPUs;
//! - [`devices`]: the trapped-access bus and the devices on it;
//! - [`seccomp`]: the filter each kind of VMM thread runs under.

pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod memory;
pub mod seccomp;
pub mod vstate;
