//! One pod as the shim holds it: its backend (see `backend`), and the
//! containers and exec'd processes the agent runs, with the task
//! operations on them. The first container starts the backend; the last
//! one deleted takes it down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{anyhow, Context};
use kata_rs_engine::hooks::HostHook;
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};
use serde_json::Value;

use super::backend::{self, Backend};
use super::error::TaskError;
use super::hooks::HostHooks;
use super::io::{self, Fifos};
use super::process::{Exited, Process};
use super::rootfs::{mount_rootfs, unmount, RootfsMount};
use crate::config::{Config, Isolation};
use crate::sandbox::agent::{Agent, LOST_STATUS};
use crate::sandbox::stdio::{self, Streams, DRAIN_BOUND};
use crate::sandbox::{self, share};

type Result<T, E = TaskError> = std::result::Result<T, E>;

pub struct Container {
    pub bundle: PathBuf,
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

pub struct Pod {
    dir: PathBuf,
    config: Config,
    backend: Option<Box<dyn Backend>>,
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
    pub fn use_config(&mut self, path: &Path) -> anyhow::Result<()> {
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
        let Some(backend) = &self.backend else {
            return 0;
        };
        let pid = self
            .containers
            .get(id)
            .and_then(|c| c.process(exec_id).ok())
            .map_or(0, |p| p.pid);
        backend.task_pid(pid)
    }

    pub fn container(&self, id: &str) -> Result<&Container> {
        self.containers.get(id).ok_or_else(|| no_container(id))
    }

    fn container_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.containers.get_mut(id).ok_or_else(|| no_container(id))
    }

    fn backend(&self) -> Result<&dyn Backend> {
        self.backend
            .as_deref()
            .ok_or_else(|| anyhow!("the pod's VM or host agent is not running").into())
    }

