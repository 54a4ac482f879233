//! A VM sandbox, brought up and taken down in one place for every caller:
//! the OCI command line's VM containers, the shim's VM pods and
//! `kata-rs check --boot`.
//!
//! [`Sandbox::boot`] makes the sandbox's host cgroup and joins it, sizes
//! the guest under its memory bound, connects the pod's network, starts
//! virtiofsd on the sandbox's `share/` directory and the VMM, waits for the
//! agent and records the host processes in the sandbox directory;
//! [`Sandbox::shutdown`] (or [`end_recorded`], from another process) takes
//! all of it down again.
//!
//! - [`agent`]: the agent's requests, typed;
//! - [`vmm`]: the VMM process;
//! - [`virtiofsd`]: the shared directory's server;
//! - [`share`]: a container's bundle in the share, and the guest's view of
//!   its spec;
//! - [`network`]: a pod's network namespace joined to the VM's NICs;
//! - [`size`]: how large the VM is;
//! - [`record`]: the host processes, recorded for a later command;
//! - [`process`]: host processes known by pid and start time;
//! - [`stdio`]: a process's stdio streams to the agent;
//! - [`error`]: how bringing a sandbox up or down fails.

pub mod agent;
pub mod error;
pub mod network;
pub mod process;
pub mod record;
pub mod share;
pub mod size;
pub mod stdio;
pub mod virtiofsd;
pub mod vmm;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use kata_rs_protocol::SHARED_FS_TAG;
use nix::sys::signal::Signal;

use crate::config::Config;
use crate::host_cgroup::{fit_guest, HostCgroup};
use agent::Agent;
use error::{FileError, OnPath, SandboxError};
use network::PodNetwork;
use process::ProcRef;
use record::Record;
use size::Size;
use vmm::{Nic, Vmm, VmmSpec};

type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// How long the guest may take to boot to a serving agent.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a guest has to power off after DestroySandbox before its VMM
/// is killed. The agent syncs before it reboots and keeps nothing, the
/// shared directory is the host's, and callers wait meanwhile (a pod's
/// shim holds its lock, which containerd's calls queue on): nothing is
/// lost by a short one. Two guests powering off at once in the emulated
/// KVM host took over 30 s.
pub const POWER_OFF_GRACE: Duration = Duration::from_secs(2);

/// How long virtiofsd has to exit once its guest is gone.
const VIRTIOFSD_GRACE: Duration = Duration::from_secs(5);

/// The hybrid vsock socket of the sandbox in `dir`: where the VMM binds it
/// and where later commands find the agent. Names in a sandbox directory
/// are short: socket paths must fit in 108 bytes under containerd's deep
/// roots.
pub fn vsock_uds(dir: &Path) -> PathBuf {
    dir.join("vsock.sock")
}

/// Makes a sandbox's (or a pod's) directory `dir`, and what is missing
/// above it, for its owner alone: it holds the sandbox's sockets, its guest's
/// console and the host processes' logs.
pub fn make_private_dir(dir: &Path) -> Result<(), FileError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .on_path("create", dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).on_path("restrict", dir)
}

/// The directory virtiofsd shares with the guest.
pub fn share_dir(dir: &Path) -> PathBuf {
    dir.join("share")
}

fn virtiofsd_socket(dir: &Path) -> PathBuf {
    dir.join("fs.sock")
}

/// The host cgroup of the sandbox of container `id`: its cgroupsPath, as
/// runc would make it for the container, else one of kata-rs's own.
pub fn host_cgroups_path(spec: &oci_spec::runtime::Spec, id: &str) -> String {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| format!("/kata-rs/{id}"))
}

/// What a sandbox's VM is attached to.
#[derive(Debug, Clone)]
pub enum Network {
    /// Nothing: the guest has loopback only, and each container makes its
    /// own network namespace in it.
    None,
    /// A pod's network: the guest's own namespace is set up as the pod's,
    /// with a NIC for each interface of this network namespace, if any.
    Pod(Option<PathBuf>),
}

