//! VM mode of the OCI command line: one microVM per container. `create`
//! shares the bundle over virtio-fs, boots the container's sandbox (see
//! `sandbox`), starts the monitor (the process that stands for the
//! container on the host) and has the agent create the container; the
//! other commands talk to the agent; `delete` takes all of it down.
//!
//! - [`state`]: what is remembered between commands;
//! - [`monitor`]: the --pid-file process.

pub mod monitor;
pub mod state;

use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kata_rs_engine::hooks::HostHook;
use kata_rs_engine::lock::IdLock;
use kata_rs_engine::{ContainerStatus, OciState};
use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde_json::Value;

use super::cli::{CreateArgs, ExecArgs};
use super::console::{self, OwnConsole};
use crate::config::Config;
use crate::sandbox::agent::Agent;
use crate::sandbox::process::ProcRef;
use crate::sandbox::record::Record;
use crate::sandbox::size::{memory_limit, Size};
use crate::sandbox::{self, share, Network, Plan, Sandbox};
use state::VmState;

const MONITOR_READY: Duration = Duration::from_secs(60);
/// How long the monitor has to exit once its VM is gone.
const MONITOR_GRACE: Duration = Duration::from_secs(5);

/// The ids of the VM containers under `root`.
pub fn ids(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|id| state::is_vm(root, id))
                .collect()
        })
        .unwrap_or_default()
}

/// A VM container loaded under its lock.
pub struct Vm {
    pub state: VmState,
    sandbox: Record,
    root: PathBuf,
    lock: IdLock,
}

impl Vm {
    pub fn load(root: &Path, id: &str) -> Result<Self> {
        let lock = IdLock::acquire(root, id)?;
        let state = VmState::load(root, id)?;
        let sandbox = Record::load(&state::dir(root, id))?;
        Ok(Vm {
            state,
            sandbox,
            root: root.to_owned(),
            lock,
        })
    }

    fn dir(&self) -> PathBuf {
        state::dir(&self.root, &self.state.id)
    }

    fn uds(&self) -> PathBuf {
        sandbox::vsock_uds(&self.dir())
    }

    /// Why the VM no longer runs, or None while it does.
    fn vm_gone(&self) -> Option<String> {
        match &self.sandbox.vmm {
            Some(vmm) => vmm.gone(),
            None => Some("no VMM is recorded".to_owned()),
        }
    }

    fn agent(&self) -> Result<Agent> {
        if let Some(why) = self.vm_gone() {
            bail!(
                "container {}: its VM is not running (the VMM: {why}; {})",
                self.state.id,
                sandbox::vmm::vmm_last_words(&self.dir())
            );
        }
        Ok(Agent::connect(&self.uds())?)
    }

