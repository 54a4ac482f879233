//! A sandbox's agent as the runtime calls it: one method per request, each
//! bounded in time (but the wait for a process), each failure an
//! [`AgentError`] saying which container and request it was, with the
//! agent's status code where it answered with one.

use std::path::Path;
use std::time::Duration;

use kata_rs_engine::ContainerStatus;
use kata_rs_protocol::agent::{
    ContainerRequest, CreateContainerRequest, DestroySandboxRequest, ExecProcessRequest,
    ProcessRequest, RemoveContainerRequest, SetupPodNetworkRequest, SignalProcessRequest,
    TtyWinResizeRequest, UpdateContainerRequest,
};
use kata_rs_protocol::agent_ttrpc::AgentServiceClient;
use kata_rs_protocol::{AgentClient, AGENT_VSOCK_PORT};
use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde_json::Value;

/// Bound for one request that does not wait for a process.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for connecting to an agent that already serves.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for DestroySandbox: the agent answers before it ends the sandbox.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a process that could not be waited for (its sandbox is gone)
/// reports: it was killed, as by SIGKILL.
pub const LOST_STATUS: i32 = 128 + 9;

/// How a process ended, as the agent tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    pub status: i32,
    pub oom_killed: bool,
}

/// What the agent says of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub status: ContainerStatus,
    /// Its init's pid where the agent runs (the guest, or the host).
    pub pid: i32,
}

#[derive(Clone)]
pub struct Agent {
    client: AgentClient,
}

/// How a request to the agent failed. Each message is whole on its own
/// (logs print them as they are).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with a failure status.
    #[error("container {id}: {request}: {message}")]
    Refused {
        request: &'static str,
        id: String,
        code: ttrpc::Code,
        message: String,
    },
    /// No answer came: the connection broke, or the time bound passed.
    #[error("container {id}: {request}: {cause}")]
    Unanswered {
        request: &'static str,
        id: String,
        cause: ttrpc::Error,
    },
    /// The agent answered something this runtime cannot read.
    #[error("container {id}: {request}: {why}")]
    Unreadable {
        request: &'static str,
        id: String,
        why: String,
    },
    #[error("container {id}: {request}: encode the request: {cause}")]
    Encode {
        request: &'static str,
        id: String,
        cause: serde_json::Error,
    },
    /// A request for the whole sandbox failed.
    #[error("{request}: {cause}")]
    Sandbox {
        request: &'static str,
        cause: ttrpc::Error,
    },
    #[error("connect to the agent: {cause}")]
    Connect { cause: String },
}

impl AgentError {
    /// The status code the agent refused the request with, if it did.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            AgentError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn of_rpc(request: &'static str, id: &str, e: ttrpc::Error) -> Self {
        let id = id.to_owned();
        match e {
            ttrpc::Error::RpcStatus(s) => AgentError::Refused {
                request,
                id,
                code: s.code(),
                message: s.message().to_owned(),
            },
            cause => AgentError::Unanswered { request, id, cause },
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

fn container_req(id: &str) -> ContainerRequest {
    let mut req = ContainerRequest::new();
    req.container_id = id.to_owned();
    req
}

/// The JSON form of `value`, a part of request `request` for container
/// `id`.
fn json_of(request: &'static str, id: &str, value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|cause| AgentError::Encode {
        request,
        id: id.to_owned(),
        cause,
    })
}

impl Agent {
    pub fn new(client: AgentClient) -> Self {
        Self { client }
    }

    /// Makes request `what` for container `id` with `rpc`, bounded.
    fn call<R>(
        &self,
        request: &'static str,
        id: &str,
        rpc: impl FnOnce(&AgentServiceClient, ttrpc::context::Context) -> ttrpc::Result<R>,
    ) -> Result<R> {
        rpc(&self.client.agent, ctx()).map_err(|e| AgentError::of_rpc(request, id, e))
    }

    /// Connects to the agent of the VM whose hybrid vsock socket is `uds`.
    pub fn connect(uds: &Path) -> Result<Self> {
        AgentClient::connect_hybrid(uds, AGENT_VSOCK_PORT, CONNECT_TIMEOUT)
            .map(Self::new)
            .map_err(|e| AgentError::Connect {
                cause: kata_rs_engine::error::chain(&e),
            })
    }

