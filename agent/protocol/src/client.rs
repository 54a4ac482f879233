//! Host-side ttrpc clients for the agent.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent_ttrpc::AgentServiceClient;
use crate::health_ttrpc::HealthClient;
use crate::hybrid;

/// Why a connection to the agent could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("hybrid vsock handshake with {} for port {port}", .uds.display())]
    Handshake {
        uds: PathBuf,
        port: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the ttrpc client")]
    Ttrpc(#[source] ttrpc::Error),
    #[error("asking the agent its version")]
    Version(#[source] ttrpc::Error),
    #[error(
        "the agent speaks protocol {agent} (kata-rs-agent {agent_version}), this runtime {ours}: \
         the initrd or host agent is from another build of kata-rs"
    )]
    Mismatch {
        agent: u32,
        agent_version: String,
        ours: u32,
    },
}

/// Clients for every agent service, sharing one ttrpc connection.
#[derive(Clone)]
pub struct AgentClient {
    pub health: HealthClient,
    pub agent: AgentServiceClient,
}

impl AgentClient {
    /// Wraps an already connected stream (a hybrid vsock stream after the
    /// handshake, or a plain Unix socket to an agent run with `--listen`).
    pub fn from_stream(stream: UnixStream) -> Result<Self, ClientError> {
        Self::from_fd(stream.into())
    }

    /// Wraps any connected stream socket, such as an AF_VSOCK socket to a
    /// guest behind vhost-vsock.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, ClientError> {
        // ttrpc::Client takes ownership of the descriptor and closes it when
        // the last clone of the client is dropped.
        let client = ttrpc::Client::new(fd.into_raw_fd()).map_err(ClientError::Ttrpc)?;
        Ok(Self {
            health: HealthClient::new(client.clone()),
            agent: AgentServiceClient::new(client),
        })
    }

    /// Checks that the agent speaks this build's protocol: one from another
    /// build could misread requests (routes, hooks) without failing.
    pub fn check_protocol(&self, timeout: Duration) -> Result<(), ClientError> {
        let ctx = ttrpc::context::with_timeout(timeout.as_nanos() as i64);
        let version = self
            .health
            .version(ctx, &crate::health::VersionRequest::new())
            .map_err(ClientError::Version)?;
        if version.protocol_version != crate::PROTOCOL_VERSION {
            return Err(ClientError::Mismatch {
                agent: version.protocol_version,
                agent_version: version.agent_version,
                ours: crate::PROTOCOL_VERSION,
            });
        }
        Ok(())
    }

    /// Connects to the agent on guest vsock `port` through the VMM's hybrid
    /// vsock socket `uds`, with `timeout` bounding the handshake.
    pub fn connect_hybrid(uds: &Path, port: u32, timeout: Duration) -> Result<Self, ClientError> {
        let stream =
            hybrid::connect(uds, port, timeout).map_err(|source| ClientError::Handshake {
                uds: uds.to_owned(),
                port,
                source,
            })?;
        Self::from_stream(stream)
    }
}
