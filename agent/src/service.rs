//! The ttrpc services the agent serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kata_rs_protocol::agent::{
    DestroySandboxRequest, DestroySandboxResponse, GuestDetailsRequest, GuestDetailsResponse,
};
use kata_rs_protocol::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionRequest,
    VersionResponse,
};
use kata_rs_protocol::{agent_ttrpc, health_ttrpc, PROTOCOL_VERSION};
use ttrpc::{Code, TtrpcContext};

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
pub fn methods(teardown: Teardown) -> HashMap<String, Box<dyn ttrpc::MethodHandler + Send + Sync>> {
    let mut methods = health_ttrpc::create_health(Arc::new(HealthService));
    methods.extend(agent_ttrpc::create_agent_service(Arc::new(AgentService {
        teardown,
        destroying: AtomicBool::new(false),
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
}

fn rpc_error(code: Code, message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}