    pub fn create(&self, id: &str, spec: &Spec) -> Result<()> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.to_owned();
        req.spec_json = json_of("create", id, spec)?;
        self.call("create", id, |a, c| a.create_container(c, &req))
            .map(drop)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.call("start", id, |a, c| a.start_container(c, &container_req(id)))
            .map(drop)
    }

    /// Starts `process` (an OCI process) as `exec_id` in container `id`;
    /// its pid where the agent runs.
    pub fn exec(&self, id: &str, exec_id: &str, process: &Process) -> Result<u32> {
        let mut req = ExecProcessRequest::new();
        req.container_id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.process_json = json_of("exec", id, process)?;
        let resp = self.call("exec", id, |a, c| a.exec_process(c, &req))?;
        Ok(u32::try_from(resp.pid).unwrap_or_default())
    }

    /// Signals process `exec_id` (the init when empty) of container `id`,
    /// or with `all` every process of it.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.signal = signal;
        req.all = all;
        self.call("kill", id, |a, c| a.signal_process(c, &req))
            .map(drop)
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.call("pause", id, |a, c| a.pause_container(c, &container_req(id)))
            .map(drop)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.call("resume", id, |a, c| {
            a.resume_container(c, &container_req(id))
        })
        .map(drop)
    }

    /// The pids of container `id`'s processes where the agent runs.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        self.call("ps", id, |a, c| a.list_processes(c, &container_req(id)))
            .map(|resp| resp.pids)
    }

    /// Applies OCI `resources` to container `id`.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let mut req = UpdateContainerRequest::new();
        req.container_id = id.to_owned();
        req.resources_json = json_of("update", id, resources)?;
        self.call("update", id, |a, c| a.update_container(c, &req))
            .map(drop)
    }

    /// Container `id`'s statistics, in runc's `events --stats` form.
    pub fn stats(&self, id: &str) -> Result<Value> {
        let resp = self.call("stats", id, |a, c| a.stats_container(c, &container_req(id)))?;
        serde_json::from_slice(&resp.stats_json).map_err(|_| AgentError::Unreadable {
            request: "stats",
            id: id.to_owned(),
            why: "the agent's answer is not JSON".to_owned(),
        })
    }

    pub fn state(&self, id: &str) -> Result<ContainerState> {
        let resp = self.call("state", id, |a, c| a.state_container(c, &container_req(id)))?;
        let status = resp.status.parse().map_err(|e| AgentError::Unreadable {
            request: "state",
            id: id.to_owned(),
            why: format!("the agent says {e}"),
        })?;
        Ok(ContainerState {
            status,
            pid: resp.pid,
        })
    }

    /// Removes container `id`, killing what still runs of it.
    pub fn remove(&self, id: &str) -> Result<()> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.to_owned();
        req.force = true;
        self.call("remove", id, |a, c| a.remove_container(c, &req))
            .map(drop)
    }

    pub fn resize(&self, id: &str, exec_id: &str, columns: u32, rows: u32) -> Result<()> {
        let mut req = TtyWinResizeRequest::new();
        req.container_id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.rows = rows;
        req.columns = columns;
        self.call("resize", id, |a, c| a.tty_win_resize(c, &req))
            .map(drop)
    }

    /// Waits, unbounded, for process `exec_id` (the init when empty) of
    /// container `id` to exit.
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<ProcessExit> {
        let mut req = ProcessRequest::new();
        req.container_id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        let resp = self
            .client
            .agent
            .wait_process(ttrpc::context::Context::default(), &req)
            .map_err(|e| AgentError::of_rpc("wait", id, e))?;
        Ok(ProcessExit {
            status: resp.exit_status,
            oom_killed: resp.oom_killed,
        })
    }

    /// Has the agent end its sandbox once it answered: the guest powers
    /// off, or the host agent exits.
    pub fn destroy_sandbox(&self) -> Result<()> {
        let ctx = ttrpc::context::with_timeout(DESTROY_TIMEOUT.as_nanos() as i64);
        self.client
            .agent
            .destroy_sandbox(ctx, &DestroySandboxRequest::new())
            .map_err(|cause| AgentError::Sandbox {
                request: "DestroySandbox",
                cause,
            })?;
        Ok(())
    }

    pub fn setup_pod_network(&self, req: &SetupPodNetworkRequest) -> Result<()> {
        self.client
            .agent
            .setup_pod_network(ctx(), req)
            .map_err(|cause| AgentError::Sandbox {
                request: "set up the pod's network",
                cause,
            })?;
        Ok(())
    }

    /// The client itself, for the requests only `kata-rs check` makes.
    pub fn client(&self) -> &AgentClient {
        &self.client
    }
}
