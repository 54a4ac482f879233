//! The kata-rs guest agent: PID 1 of the microVM and the ttrpc server the
//! runtime talks to over vsock.
//!
//! The binary (`src/main.rs`) wires these pieces together; they live in a
//! library so the services can be tested without booting a VM.

pub mod cmdline;
pub mod containers;
pub mod guest;
pub mod init;
pub mod network;
pub mod reaper;
mod relay;
pub mod service;
pub mod stdio;