    /// The status the OCI spec means: stopped once the monitor (which lives
    /// exactly as long as the container) or the VM is gone, else the
    /// agent's view.
    pub fn status(&self) -> ContainerStatus {
        if !self.state.monitor.alive() || self.vm_gone().is_some() {
            return ContainerStatus::Stopped;
        }
        match self.agent().and_then(|a| Ok(a.state(&self.state.id)?)) {
            Ok(state) => state.status,
            Err(e) => {
                tracing::debug!(error = %e, "the agent did not say; using the recorded status");
                self.state.status
            }
        }
    }
    pub fn oci_state(&self) -> OciState {
        let status = self.status();
        let rootfs = kata_rs_engine::load_bundle_spec(&self.state.id, &self.state.bundle)
            .ok()
            .and_then(|s| s.root().as_ref().map(|r| self.state.bundle.join(r.path())))
            .unwrap_or_default();
        OciState {
            oci_version: "1.0.2".into(),
            id: self.state.id.clone(),
            pid: if status.is_stopped() {
                0
            } else {
                self.state.monitor.pid
            },
            status,
            bundle: self.state.bundle.clone(),
            rootfs,
            created: self.state.created.clone(),
            owner: self.state.owner.clone(),
            annotations: self.state.annotations.clone(),
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let status = self.status();
        if !status.can_start() {
            bail!(
                "container {} is {status}: cannot start it (only a created container starts)",
                self.state.id
            );
        }
        self.agent()?.start(&self.state.id)?;
        self.state.status = ContainerStatus::Running;
        self.state.save(&self.root)?;
        if let Err(e) = run_hooks(&self.state, HostHook::Poststart) {
            tracing::warn!(id = %self.state.id, error = %e, "poststart hook failed");
        }
        Ok(())
    }

    pub fn kill(&self, signal: i32, all: bool) -> Result<()> {
        let status = self.status();
        if status.is_stopped() && !all {
            bail!(
                "container {} is stopped: cannot signal it: container not running",
                self.state.id
            );
        }
        if status.is_stopped() {
            return Ok(());
        }
        Ok(self
            .agent()?
            .signal(&self.state.id, "", signal as u32, all)?)
    }

    /// Pauses or resumes the container.
    fn set_paused(&mut self, paused: bool) -> Result<()> {
        let agent = self.agent()?;
        if paused {
            agent.pause(&self.state.id)?;
        } else {
            agent.resume(&self.state.id)?;
        }
        self.state.status = if paused {
            ContainerStatus::Paused
        } else {
            ContainerStatus::Running
        };
        self.state.save(&self.root)
    }

    pub fn pause(&mut self) -> Result<()> {
        self.set_paused(true)
    }

    pub fn resume(&mut self) -> Result<()> {
        self.set_paused(false)
    }

    pub fn pids(&self) -> Result<Vec<i32>> {
        Ok(self.agent()?.pids(&self.state.id)?)
    }

    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        Ok(self.agent()?.update(&self.state.id, resources)?)
    }

    pub fn stats(&self) -> Result<Value> {
        Ok(self.agent()?.stats(&self.state.id)?)
    }

    /// Stops the VM, virtiofsd and the monitor, runs the poststop hooks and
    /// removes the share and the state.
    pub fn delete(self, force: bool) -> Result<()> {
        let status = self.status();
        if !force && !status.can_delete() {
            bail!(
                "container {} is {status}: cannot delete it without --force",
                self.state.id
            );
        }
        // Without its VM the monitor's wait fails and it exits by itself.
        let monitor = self.state.monitor;
        sandbox::end_recorded(&self.dir(), &self.state.id, || monitor.stop(MONITOR_GRACE))
            .with_context(|| format!("container {}", self.state.id))?;
        if let Err(e) = run_hooks(&self.state, HostHook::Poststop) {
            tracing::warn!(id = %self.state.id, error = %e, "poststop hook failed");
        }
        std::fs::remove_dir_all(self.dir())
            .with_context(|| format!("remove {}", self.dir().display()))?;
        self.lock.remove();
        Ok(())
    }
}

