//! One pod as the shim holds it: where its containers run (its microVM:
//! the VMM, virtiofsd sharing the pod's directory and the agent in the
//! guest; or, in namespace isolation, an agent on the host), and the
//! containers and exec'd processes the agent runs. The first container
//! starts the backend; the last one deleted takes it down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use kata_rs_engine::hooks::HostHook;
use serde_json::Value;

use super::hooks::HostHooks;
use super::host::HostAgent;
use super::io::{self, Fifos, Relays};
use crate::config::{Config, Isolation};
use crate::error::{kind_of, Kind};
use crate::host_cgroup::{HostCgroup, OomWatch};
use crate::sandbox::agent::{Agent, LOST_STATUS};
use crate::sandbox::network;
use crate::sandbox::record::Record;
use crate::sandbox::size::Size;
use crate::sandbox::stdio::{self, StdioAddr, Streams, DRAIN_BOUND};
use crate::sandbox::{self, share, Network, Plan, Sandbox};

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub struct Exited {
    pub status: u32,
    pub at: SystemTime,
    pub oom_killed: bool,
}

/// Where a process's exit is waited for by any number of callers. The exit
/// is recorded first (so that State and Delete see the process stopped as
/// soon as its exit event can be out), then released to the waiters once
/// the event is out (so that Wait returns after it).
#[derive(Default)]
pub struct ExitCell {
    state: Mutex<(Option<Exited>, bool)>,
    cond: Condvar,
}

impl ExitCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Exited>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, exited: Exited) {
        self.lock().0 = Some(exited);
    }

    fn release(&self) {
        self.lock().1 = true;
        self.cond.notify_all();
    }

    /// The exit, once recorded.
    pub fn get(&self) -> Option<Exited> {
        self.lock().0
    }

    /// The exit, once released.
    pub fn wait(&self) -> Exited {
        let mut state = self.lock();
        loop {
            if let (Some(e), true) = *state {
                return e;
            }
            state = self.cond.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A container's init or an exec'd process.
pub struct Process {
    pub fifos: Fifos,
    /// The OCI process of an exec, until it starts.
    exec_spec: Option<Value>,
    relays: Option<Relays>,
    pub exit: Arc<ExitCell>,
    pub started: bool,
    /// An exec's pid where the agent runs, once started.
    pid: u32,
}

impl Process {
    fn new(fifos: Fifos, exec_spec: Option<Value>) -> Self {
        Self {
            fifos,
            exec_spec,
            relays: None,
            exit: Arc::default(),
            started: false,
            pid: 0,
        }
    }

    pub fn status(&self, paused: bool) -> &'static str {
        match (self.exit.get(), self.started, paused) {
            (Some(_), _, _) => "stopped",
            (None, false, _) => "created",
            (None, true, true) => "paused",
            (None, true, false) => "running",
        }
    }
}

pub struct Container {
    pub bundle: PathBuf,
    /// Its init's host pid, in namespace isolation; 0 in a VM.
    pid: u32,
    /// Where containerd's rootfs mounts were mounted by us.
    rootfs_mount: Option<PathBuf>,
    /// The hooks the shim runs for it on the host (in a VM only).
    hooks: Option<HostHooks>,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    pub paused: bool,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs.get(exec_id).ok_or_else(|| no_process(exec_id))
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| no_process(exec_id))
    }
}

/// Where a pod's containers run.
enum Backend {
    Vm(Box<Sandbox>),
    Host(HostAgent),
}

impl Backend {
    fn agent(&self) -> &Agent {
        match self {
            Backend::Vm(sandbox) => sandbox.agent(),
            Backend::Host(host) => &host.agent,
        }
    }

    fn isolation(&self) -> Isolation {
        match self {
            Backend::Vm(_) => Isolation::Vm,
            Backend::Host(_) => Isolation::Namespace,
        }
    }
}

pub struct Pod {
    dir: PathBuf,
    config: Config,
    backend: Option<Backend>,
    pub containers: HashMap<String, Container>,
}

