//! The ttrpc services the agent serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kata_rs_protocol::agent::{
    ContainerRequest, CreateContainerRequest, DestroySandboxRequest, DestroySandboxResponse, Empty,
    ExecProcessRequest, ExecProcessResponse, GuestDetailsRequest, GuestDetailsResponse,
    ListProcessesResponse, ProcessRequest, RemoveContainerRequest, SetupPodNetworkRequest,
    SignalProcessRequest, StateContainerResponse, StatsContainerResponse, TtyWinResizeRequest,
    UpdateContainerRequest, WaitProcessResponse,
};
use kata_rs_protocol::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionRequest,
    VersionResponse,
};
use kata_rs_protocol::{agent_ttrpc, health_ttrpc, PROTOCOL_VERSION};
use ttrpc::{Code, TtrpcContext};

use crate::containers::{self, Containers};
use crate::guest::GuestDetails;

/// The agent's version, as reported to the runtime.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long DestroySandbox waits between returning its reply and ending
/// the sandbox. ttrpc writes the reply on another thread after the handler
/// returns and offers no completion signal; the delay gives that write time
/// to reach the host even in a slow (emulated) guest.
const REPLY_GRACE: Duration = Duration::from_millis(200);

/// How DestroySandbox ends the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// As PID 1: sync and reset the guest.
    Reboot,
    /// With --no-init on a host: end the agent process (exit status 0), so
    /// host tests can observe the RPC's effect without rebooting the host.
    Exit,
}

/// Builds the method table for ttrpc's server.
pub fn methods(
    teardown: Teardown,
    containers: Arc<Containers>,
) -> HashMap<String, Box<dyn ttrpc::MethodHandler + Send + Sync>> {
    let mut methods = health_ttrpc::create_health(Arc::new(HealthService));
    methods.extend(agent_ttrpc::create_agent_service(Arc::new(AgentService {
        teardown,
        destroying: AtomicBool::new(false),
        containers,
    })));
    methods
}

/// Fully qualified names of the services a health check may ask about.
const SERVICES: &[&str] = &["kata_rs.agent.v1.Health", "kata_rs.agent.v1.AgentService"];

struct HealthService;

impl health_ttrpc::Health for HealthService {
    fn check(&self, _ctx: &TtrpcContext, req: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
        // As in gRPC health checking: empty means the server as a whole,
        // and an unknown service is an error rather than NOT_SERVING.
        if !req.service.is_empty() && !SERVICES.contains(&req.service.as_str()) {
            return Err(rpc_error(
                Code::NOT_FOUND,
                format!("unknown service {:?}", req.service),
            ));
        }
        let mut resp = HealthCheckResponse::new();
        resp.status = ServingStatus::SERVING.into();
        Ok(resp)
    }

    fn version(&self, _ctx: &TtrpcContext, _req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        let mut resp = VersionResponse::new();
        resp.agent_version = AGENT_VERSION.to_owned();
        resp.protocol_version = PROTOCOL_VERSION;
        Ok(resp)
    }
}

struct AgentService {
    teardown: Teardown,
    /// Set by the first DestroySandbox, so a retried call does not start a
    /// second teardown.
    destroying: AtomicBool,
    containers: Arc<Containers>,
}

/// Maps the container layer's errors to RPC statuses, logging failures
/// with the process they concern.
fn status<'a>(
    rpc: &'static str,
    container_id: &'a str,
    exec_id: &'a str,
) -> impl FnOnce(containers::Error) -> ttrpc::Error + 'a {
    move |e| {
        let code = match e {
            containers::Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            containers::Error::NotFound(_) => Code::NOT_FOUND,
            containers::Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            containers::Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            containers::Error::Internal(_) => Code::INTERNAL,
        };
        tracing::warn!(rpc, container_id, exec_id, ?code, error = %e, "request failed");
        rpc_error(code, e.to_string())
    }
}

