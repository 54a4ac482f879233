//! The protocol between the kata-rs runtime (host) and its guest agent.
//!
//! The services are defined in `protos/` and compiled at build time into
//! protobuf messages and ttrpc (sync) clients and servers:
//!
//! - [`health`] / [`health_ttrpc`]: `Health { Check, Version }`
//! - [`agent`] / [`agent_ttrpc`]: `AgentService { GetGuestDetails, DestroySandbox,
//!   CreateContainer, StartContainer, ExecProcess, ... }`
//!
//! The host reaches the agent through the VMM's hybrid vsock Unix socket
//! ([`hybrid::connect`]), then speaks ttrpc over that stream ([`AgentClient`]).
//! Process stdio travels on separate connections to [`STDIO_VSOCK_PORT`],
//! each opened by a [`stdio::StreamHeader`] line.
//!
//! Container files reach the guest through one virtio-fs share: the host
//! gives the VMM a device with tag [`SHARED_FS_TAG`], the agent mounts it at
//! [`GUEST_SHARE_DIR`] on the first CreateContainer, and spec paths (root,
//! bind-mount sources) point below that directory.

include!(concat!(env!("OUT_DIR"), "/modules.rs"));

mod client;
pub mod hybrid;
pub mod stdio;
pub mod vsock;

pub use client::{AgentClient, ClientError};

/// The vsock port the agent serves ttrpc on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The vsock port of process stdio streams (see protos/agent.proto).
pub const STDIO_VSOCK_PORT: u32 = 1025;

/// The virtio-fs tag of the directory the host shares with the guest
/// (container root filesystems and bind-mount sources).
pub const SHARED_FS_TAG: &str = "kataShared";

/// Where the agent mounts that share in the guest.
pub const GUEST_SHARE_DIR: &str = "/run/kata-rs/shared";

/// Revision of the protocol in `protos/`, reported by `Health.Version`.
/// Bump it on any change a peer built from an older revision cannot decode
/// or would misread.
pub const PROTOCOL_VERSION: u32 = 3;