impl Pod {
    pub fn new(dir: PathBuf, config: Config) -> Self {
        Self {
            dir,
            config,
            backend: None,
            containers: HashMap::new(),
        }
    }

    /// Uses the configuration file at `path` for the pod, unless its
    /// backend already runs (with the configuration of its first
    /// container).
    pub fn use_config(&mut self, path: &Path) -> Result<()> {
        if self.backend.is_none() {
            self.config = Config::load(Some(path))?.0;
        }
        Ok(())
    }

    /// What containerd is told as the pid of process `exec_id` (the init
    /// when empty) of container `id`: in a VM, the VMM's, since the
    /// container's own processes live in the guest; on the host, the
    /// process's own (CRI names a pod's namespaces after its sandbox's).
    pub fn task_pid(&self, id: &str, exec_id: &str) -> u32 {
        match &self.backend {
            Some(Backend::Vm(sandbox)) => sandbox.vmm_pid(),
            Some(Backend::Host(_)) => self.containers.get(id).map_or(0, |c| {
                if exec_id.is_empty() {
                    c.pid
                } else {
                    c.execs.get(exec_id).map_or(0, |p| p.pid)
                }
            }),
            None => 0,
        }
    }

    pub fn container(&self, id: &str) -> Result<&Container> {
        self.containers.get(id).ok_or_else(|| no_container(id))
    }

