//! Where a pod's containers run, behind one interface: its VM (a
//! [`Sandbox`], the agent in the guest) or, in namespace isolation, the
//! agent on the host ([`HostAgent`]). The pod chooses one when its first
//! container comes and talks to it alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use oci_spec::runtime::Spec;

use super::error::TaskError;
use super::host::HostAgent;
use super::spec;
use crate::config::{Config, Isolation};
use crate::host_cgroup::{HostCgroup, OomWatch};
use crate::sandbox::agent::Agent;
use crate::sandbox::network;
use crate::sandbox::record::Record;
use crate::sandbox::size::Size;
use crate::sandbox::stdio::StdioAddr;
use crate::sandbox::{self, share, Network, Plan, Sandbox};

/// How long a process's waiter waits for a dead host agent's containers
/// to be gone before it reports the process's exit.
const HOST_AGENT_END: Duration = Duration::from_secs(30);

/// What a process's waiter runs when the agent could not tell how the
/// process ended (its VM or host agent is gone): whether the host's OOM
/// killer ended it.
pub type LostCause = Box<dyn FnOnce() -> bool + Send>;

pub trait Backend: Send {
    fn isolation(&self) -> Isolation;

    fn agent(&self) -> &Agent;

    /// Where the agent takes stdio streams.
    fn stdio(&self) -> StdioAddr;

    /// What containerd is told as the pid of a process whose pid where the
    /// agent runs is `pid`: a VM's processes live in the guest, so it is
    /// told the VMM's; on the host, the process's own (CRI names a pod's
    /// namespaces after its sandbox's).
    fn task_pid(&self, pid: u32) -> u32;

    /// The spec the agent runs for container `id` of `bundle`, whose spec
    /// is `spec`; `sandbox` is the pod's sandbox container, when it runs
    /// already and `id` is another.
    fn agent_spec(
        &self,
        id: &str,
        bundle: &Path,
        spec: &Spec,
        sandbox: Option<&str>,
    ) -> Result<Spec, TaskError>;

    /// What the backend tells after a request to its agent failed.
    fn post_mortem(&mut self) -> Option<String>;

    /// See [`LostCause`].
    fn lost_cause(&self) -> LostCause;

    /// Ends the backend; whether the pod directory may go (a host agent's
    /// leftover containers keep it for `shim delete`).
    fn shut_down(self: Box<Self>, dir: &Path) -> bool;
}

/// Starts the pod's backend in `dir` for its first container `id`, whose
/// spec is `spec`.
pub fn start(
    isolation: Isolation,
    config: &Config,
    dir: &Path,
    id: &str,
    spec: &Spec,
    systemd: bool,
) -> Result<Box<dyn Backend>> {
    match isolation {
        Isolation::Vm => boot(config, dir, id, spec, systemd),
        Isolation::Namespace => start_host_agent(config, dir),
    }
}

/// Boots the pod's VM for its sandbox container `id`, sized for its
/// `spec`, with the pod directory shared and a NIC for each interface of
/// the pod's network namespace; the shim, the VMM and virtiofsd live in
/// the sandbox's host cgroup (see `host_cgroup`).
fn boot(
    config: &Config,
    dir: &Path,
    id: &str,
    spec: &Spec,
    systemd: bool,
) -> Result<Box<dyn Backend>> {
    crate::host_cgroup::spare_caller_from_oom();
    let plan = Plan {
        id: id.to_owned(),
        dir: dir.to_owned(),
        cgroups_path: sandbox::host_cgroups_path(spec, id),
        systemd,
        size: Size::of_pod(&config.hypervisor, spec),
        limit_memory: false,
        network: Network::Pod(network::pod_netns(spec)),
    };
    Ok(Box::new(PodVm {
        dir: dir.to_owned(),
        sandbox: Sandbox::boot(config, &plan)?,
    }))
}

/// Starts the agent on the host for a pod in namespace isolation.
fn start_host_agent(config: &Config, dir: &Path) -> Result<Box<dyn Backend>> {
    sandbox::make_private_dir(dir)?;
    let host = HostAgent::start(config, dir)?;
    let record = Record {
        agent: Some(host.process),
        ..Record::default()
    };
    if let Err(e) = record.save(dir) {
        tracing::warn!(error = %e, "record the pod's host processes");
    }
    Ok(Box::new(host))
}

/// A pod's VM: its sandbox, whose directory is the pod's.
struct PodVm {
    dir: PathBuf,
    sandbox: Sandbox,
}

impl Backend for PodVm {
    fn isolation(&self) -> Isolation {
        Isolation::Vm
    }

    fn agent(&self) -> &Agent {
        self.sandbox.agent()
    }

    fn stdio(&self) -> StdioAddr {
        StdioAddr::Hybrid(sandbox::vsock_uds(&self.dir))
    }

    fn task_pid(&self, _pid: u32) -> u32 {
        self.sandbox.vmm_pid()
    }

    /// The bundle shared with the VM, in the pod's network, and (for a
    /// pod's later containers) in the sandbox's namespaces in the guest.
    fn agent_spec(
        &self,
        id: &str,
        bundle: &Path,
        bundle_spec: &Spec,
        sandbox: Option<&str>,
    ) -> Result<Spec, TaskError> {
        let mut guest = share::prepare(id, bundle, bundle_spec, &sandbox::share_dir(&self.dir))?;
        spec::use_pod_network(&mut guest);
        if let Some(sandbox) = sandbox {
            let pid = self
                .agent()
                .state(sandbox)
                .map_err(|e| TaskError::from(e).context("the pod's sandbox container"))?
                .pid;
            spec::join_sandbox_namespaces(bundle_spec, &mut guest, pid);
        }
        Ok(guest)
    }

    fn post_mortem(&mut self) -> Option<String> {
        Some(self.sandbox.post_mortem())
    }

    /// A VMM the host's OOM killer ended took the process with it.
    fn lost_cause(&self) -> LostCause {
        let watch = self.sandbox.host_cgroup().and_then(HostCgroup::oom_watch);
        Box::new(move || watch.as_ref().is_some_and(OomWatch::fired))
    }

    fn shut_down(self: Box<Self>, _dir: &Path) -> bool {
        self.sandbox.shutdown();
        true
    }
}

impl Backend for HostAgent {
    fn isolation(&self) -> Isolation {
        Isolation::Namespace
    }

    fn agent(&self) -> &Agent {
        &self.agent
    }

    fn stdio(&self) -> StdioAddr {
        StdioAddr::Unix(self.stdio.clone())
    }

    fn task_pid(&self, pid: u32) -> u32 {
        pid
    }

    /// The bundle's spec as runc would run it: CRI's namespace paths are
    /// the host's, as is everything else.
    fn agent_spec(
        &self,
        _id: &str,
        bundle: &Path,
        bundle_spec: &Spec,
        _sandbox: Option<&str>,
    ) -> Result<Spec, TaskError> {
        Ok(spec::host_spec(bundle, bundle_spec))
    }

    fn post_mortem(&mut self) -> Option<String> {
        None
    }

    /// An agent on the host that died leaves its containers running until
    /// they are removed: the exit is not told before that.
    fn lost_cause(&self) -> LostCause {
        let ended = Arc::clone(&self.ended);
        Box::new(move || {
            if !ended.wait(HOST_AGENT_END) {
                tracing::warn!("the host agent's containers are not gone yet");
            }
            false
        })
    }

    fn shut_down(self: Box<Self>, dir: &Path) -> bool {
        self.stop();
        super::host::remove_leftovers(dir)
    }
}