impl agent_ttrpc::AgentService for AgentService {
    fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        let details = GuestDetails::read().map_err(|e| {
            tracing::error!(error = %e, "reading guest details");
            rpc_error(Code::INTERNAL, format!("reading guest details: {e}"))
        })?;
        let mut resp = GuestDetailsResponse::new();
        resp.online_cpus = details.online_cpus;
        resp.mem_total_bytes = details.mem_total_bytes;
        resp.kernel_release = details.kernel_release;
        resp.agent_version = AGENT_VERSION.to_owned();
        Ok(resp)
    }

    fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: DestroySandboxRequest,
    ) -> ttrpc::Result<DestroySandboxResponse> {
        if self.destroying.swap(true, Ordering::SeqCst) {
            tracing::info!("DestroySandbox repeated; teardown already under way");
            return Ok(DestroySandboxResponse::new());
        }
        let teardown = self.teardown;
        tracing::info!(
            ?teardown,
            "DestroySandbox: ending the sandbox after the reply"
        );
        std::thread::Builder::new()
            .name("teardown".into())
            .spawn(move || {
                std::thread::sleep(REPLY_GRACE);
                match teardown {
                    Teardown::Reboot => {
                        if let Err(e) = crate::init::reboot() {
                            // PID 1 returning from here would leave a guest
                            // nobody can stop; exiting panics the kernel,
                            // which the VMM at least sees.
                            tracing::error!(error = %e, "reboot failed; exiting to panic the kernel");
                            std::process::exit(1);
                        }
                    }
                    Teardown::Exit => std::process::exit(0),
                }
            })
            .map_err(|e| {
                self.destroying.store(false, Ordering::SeqCst);
                rpc_error(Code::INTERNAL, format!("starting teardown thread: {e}"))
            })?;
        Ok(DestroySandboxResponse::new())
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        self.containers
            .create(id, &req.spec_json)
            .map_err(status("CreateContainer", id, ""))?;
        Ok(Empty::new())
    }

    fn start_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        self.containers
            .start(id)
            .map_err(status("StartContainer", id, ""))?;
        Ok(Empty::new())
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        let pid = self
            .containers
            .exec(id, exec_id, &req.process_json)
            .map_err(status("ExecProcess", id, exec_id))?;
        let mut resp = ExecProcessResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        tracing::info!(
            container_id = id,
            exec_id,
            signal = req.signal,
            all = req.all,
            "SignalProcess"
        );
        self.containers
            .signal(id, exec_id, req.signal, req.all)
            .map_err(status("SignalProcess", id, exec_id))?;
        Ok(Empty::new())
    }

    fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        let exit = self
            .containers
            .wait(id, exec_id)
            .map_err(status("WaitProcess", id, exec_id))?;
        let mut resp = WaitProcessResponse::new();
        resp.exit_status = exit.code;
        resp.oom_killed = exit.oom_killed;
        Ok(resp)
    }

    fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        self.containers
            .resize(id, exec_id, req.rows, req.columns)
            .map_err(status("TtyWinResize", id, exec_id))?;
        Ok(Empty::new())
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        let (id, exec_id) = (&req.container_id, &req.exec_id);
        self.containers
            .close_stdin(id, exec_id)
            .map_err(status("CloseStdin", id, exec_id))?;
        Ok(Empty::new())
    }

    fn state_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StateContainerResponse> {
        let id = &req.container_id;
        let (state, pid) = self
            .containers
            .state(id)
            .map_err(status("StateContainer", id, ""))?;
        let mut resp = StateContainerResponse::new();
        resp.status = state.to_string();
        resp.pid = pid;
        Ok(resp)
    }

    fn pause_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        self.containers
            .pause(id)
            .map_err(status("PauseContainer", id, ""))?;
        Ok(Empty::new())
    }

    fn resume_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        self.containers
            .resume(id)
            .map_err(status("ResumeContainer", id, ""))?;
        Ok(Empty::new())
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        self.containers
            .update(id, &req.resources_json)
            .map_err(status("UpdateContainer", id, ""))?;
        Ok(Empty::new())
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let id = &req.container_id;
        let stats = self
            .containers
            .stats(id)
            .map_err(status("StatsContainer", id, ""))?;
        let mut resp = StatsContainerResponse::new();
        resp.stats_json = stats;
        Ok(resp)
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let id = &req.container_id;
        let pids = self
            .containers
            .pids(id)
            .map_err(status("ListProcesses", id, ""))?;
        let mut resp = ListProcessesResponse::new();
        resp.pids = pids;
        Ok(resp)
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let id = &req.container_id;
        self.containers
            .remove(id, req.force)
            .map_err(status("RemoveContainer", id, ""))?;
        Ok(Empty::new())
    }

    fn setup_pod_network(
        &self,
        _ctx: &TtrpcContext,
        req: SetupPodNetworkRequest,
    ) -> ttrpc::Result<Empty> {
        crate::network::setup_pod_network(&req).map_err(|e| {
            tracing::warn!(rpc = "SetupPodNetwork", error = %e, "request failed");
            let code = match e {
                crate::network::NetworkError::Invalid(_) => Code::INVALID_ARGUMENT,
                crate::network::NetworkError::Io { .. } => Code::INTERNAL,
            };
            rpc_error(code, format!("set up the pod's network: {e}"))
        })?;
        Ok(Empty::new())
    }
}

fn rpc_error(code: Code, message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}
