//! kata-rs, the runtime: the OCI command line and the containerd shim, on
//! top of the microVM sandbox.
//!
//! - [`config`]: the TOML configuration;
//! - [`bundle`]: a bundle's config.json, read as a typed OCI spec;
//! - [`cgroup_driver`]: cgroupfs or systemd for the host's cgroups;
//! - [`kvm`]: what kind of KVM the host has;
//! - [`check`]: `kata-rs check`, what this host can run;
//! - [`log`]: the log both binaries write, in runc's formats;
//! - [`sandbox`]: a VM sandbox, brought up and down in one place: its host
//!   cgroup, virtiofsd and the share, the pod network, the VMM and the
//!   agent in it;
//! - [`host_cgroup`]: the host cgroup a VM sandbox's processes live in, and
//!   the guest's size under its memory limit;
//! - [`oci`]: the runc-compatible OCI command line;
//! - [`shim`]: `containerd-shim-kata-rs-v2`, one microVM per pod.

pub mod bundle;
pub mod cgroup_driver;
pub mod check;
pub mod config;
pub mod host_cgroup;
pub mod kvm;
pub mod log;
pub mod oci;
pub mod sandbox;
pub mod shim;