    fn container_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.containers.get_mut(id).ok_or_else(|| no_container(id))
    }

    fn agent(&self) -> Result<&Agent> {
        self.backend
            .as_ref()
            .map(Backend::agent)
            .ok_or_else(|| anyhow!("the pod's VM or host agent is not running"))
    }

    /// Where the pod's agent takes stdio streams.
    fn stdio(&self) -> Result<StdioAddr> {
        match &self.backend {
            Some(Backend::Vm(_)) => Ok(StdioAddr::Hybrid(sandbox::vsock_uds(&self.dir))),
            Some(Backend::Host(host)) => Ok(StdioAddr::Unix(host.stdio.clone())),
            None => bail!("the pod's VM or host agent is not running"),
        }
    }

    /// Starts the agent on the host for a pod in namespace isolation.
    fn start_host_agent(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("create {}", self.dir.display()))?;
        let host = HostAgent::start(&self.config, &self.dir)?;
        let record = Record {
            agent: Some(host.process),
            ..Record::default()
        };
        if let Err(e) = record.save(&self.dir) {
            tracing::warn!(error = %e, "record the pod's host processes");
        }
        self.backend = Some(Backend::Host(host));
        Ok(())
    }

    /// Boots the pod's VM for its sandbox container `id`, sized for its
    /// `spec`, with the pod directory shared and a NIC for each interface
    /// of the pod's network namespace; the shim, the VMM and virtiofsd live
    /// in the sandbox's host cgroup (see `host_cgroup`).
    fn boot(&mut self, id: &str, spec: &Value, systemd: bool) -> Result<()> {
        crate::host_cgroup::spare_caller_from_oom();
        let plan = Plan {
            id: id.to_owned(),
            dir: self.dir.clone(),
            cgroups_path: sandbox::host_cgroups_path(spec, id),
            systemd,
            size: Size::of_pod(&self.config.hypervisor, spec),
            limit_memory: false,
            network: Network::Pod(network::pod_netns(spec).map(PathBuf::from)),
        };
        let sandbox = Sandbox::boot(&self.config, &plan)?;
        self.backend = Some(Backend::Vm(Box::new(sandbox)));
        Ok(())
    }

    /// Creates container `id` from `bundle`: mounts containerd's rootfs
    /// mounts, starts the pod's backend (boots the VM, or starts the host
    /// agent) if this is the pod's first container, shares the bundle with
    /// a VM, connects the stdio and has the agent create it.
    pub fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        rootfs: &[RootfsMount],
        fifos: Fifos,
    ) -> Result<()> {
        kata_rs_engine::validate_id(id).map_err(|e| Kind::InvalidArgument.err(e.to_string()))?;
        if self.containers.contains_key(id) {
            return Err(Kind::AlreadyExists.err(format!("container {id} already exists")));
        }
        let spec: Value = serde_json::from_slice(
            &std::fs::read(bundle.join("config.json"))
                .with_context(|| format!("read {}/config.json", bundle.display()))?,
        )
        .with_context(|| format!("{}/config.json is not valid JSON", bundle.display()))?;
        // A pod's later containers take its isolation; one that asks for
        // another by annotation is refused.
        let asked = Isolation::annotated(&spec)?;
        let running = self.backend.as_ref().map(Backend::isolation);
        let isolation = match (running, asked) {
            (Some(running), Some(asked)) if running != asked => bail!(
                "container {id}: its pod runs in {running} isolation, not {asked}: \
                 the containers of one pod share one"
            ),
            (Some(running), _) => running,
            (None, asked) => asked.unwrap_or(self.config.runtime.isolation),
        };
        let systemd = crate::cgroup_driver::systemd(false, &self.config)
            .with_context(|| format!("container {id}"))?;
        if let Some(path) = spec["linux"]["cgroupsPath"].as_str() {
            if !systemd && isolation == Isolation::Namespace && path.split(':').count() == 3 {
                tracing::info!(
                    container_id = id,
                    path,
                    "a systemd-style cgroupsPath, taken as a cgroupfs path as runc does \
                     (runtime.systemd_cgroup is false)"
                );
            }
        }
        let hooks = match isolation {
            Isolation::Vm => share::refuse_guest_hooks(&spec)
                .and_then(|()| HostHooks::of(bundle, &spec))
                .with_context(|| format!("container {id}"))?,
            Isolation::Namespace => None,
        };
        let rootfs_mount = mount_rootfs(bundle, &spec, rootfs)?;
        let made = self
            .create_in(id, bundle, &spec, fifos, isolation, systemd)
            .and_then(|made| self.run_create_hooks(id, hooks.as_ref()).map(|()| made));
        match made {
            Ok((init, pid)) => {
                self.containers.insert(
                    id.to_owned(),
                    Container {
                        bundle: bundle.to_owned(),
                        pid,
                        rootfs_mount,
                        hooks,
                        init,
                        execs: HashMap::new(),
                        paused: false,
                    },
                );
                Ok(())
            }
            Err(e) => {
                let _ = share::teardown(&sandbox::share_dir(&self.dir), id);
                if let Some(target) = &rootfs_mount {
                    unmount(target);
                }
                if self.containers.is_empty() {
                    self.shut_down();
                }
                Err(e.context(format!("container {id}: create")))
            }
        }
    }

    /// Has the pod's agent create container `id`: its init, and (on the
    /// host) its pid.
    fn create_in(
        &mut self,
        id: &str,
        bundle: &Path,
        spec: &Value,
        fifos: Fifos,
        isolation: Isolation,
        systemd: bool,
    ) -> Result<(Process, u32)> {
        if self.backend.is_none() {
            match isolation {
                Isolation::Vm => self.boot(id, spec, systemd)?,
                Isolation::Namespace => self.start_host_agent()?,
            }
        }
        let agent_spec = match isolation {
            Isolation::Vm => self.guest_spec(id, bundle, spec)?,
            // The host agent runs the bundle's spec as runc would: CRI's
            // namespace paths are the host's, as is everything else.
            Isolation::Namespace => host_spec(bundle, spec),
        };
        let streams = Streams::connect(&self.stdio()?, id, "", fifos.terminal)?;
        let relays = io::relay(streams, &fifos)?;
        let agent = self.agent()?;
        if let Err(err) = agent.create(id, &agent_spec) {
            match self.backend.as_mut() {
                Some(Backend::Vm(sandbox)) => {
                    let message = format!("{err:#}; {}", sandbox.post_mortem());
                    return Err(match kind_of(&err) {
                        Some(kind) => kind.err(message),
                        None => anyhow!(message),
                    });
                }
                _ => return Err(err),
            }
        }
        let pid = match isolation {
            Isolation::Vm => 0,
            Isolation::Namespace => {
                let pid = agent.state(id).and_then(|s| {
                    u32::try_from(s.pid)
                        .map_err(|_| anyhow!("container {id}: the agent gave pid {}", s.pid))
                });
                match pid {
                    Ok(pid) => pid,
                    Err(e) => {
                        let _ = agent.remove(id);
                        return Err(e);
                    }
                }
            }
        };
        let mut init = Process::new(fifos, None);
        init.relays = Some(relays);
        Ok((init, pid))
    }

    /// Runs the prestart and createRuntime hooks of container `id`, just
    /// created in the VM; if one fails, removes it there and runs the
    /// poststop hooks, as runc does.
    fn run_create_hooks(&self, id: &str, hooks: Option<&HostHooks>) -> Result<()> {
        let Some(hooks) = hooks else { return Ok(()) };
        let vmm = self.task_pid(id, "");
        let ran = hooks
            .run(id, HostHook::Prestart, vmm)
            .and_then(|()| hooks.run(id, HostHook::CreateRuntime, vmm));
        if ran.is_err() {
            if let Err(e) = self.agent()?.remove(id) {
                tracing::warn!(id, error = %e, "remove the container in the agent");
            }
            hooks.run_logged(id, HostHook::Poststop, vmm);
        }
        ran
    }

    /// The spec as the guest runs it: the bundle shared with the VM, in
    /// the pod's network, and (for a pod's later containers) in the
    /// sandbox's namespaces in the guest.
    fn guest_spec(&self, id: &str, bundle: &Path, spec: &Value) -> Result<Value> {
        let mut guest_spec = share::prepare(id, bundle, spec, &sandbox::share_dir(&self.dir))?;
        use_pod_network(&mut guest_spec);
        let sandbox = self.sandbox_id();
        if sandbox.as_deref() != Some(id)
            && sandbox.is_some_and(|s| self.containers.contains_key(&s))
        {
            self.join_sandbox_namespaces(spec, &mut guest_spec)?;
        }
        Ok(guest_spec)
    }

    /// The pod's sandbox container: the one the pod (and its directory) is
    /// named after, when CRI made the pod.
    fn sandbox_id(&self) -> Option<String> {
        Some(self.dir.file_name()?.to_str()?.to_owned())
    }

    /// A pod's container shares the sandbox's IPC and UTS (and PID, where
    /// the pod shares it) namespaces: CRI names them by host paths, which
    /// mean nothing in the guest, so the guest spec names the sandbox
    /// init's namespaces in the guest instead.
    fn join_sandbox_namespaces(&self, spec: &Value, guest: &mut Value) -> Result<()> {
        let Some(sandbox) = self.sandbox_id() else {
            return Ok(());
        };
        let pid = self
            .agent()?
            .state(&sandbox)
            .context("the pod's sandbox container")?
            .pid;
        let joined = |kind: &str| {
            spec["linux"]["namespaces"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|ns| ns["type"] == kind && ns.get("path").is_some())
            })
        };
        let Some(namespaces) = guest["linux"]["namespaces"].as_array_mut() else {
            return Ok(());
        };
        for ns in namespaces {
            let kind = ns["type"].as_str().unwrap_or_default().to_owned();
            let proc_name = match kind.as_str() {
                "ipc" => "ipc",
                "uts" => "uts",
                "pid" => "pid",
                _ => continue,
            };
            if joined(&kind) {
                ns["path"] = format!("/proc/{pid}/ns/{proc_name}").into();
            }
        }
        Ok(())
    }

    /// Registers exec `exec_id` in container `id`; it starts with
    /// [`Pod::start`].
    pub fn add_exec(
        &mut self,
        id: &str,
        exec_id: &str,
        process: Value,
        fifos: Fifos,
    ) -> Result<()> {
        let c = self.container_mut(id)?;
        if c.init.status(c.paused) != "running" {
            return Err(Kind::FailedPrecondition
                .err(format!("container {id} is not running: cannot exec in it")));
        }
        if c.execs.contains_key(exec_id) {
            return Err(Kind::AlreadyExists.err(format!(
                "process {exec_id} already exists in container {id}"
            )));
        }
        c.execs
            .insert(exec_id.to_owned(), Process::new(fifos, Some(process)));
        Ok(())
    }

    /// Starts the container's init or an exec, and a thread that waits for
    /// it, drains its output, calls `on_exit` and then records the exit.
    pub fn start(
        &mut self,
        id: &str,
        exec_id: &str,
        on_exit: impl FnOnce(Exited) + Send + 'static,
    ) -> Result<()> {
        let agent = self.agent()?.clone();
        let stdio = self.stdio()?;
        let host_agent = match &self.backend {
            Some(Backend::Host(host)) => Some(Arc::clone(&host.ended)),
            _ => None,
        };
        let vmm = self.task_pid(id, "");
        let c = self.container_mut(id)?;
        let p = c.process_mut(exec_id)?;
        if p.started {
            return Err(Kind::FailedPrecondition.err(format!(
                "process {} of container {id} was already started",
                name(exec_id)
            )));
        }
        if exec_id.is_empty() {
            agent.start(id)?;
        } else {
            let streams = Streams::connect(&stdio, id, exec_id, p.fifos.terminal)?;
            p.relays = Some(io::relay(streams, &p.fifos)?);
            match agent.exec(id, exec_id, &p.exec_spec.take().unwrap_or_default()) {
                Ok(pid) => p.pid = pid,
                Err(e) => {
                    if let Some(r) = p.relays.take() {
                        r.close_stdin();
                    }
                    return Err(e);
                }
            }
        }
        p.started = true;
        let outputs = p
            .relays
            .as_mut()
            .map(|r| std::mem::take(&mut r.outputs))
            .unwrap_or_default();
        let exit = Arc::clone(&p.exit);
        if let Some(hooks) = exec_id
            .is_empty()
            .then_some(&c.hooks)
            .and_then(Option::as_ref)
        {
            hooks.run_logged(id, HostHook::Poststart, vmm);
        }
        let host_oom = match &self.backend {
            Some(Backend::Vm(sandbox)) => sandbox.host_cgroup().and_then(HostCgroup::oom_watch),
            _ => None,
        };
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        std::thread::spawn(move || {
            let (status, oom_killed) = agent
                .wait(&id, &exec_id)
                .map(|exit| (exit.status, exit.oom_killed))
                .unwrap_or_else(|e| {
                    tracing::warn!(id, exec_id, error = %e, "the process could not be waited for");
                    // An agent on the host that died leaves its containers
                    // running until they are removed: the exit is not told
                    // before that.
                    if let Some(ended) = &host_agent {
                        if !ended.wait(Duration::from_secs(30)) {
                            tracing::warn!(id, "the host agent's containers are not gone yet");
                        }
                    }
                    // A VMM the host's OOM killer ended took the process
                    // with it the same way.
                    let oom_killed = host_oom.as_ref().is_some_and(OomWatch::fired);
                    (LOST_STATUS, oom_killed)
                });
            let exited = Exited {
                status: status as u32,
                at: SystemTime::now(),
                oom_killed,
            };
            stdio::join_bounded(outputs, DRAIN_BOUND);
            // Recorded before the exit event goes out: CRI deletes a task as
            // soon as it sees that event. Released after it: Wait returns,
            // and Delete publishes its own event, only once it is out.
            exit.record(exited);
            on_exit(exited);
            exit.release();
        });
        Ok(())
    }

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let p = self.container(id)?.process(exec_id)?;
        // runc's shim says the same: containerd takes NOT_FOUND for "already
        // gone" and goes on stopping the pod. So does a kill of all the
        // container's processes: CRI's exit handling sends one, and must not
        // fail when the VM or host agent that ran them is gone.
        if p.exit.get().is_some() {
            return Err(Kind::NotFound.err(format!(
                "process {} of container {id} already finished",
                name(exec_id)
            )));
        }
        self.agent()?.signal(id, exec_id, signal, all)
    }

    pub fn set_paused(&mut self, id: &str, paused: bool) -> Result<()> {
        let agent = self.agent()?;
        if paused {
            agent.pause(id)?;
        } else {
            agent.resume(id)?;
        }
        self.container_mut(id)?.paused = paused;
        Ok(())
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        self.container(id)?;
        self.agent()?.pids(id)
    }

    pub fn update(&self, id: &str, resources: &Value) -> Result<()> {
        self.container(id)?;
        self.agent()?.update(id, resources)
    }

    pub fn stats(&self, id: &str) -> Result<Value> {
        self.container(id)?;
        self.agent()?.stats(id)
    }

    pub fn resize(&self, id: &str, exec_id: &str, columns: u32, rows: u32) -> Result<()> {
        self.container(id)?.process(exec_id)?;
        self.agent()?.resize(id, exec_id, columns, rows)
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        if let Some(r) = &self.container(id)?.process(exec_id)?.relays {
            r.close_stdin();
        }
        Ok(())
    }

    /// Deletes an exec (returning how it ended) or a whole container; the
    /// last container takes the VM or host agent down.
    pub fn delete(&mut self, id: &str, exec_id: &str) -> Result<Option<Exited>> {
        let c = self.container_mut(id)?;
        if !exec_id.is_empty() {
            let p = c.execs.remove(exec_id).ok_or_else(|| no_process(exec_id))?;
            return Ok(p.exit.get());
        }
        let status = c.init.status(c.paused);
        if status != "stopped" && status != "created" {
            return Err(Kind::FailedPrecondition
                .err(format!("container {id} is {status}: cannot delete it")));
        }
        let exited = c.init.exit.get();
        let vmm = self.task_pid(id, "");
        if let Ok(agent) = self.agent() {
            if let Err(e) = agent.remove(id) {
                tracing::warn!(id, error = %e, "remove the container in the agent");
            }
        }
        if let Some(c) = self.containers.remove(id) {
            if let Some(r) = &c.init.relays {
                r.close_stdin();
            }
            if let Err(e) = share::teardown(&sandbox::share_dir(&self.dir), id) {
                tracing::warn!(id, error = %e, "unmount the container's share");
            }
            if let Some(target) = &c.rootfs_mount {
                unmount(target);
            }
            if let Some(hooks) = &c.hooks {
                hooks.run_logged(id, HostHook::Poststop, vmm);
            }
        }
        if self.containers.is_empty() {
            self.shut_down();
        }
        Ok(exited)
    }

    /// Takes the VM and virtiofsd, or the host agent, and the pod
    /// directory down.
    pub fn shut_down(&mut self) {
        match self.backend.take() {
            Some(Backend::Vm(sandbox)) => {
                sandbox.shutdown();
            }
            Some(Backend::Host(host)) => {
                host.stop();
                if !super::host::remove_leftovers(&self.dir) {
                    // shim delete, or an operator, needs the engine's state.
                    tracing::warn!(dir = %self.dir.display(), "containers are left; keeping the pod directory");
                    return;
                }
            }
            None => {}
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "remove the pod directory");
            }
        }
    }
}