/// Spawns the monitor of process (`id`, `exec_id`) as a new session, and
/// returns it with its control socket. It logs to monitor.log in the
/// container's state directory, never to its stderr, which may be the
/// container's. Without a terminal it has the caller's stdio, which become
/// the process's; with one, the terminal goes through the console socket
/// and the monitor keeps none of the caller's stdio: a caller that reads
/// our output to its end (containerd's shim does, for a create with a
/// terminal) would otherwise wait for the container to exit.
fn spawn_monitor(
    root: &Path,
    id: &str,
    exec_id: Option<&str>,
    tty: bool,
    console_socket: Option<&Path>,
) -> Result<(std::process::Child, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    let exe = std::env::current_exe().context("find the kata-rs binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(root)
        .arg("--log")
        .arg(state::dir(root, id).join("monitor.log"))
        .arg("vm-monitor");
    if let Some(e) = exec_id {
        cmd.args(["--exec-id", e]);
    }
    if tty {
        cmd.arg("--tty");
    }
    if let Some(c) = console_socket {
        cmd.arg("--console-socket").arg(c);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    }
    cmd.args(["--control-fd", "3", id]);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
    // SAFETY: dup2 and setsid are async-signal-safe; no Rust state is used.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("start the monitor")?;
    drop(theirs);
    monitor::await_ready(&ours, MONITOR_READY)?;
    Ok((child, ours))
}

fn terminal(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// `create --isolation=vm`; `systemd` chooses the driver of the host
/// cgroup.
pub fn create(root: &Path, config: &Config, args: &CreateArgs, systemd: bool) -> Result<()> {
    let id = &args.id;
    kata_rs_engine::validate_id(id)?;
    let bundle = std::path::absolute(&args.bundle)?;
    let spec = kata_rs_engine::load_bundle_spec(id, &bundle)?;
    share::refuse_guest_hooks(&spec).with_context(|| format!("container {id}"))?;
    let lock = IdLock::acquire(root, id)?;
    let dir = state::dir(root, id);
    if dir.exists() {
        bail!("container {id} already exists");
    }
    // Its sockets, its guest's console and the logs are its owner's alone.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let plan = Plan {
        id: id.clone(),
        dir: dir.clone(),
        cgroups_path: sandbox::host_cgroups_path(&spec, id),
        systemd,
        size: Size::of_container(&config.hypervisor, &spec),
        limit_memory: memory_limit(&spec).is_some(),
        network: Network::None,
    };
    create_in(root, config, args, &plan, &bundle, &spec).map_err(|e| {
        if let Err(e) = share::teardown(&sandbox::share_dir(&dir), id) {
            tracing::warn!(id, error = %e, "unmount the share after a failed create");
        }
        let _ = std::fs::remove_dir_all(&dir);
        lock.remove();
        e.context(format!("container {id}: create"))
    })
}

/// Boots the container's sandbox and has its agent create the container;
/// on failure, what it made is gone again.
fn create_in(
    root: &Path,
    config: &Config,
    args: &CreateArgs,
    plan: &Plan,
    bundle: &Path,
    spec: &Spec,
) -> Result<()> {
    let id = &args.id;
    let guest_spec = share::prepare(id, bundle, spec, &sandbox::share_dir(&plan.dir))?;
    // The monitor is born in the sandbox's host cgroup, which boot joins.
    let mut sandbox = Sandbox::boot(config, plan)?;
    let (mut monitor, control) = spawn_monitor(
        root,
        id,
        None,
        terminal(spec),
        args.console_socket.as_deref(),
    )?;
    let kill_monitor = |monitor: &mut std::process::Child| {
        let _ = monitor.kill();
        let _ = monitor.wait();
    };
    if let Err(e) = sandbox.agent().create(id, &guest_spec) {
        kill_monitor(&mut monitor);
        // A guest or VMM that died under the request explains itself in
        // its logs.
        return Err(anyhow::anyhow!("{e}; {}", sandbox.post_mortem()));
    }
    let recorded = std::io::Write::write_all(&mut &control, b"go\n")
        .context("release the monitor")
        .and_then(|()| ProcRef::of(monitor.id() as i32).context("the monitor vanished"))
        .and_then(|monitor| {
            let st = VmState {
                id: id.clone(),
                bundle: bundle.to_owned(),
                status: ContainerStatus::Created,
                created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                owner: nix::unistd::User::from_uid(nix::unistd::geteuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| nix::unistd::geteuid().to_string()),
                annotations: spec.annotations().clone().unwrap_or_default(),
                monitor,
            };
            st.save(root)?;
            run_hooks(&st, HostHook::Prestart)?;
            run_hooks(&st, HostHook::CreateRuntime)?;
            if let Some(path) = &args.pid_file {
                write_pid_file(path, monitor.pid)?;
            }
            Ok(())
        });
    match recorded {
        // Everything stands: the VMM, virtiofsd and the monitor outlive us.
        Ok(()) => {
            sandbox.detach();
            Ok(())
        }
        Err(e) => {
            kill_monitor(&mut monitor);
            Err(e)
        }
    }
}

/// Runs the bundle's hooks of `kind` on the host.
fn run_hooks(st: &VmState, kind: HostHook) -> Result<()> {
    let spec = kata_rs_engine::load_bundle_spec(&st.id, &st.bundle)?;
    kata_rs_engine::hooks::run(
        kind,
        spec.hooks().as_ref(),
        &st.id,
        st.monitor.pid,
        &st.bundle,
        &st.annotations,
    )?;
    Ok(())
}

/// Writes the pid file as runc does: whole, or not at all.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("kata-rs-tmp");
    std::fs::write(&tmp, pid.to_string()).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// `exec` in a VM container: foreground, this process relays and waits;
/// detached, a monitor does and its pid goes to --pid-file.
pub fn exec(vm: Vm, root: &Path, args: &ExecArgs, process: Process) -> Result<i32> {
    let status = vm.status();
    if !status.can_exec() {
        bail!(
            "container {} is {status}: cannot exec in it (it is not running)",
            args.id
        );
    }
    let exec_id = format!("exec-{}", std::process::id());
    let tty = process.terminal().unwrap_or(false);
    console::needed(tty, args.console_socket.as_deref(), !args.detach)?;
    let uds = vm.uds();
    let id = args.id.clone();
    drop(vm);
    let make = |agent: &Agent| -> Result<()> { Ok(agent.exec(&id, &exec_id, &process).map(drop)?) };
    if args.detach {
        let (monitor, control) = spawn_monitor(
            root,
            &id,
            Some(&exec_id),
            tty,
            args.console_socket.as_deref(),
        )?;
        let made = Agent::connect(&uds)
            .map_err(anyhow::Error::from)
            .and_then(|agent| make(&agent));
        if let Err(e) = made {
            drop(control);
            let mut monitor = monitor;
            let _ = monitor.kill();
            let _ = monitor.wait();
            return Err(e);
        }
        std::io::Write::write_all(&mut &control, b"go\n")?;
        if let Some(path) = &args.pid_file {
            write_pid_file(path, monitor.id() as i32)?;
        }
        return Ok(0);
    }
    let target = monitor::Target {
        uds,
        container_id: id.clone(),
        exec_id: exec_id.clone(),
        tty,
        console_socket: args.console_socket.clone(),
    };
    monitor::serve(&target, make)
}

/// The hidden `vm-monitor` command.
pub fn monitor_main(
    root: &Path,
    id: &str,
    exec_id: Option<String>,
    tty: bool,
    console_socket: Option<PathBuf>,
    control_fd: i32,
) -> Result<i32> {
    // SAFETY: the fd was placed by our parent for us alone.
    let control = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(control_fd) };
    let mut report = control.try_clone().context("the control socket")?;
    let target = monitor::Target {
        uds: sandbox::vsock_uds(&state::dir(root, id)),
        container_id: id.to_owned(),
        exec_id: exec_id.unwrap_or_default(),
        tty,
        console_socket,
    };
    monitor::serve(&target, monitor::handshake(control)).inspect_err(|e| {
        // Before "ready" this is what create reports; after it nobody reads
        // the socket, and the error is in our log.
        let _ = writeln!(report, "error: {e:#}");
    })
}

/// `run --isolation=vm`: create, start, and unless detached wait for the
/// monitor's status, then delete.
pub fn run(
    root: &Path,
    config: &Config,
    args: &CreateArgs,
    systemd: bool,
    detach: bool,
    console: Option<OwnConsole>,
) -> Result<i32> {
    create(root, config, args, systemd)?;
    let started = console::attach(console).and_then(|terminal| {
        Vm::load(root, &args.id)?.start()?;
        Ok(terminal)
    });
    let terminal = match started {
        Ok(t) => t,
        Err(e) => {
            let _ = Vm::load(root, &args.id).and_then(|vm| vm.delete(true));
            return Err(e);
        }
    };
    if detach {
        return Ok(0);
    }
    let monitor = VmState::load(root, &args.id)?.monitor;
    let signals = super::foreground::block_signals().context("block signals")?;
    let code = super::foreground::wait(monitor.pid, &signals, console::resizer(&terminal))
        .context("wait for the container")?;
    if let Err(e) = Vm::load(root, &args.id).and_then(|vm| vm.delete(true)) {
        tracing::error!(id = %args.id, error = %e, "delete after run");
    }
    Ok(code)
}