/// The sandbox to boot.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The sandbox's name in logs, and its host cgroup's.
    pub id: String,
    /// Where its sockets, logs, share and record live (created if needed).
    pub dir: PathBuf,
    /// Its host cgroup (see `host_cgroup`): a cgroupsPath, and whether the
    /// systemd driver makes it.
    pub cgroups_path: String,
    pub systemd: bool,
    /// The VM's size, before it is fitted under the cgroup's memory bound.
    pub size: Size,
    /// Bound the host cgroup's memory at the guest's RAM plus
    /// `hypervisor.host_overhead_mib`: a container's memory limit under
    /// the OCI command line, which a VM as a whole then stays within.
    pub limit_memory: bool,
    pub network: Network,
}

/// A booted sandbox. Dropped without [`Sandbox::shutdown`] or
/// [`Sandbox::detach`], it is taken down at once.
pub struct Sandbox {
    id: String,
    dir: PathBuf,
    vmm: Vmm,
    virtiofsd: ProcRef,
    network: PodNetwork,
    cgroup: Option<HostCgroup>,
    agent: Agent,
    detached: bool,
}

impl Sandbox {
    /// Boots the sandbox of `plan`; the calling process is left in its host
    /// cgroup, so that what it spawns next is born there too.
    pub fn boot(config: &Config, plan: &Plan) -> Result<Self> {
        Self::boot_within(config, plan, BOOT_TIMEOUT)
    }

    /// [`Sandbox::boot`], with the guest given `timeout` to boot to a
    /// serving agent.
    pub fn boot_within(config: &Config, plan: &Plan, timeout: Duration) -> Result<Self> {
        let dir = &plan.dir;
        let share = share_dir(dir);
        make_private_dir(dir)?;
        std::fs::create_dir_all(&share).on_path("create", &share)?;
        let cgroup = HostCgroup::create_and_join(&plan.cgroups_path, &plan.id, plan.systemd)?;
        let mut parts = Parts {
            id: &plan.id,
            dir,
            cgroup: Some(cgroup),
            network: PodNetwork::default(),
            virtiofsd: None,
        };
        let vm = parts.boot(config, plan, timeout);
        match vm {
            Ok((vmm, agent)) => {
                let sandbox = Sandbox {
                    id: plan.id.clone(),
                    dir: dir.clone(),
                    vmm,
                    virtiofsd: parts.virtiofsd.take().expect("started by boot"),
                    network: std::mem::take(&mut parts.network),
                    cgroup: parts.cgroup.take(),
                    agent,
                    detached: false,
                };
                sandbox.record().save(dir)?;
                tracing::info!(id = %plan.id, vmm = sandbox.vmm.vmm_pid(), "sandbox booted");
                Ok(sandbox)
            }
            Err(e) => {
                parts.end();
                Err(SandboxError::Boot(Box::new(e)))
            }
        }
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    pub fn vmm_pid(&self) -> u32 {
        self.vmm.vmm_pid()
    }

    pub fn host_cgroup(&self) -> Option<&HostCgroup> {
        self.cgroup.as_ref()
    }

    /// What the VM side tells after a request to the agent failed (see
    /// [`Vmm::post_mortem`]).
    pub fn post_mortem(&mut self) -> String {
        self.vmm.post_mortem()
    }

    fn record(&self) -> Record {
        Record {
            vmm: ProcRef::of(self.vmm.vmm_pid() as i32),
            virtiofsd: Some(self.virtiofsd),
            agent: None,
            host_cgroup: self.cgroup.as_ref().map(|c| c.reference().clone()),
        }
    }

    /// Leaves the sandbox running for a later command, which ends it with
    /// [`end_recorded`].
    pub fn detach(mut self) {
        self.vmm.detach();
        self.detached = true;
    }

    /// Has the agent power the guest off, gives it [`POWER_OFF_GRACE`]
    /// (see [`Vmm::power_off`]) and takes the rest down: the VMM's exit
    /// status, when it could be waited for.
    pub fn shutdown(mut self) -> Option<ExitStatus> {
        self.vmm
            .power_off(&self.agent, POWER_OFF_GRACE)
            .inspect_err(|e| tracing::warn!(id = %self.id, error = %e, "wait for the VMM"))
            .ok()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.vmm.kill();
        Parts {
            id: &self.id,
            dir: &self.dir,
            cgroup: self.cgroup.take(),
            network: std::mem::take(&mut self.network),
            virtiofsd: Some(self.virtiofsd),
        }
        .end();
    }
}

/// What of a sandbox stands besides its VMM: made in this order by a boot,
/// ended in the reverse order.
struct Parts<'a> {
    id: &'a str,
    dir: &'a Path,
    cgroup: Option<HostCgroup>,
    network: PodNetwork,
    virtiofsd: Option<ProcRef>,
}