/// The spec as the host agent runs it: the bundle's, with the root and
/// relative bind mount sources made absolute (they are the bundle's, and
/// the agent's directory is not).
fn host_spec(bundle: &Path, spec: &Value) -> Value {
    let mut spec = spec.clone();
    let absolute = |path: &str| bundle.join(path).to_string_lossy().into_owned();
    let root = spec["root"]["path"].as_str().unwrap_or("rootfs").to_owned();
    if Path::new(&root).is_relative() {
        spec["root"]["path"] = absolute(&root).into();
    }
    for m in spec["mounts"].as_array_mut().into_iter().flatten() {
        if !share::is_bind(m) {
            continue;
        }
        if let Some(source) = m["source"].as_str().filter(|s| Path::new(s).is_relative()) {
            m["source"] = absolute(source).into();
        }
    }
    spec
}

/// The pod's containers live in the guest's own network namespace, which
/// the pod's network is set up in (the VM is the pod's network boundary):
/// the guest spec asks for no namespace of their own, whatever the host
/// spec says.
fn use_pod_network(guest: &mut Value) {
    if let Some(namespaces) = guest["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|ns| ns["type"] != "network");
    }
}

/// What a shim that died left of pod `dir`: its VM or host agent is
/// stopped, every share unmounted and the directory removed. For
/// containerd's `shim delete`.
pub fn clean_up_after(dir: &Path) {
    if let Err(e) = sandbox::end_recorded(dir, "sandbox", || {}) {
        tracing::warn!(error = %e, "end the pod's sandbox");
    }
    if !super::host::remove_leftovers(dir) {
        tracing::warn!(dir = %dir.display(), "containers are left; keeping the pod directory");
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn no_process(exec_id: &str) -> anyhow::Error {
    Kind::NotFound.err(format!("process {exec_id} does not exist"))
}

fn no_container(id: &str) -> anyhow::Error {
    Kind::NotFound.err(format!("container {id} does not exist"))
}

fn name(exec_id: &str) -> &str {
    if exec_id.is_empty() {
        "init"
    } else {
        exec_id
    }
}

/// One of containerd's rootfs mounts.
#[derive(Debug, Clone)]
pub struct RootfsMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Mounts containerd's rootfs mounts (an overlay of the image's layers,
/// usually) on the bundle's root path, as containerd's runc shim does.
fn mount_rootfs(bundle: &Path, spec: &Value, mounts: &[RootfsMount]) -> Result<Option<PathBuf>> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let root = spec["root"]["path"].as_str().unwrap_or("rootfs");
    let target = bundle.join(root);
    std::fs::create_dir_all(&target).with_context(|| format!("create {}", target.display()))?;
    for m in mounts {
        mount_one(m, &target)
            .with_context(|| format!("mount the rootfs ({} {})", m.kind, m.source))?;
    }
    Ok(Some(target))
}

/// One mount in containerd's terms: flag options become mount flags, the
/// others the filesystem's data. (containerd_shim's own helper forks and
/// waits through its reaper, which this shim does not run.)
fn mount_one(m: &RootfsMount, target: &Path) -> Result<()> {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in &m.options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    if m.kind == "bind" {
        flags |= MsFlags::MS_BIND;
    }
    let data = data.join(",");
    nix::mount::mount(
        Some(m.source.as_str()),
        target,
        Some(m.kind.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )?;
    Ok(())
}

fn unmount(target: &Path) {
    if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(target = %target.display(), error = %e, "unmount the rootfs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_exit_is_seen_when_recorded_and_waited_for_once_released() {
        let cell = Arc::new(ExitCell::default());
        let exited = Exited {
            status: 3,
            at: SystemTime::now(),
            oom_killed: false,
        };
        cell.record(exited);
        assert_eq!(cell.get().map(|e| e.status), Some(3));
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = Arc::clone(&cell);
        std::thread::spawn(move || tx.send(waiter.wait().status).unwrap());
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        cell.release();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(3));
    }

    #[test]
    fn pod_containers_ask_for_no_network_namespace_of_their_own() {
        let mut guest = json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network"}, {"type": "ipc"}]}});
        use_pod_network(&mut guest);
        assert_eq!(
            guest["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc"}])
        );
    }
}