    fn agent(&self) -> Result<&Agent> {
        self.backend().map(|b| b.agent())
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
        kata_rs_engine::validate_id(id).map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        if self.containers.contains_key(id) {
            return Err(TaskError::ContainerExists(id.to_owned()));
        }
        let spec = crate::bundle::read_spec(bundle)?;
        // A pod's later containers take its isolation; one that asks for
        // another by annotation is refused.
        let asked = Isolation::annotated(&spec)?;
        let running = self.backend.as_ref().map(|b| b.isolation());
        let isolation = match (running, asked) {
            (Some(running), Some(asked)) if running != asked => {
                return Err(anyhow!(
                    "container {id}: its pod runs in {running} isolation, not {asked}: \
                     the containers of one pod share one"
                )
                .into())
            }
            (Some(running), _) => running,
            (None, asked) => asked.unwrap_or(self.config.runtime.isolation),
        };
        let systemd = crate::cgroup_driver::systemd(false, &self.config)
            .map_err(|e| TaskError::from(e).context(format!("container {id}")))?;
        if let Some(path) = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
        {
            let path = path.to_string_lossy();
            if !systemd && isolation == Isolation::Namespace && path.split(':').count() == 3 {
                tracing::info!(
                    container_id = id,
                    path = %path,
                    "a systemd-style cgroupsPath, taken as a cgroupfs path as runc does \
                     (runtime.systemd_cgroup is false)"
                );
            }
        }
        let hooks = match isolation {
            Isolation::Vm => {
                share::refuse_guest_hooks(&spec).with_context(|| format!("container {id}"))?;
                HostHooks::of(bundle, &spec)
            }
            Isolation::Namespace => None,
        };
        let rootfs_mount = mount_rootfs(bundle, &spec, rootfs)?;
        let made = self
            .create_in(id, bundle, &spec, fifos, isolation, systemd)
            .and_then(|made| self.run_create_hooks(id, hooks.as_ref()).map(|()| made));
        match made {
            Ok(init) => {
                self.containers.insert(
                    id.to_owned(),
                    Container {
                        bundle: bundle.to_owned(),
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

    /// Has the pod's agent create container `id`: its init, with its pid
    /// where the agent runs.
    fn create_in(
        &mut self,
        id: &str,
        bundle: &Path,
        spec: &Spec,
        fifos: Fifos,
        isolation: Isolation,
        systemd: bool,
    ) -> Result<Process> {
        if self.backend.is_none() {
            self.backend = Some(backend::start(
                isolation,
                &self.config,
                &self.dir,
                id,
                spec,
                systemd,
            )?);
        }
        let sandbox = self
            .sandbox_id()
            .filter(|s| s != id && self.containers.contains_key(s));
        let backend = self.backend()?;
        let agent_spec = backend.agent_spec(id, bundle, spec, sandbox.as_deref())?;
        let streams = Streams::connect(&backend.stdio(), id, "", fifos.terminal)?;
        let relays = io::relay(streams, &fifos)?;
        if let Err(inner) = backend.agent().create(id, &agent_spec) {
            let why = self.backend.as_mut().and_then(|b| b.post_mortem());
            return Err(match why {
                None => inner.into(),
                Some(post_mortem) => TaskError::PostMortem {
                    inner: Box::new(inner),
                    post_mortem,
                },
            });
        }
        let agent = self.agent()?;
        let pid = agent.state(id).map_err(TaskError::from).and_then(|s| {
            u32::try_from(s.pid)
                .map_err(|_| anyhow!("container {id}: the agent gave pid {}", s.pid).into())
        });
        let pid = match pid {
            Ok(pid) => pid,
            Err(e) => {
                let _ = agent.remove(id);
                return Err(e);
            }
        };
        let mut init = Process::new(fifos, None);
        init.relays = Some(relays);
        init.pid = pid;
        Ok(init)
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
        Ok(ran?)
    }

    /// The pod's sandbox container: the one the pod (and its directory) is
    /// named after, when CRI made the pod.
    fn sandbox_id(&self) -> Option<String> {
        Some(self.dir.file_name()?.to_str()?.to_owned())
    }

    /// Registers exec `exec_id` in container `id`; it starts with
    /// [`Pod::start`].
    pub fn add_exec(
        &mut self,
        id: &str,
        exec_id: &str,
        process: OciProcess,
        fifos: Fifos,
    ) -> Result<()> {
        let c = self.container_mut(id)?;
        if !c.init.status(c.paused).can_exec() {
            return Err(TaskError::NotRunning(id.to_owned()));
        }
        if c.execs.contains_key(exec_id) {
            return Err(TaskError::ProcessExists {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            });
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
        let backend = self.backend()?;
        let agent = backend.agent().clone();
        let stdio = backend.stdio();
        let lost_cause = backend.lost_cause();
        let vmm = self.task_pid(id, "");
        let c = self.container_mut(id)?;
        let p = c.process_mut(exec_id)?;
        if p.started {
            return Err(TaskError::Started {
                id: id.to_owned(),
                process: name(exec_id).to_owned(),
            });
        }
        if exec_id.is_empty() {
            agent.start(id)?;
        } else {
            let streams = Streams::connect(&stdio, id, exec_id, p.fifos.terminal)?;
            p.relays = Some(io::relay(streams, &p.fifos)?);
            let process = p.exec_spec.as_ref().ok_or_else(|| no_process(exec_id))?;
            match agent.exec(id, exec_id, process) {
                Ok(pid) => p.pid = pid,
                Err(e) => {
                    if let Some(r) = p.relays.take() {
                        r.close_stdin();
                    }
                    return Err(e.into());
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
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        std::thread::spawn(move || {
            let (status, oom_killed) = agent
                .wait(&id, &exec_id)
                .map(|exit| (exit.status, exit.oom_killed))
                .unwrap_or_else(|e| {
                    tracing::warn!(id, exec_id, error = %e, "the process could not be waited for");
                    (LOST_STATUS, lost_cause())
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
            return Err(TaskError::Finished {
                id: id.to_owned(),
                process: name(exec_id).to_owned(),
            });
        }
        Ok(self.agent()?.signal(id, exec_id, signal, all)?)
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
        Ok(self.agent()?.pids(id)?)
    }

    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.container(id)?;
        Ok(self.agent()?.update(id, resources)?)
    }

    pub fn stats(&self, id: &str) -> Result<Value> {
        self.container(id)?;
        Ok(self.agent()?.stats(id)?)
    }

    pub fn resize(&self, id: &str, exec_id: &str, columns: u32, rows: u32) -> Result<()> {
        self.container(id)?.process(exec_id)?;
        Ok(self.agent()?.resize(id, exec_id, columns, rows)?)
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
        if !status.can_delete() {
            return Err(TaskError::NotDeletable {
                id: id.to_owned(),
                status,
            });
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
        if let Some(backend) = self.backend.take() {
            if !backend.shut_down(&self.dir) {
                // shim delete, or an operator, needs the engine's state.
                tracing::warn!(dir = %self.dir.display(), "containers are left; keeping the pod directory");
                return;
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "remove the pod directory");
            }
        }
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

fn no_process(exec_id: &str) -> TaskError {
    TaskError::NoProcess(exec_id.to_owned())
}

fn no_container(id: &str) -> TaskError {
    TaskError::NoContainer(id.to_owned())
}

fn name(exec_id: &str) -> &str {
    if exec_id.is_empty() {
        "init"
    } else {
        exec_id
    }
}