impl Parts<'_> {
    /// Fits the guest under the cgroup's bound, connects the network,
    /// starts virtiofsd and the VMM, and waits for the agent.
    fn boot(&mut self, config: &Config, plan: &Plan, timeout: Duration) -> Result<(Vmm, Agent)> {
        let cgroup = self.cgroup.as_ref().expect("joined by Sandbox::boot");
        let overhead = config.hypervisor.host_overhead_mib;
        if plan.limit_memory {
            cgroup.limit_memory(plan.size.memory_mib + overhead)?;
        }
        let bound = cgroup
            .reference()
            .memory
            .as_ref()
            .and_then(|m| m.bound_mib());
        let size = Size {
            memory_mib: fit_guest(plan.size.memory_mib, bound, overhead)?,
            ..plan.size
        };
        if let Network::Pod(Some(netns)) = &plan.network {
            self.network = network::connect(netns).map_err(|cause| SandboxError::Network {
                netns: netns.clone(),
                cause,
            })?;
        }
        self.virtiofsd = Some(virtiofsd::start(config, self.dir)?);
        let nics = self
            .network
            .taps
            .drain(..)
            .zip(&self.network.nics)
            .map(|(tap, nic)| Nic {
                tap,
                mac: nic.mac.clone(),
                mtu: nic.mtu,
            })
            .collect();
        let spec = VmmSpec {
            size,
            fs: vec![(SHARED_FS_TAG.to_owned(), virtiofsd_socket(self.dir))],
            nics,
        };
        let mut vmm = Vmm::start(&config.hypervisor, &spec, self.dir)?;
        let agent = Agent::new(vmm.wait_for_agent(timeout)?);
        if let Network::Pod(_) = plan.network {
            agent.setup_pod_network(&self.network.request())?;
        }
        Ok((vmm, agent))
    }

    /// Ends what stands once the VMM is gone: virtiofsd, the network's
    /// taps, every share left, the host cgroup and the record.
    fn end(self) {
        if let Some(virtiofsd) = self.virtiofsd {
            virtiofsd.signal(Signal::SIGTERM);
            virtiofsd.stop(VIRTIOFSD_GRACE);
        }
        network::disconnect(&self.network);
        share::teardown_all(&share_dir(self.dir));
        if let Some(cgroup) = self.cgroup {
            if let Err(e) = cgroup.remove() {
                tracing::warn!(id = self.id, error = %e, "remove the sandbox's host cgroup");
            }
        }
        Record::remove(self.dir);
    }
}

/// Ends the sandbox recorded in `dir` by another process: the guest is
/// asked to power off (its VMM killed after [`POWER_OFF_GRACE`]), a host
/// agent killed, virtiofsd stopped and the shares unmounted; then
/// `before_cgroup` runs (to end whatever else the caller started in the
/// host cgroup) and the host cgroup is removed.
pub fn end_recorded(dir: &Path, id: &str, before_cgroup: impl FnOnce()) -> Result<()> {
    let record = Record::load(dir)?;
    if let Some(vmm) = record.vmm.filter(ProcRef::alive) {
        match Agent::connect(&vsock_uds(dir)).and_then(|agent| agent.destroy_sandbox()) {
            Ok(()) => vmm.stop(POWER_OFF_GRACE),
            Err(e) => {
                tracing::warn!(id, error = %e, "the guest was not asked to power off; killing its VMM");
                vmm.signal(Signal::SIGKILL);
                vmm.stop(VIRTIOFSD_GRACE);
            }
        }
    }
    if let Some(agent) = record.agent {
        agent.signal(Signal::SIGKILL);
        agent.stop(VIRTIOFSD_GRACE);
    }
    if let Some(virtiofsd) = record.virtiofsd {
        virtiofsd.signal(Signal::SIGTERM);
        virtiofsd.stop(VIRTIOFSD_GRACE);
    }
    share::teardown_all(&share_dir(dir));
    before_cgroup();
    if let Some(at) = &record.host_cgroup {
        HostCgroup::open(at, id)
            .and_then(HostCgroup::remove)
            .map_err(|cause| SandboxError::End {
                id: id.to_owned(),
                cause,
            })?;
    }
    Record::remove(dir);
    Ok(())
}
