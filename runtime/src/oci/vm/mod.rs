//! VM mode of the OCI command line: one microVM per container. `create`
//! shares the bundle over virtio-fs (virtiofsd), boots the VMM, starts the
//! monitor (the process that stands for the container on the host) and has
//! the agent create the container; the other commands talk to the agent;
//! `delete` takes all of it down.
//!
//! - [`state`]: what is remembered between commands;
//! - [`share`]: the shared directory and the guest's view of the spec;
//! - [`process`]: host processes known by pid and start time;
//! - [`stdio`]: the stdio streams to the agent;
//! - [`monitor`]: the --pid-file process.

pub mod monitor;
pub mod process;
pub mod share;
pub mod state;
pub mod stdio;

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kata_rs_engine::hooks::HostHook;
use kata_rs_engine::lock::IdLock;
use kata_rs_engine::OciState;
use kata_rs_protocol::agent::{
    ContainerRequest, CreateContainerRequest, ExecProcessRequest, SignalProcessRequest,
    UpdateContainerRequest,
};
use kata_rs_protocol::{AgentClient, SHARED_FS_TAG};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::cli::{CreateArgs, ExecArgs};
use super::console::{self, OwnConsole};
use crate::config::Config;
use crate::error::Kind;
use crate::host_cgroup::HostCgroup;
use crate::sandbox::{SandboxSpec, VmSandbox};
use process::ProcRef;
use state::VmState;

/// Bound for one RPC that does not wait for a process.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest may take to boot to a serving agent.
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const VIRTIOFSD_READY: Duration = Duration::from_secs(10);
const MONITOR_READY: Duration = Duration::from_secs(60);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

pub(crate) fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

/// An agent's failed answer, with its kind where its status code has one.
pub(crate) fn rpc_error(what: &str, id: &str, e: ttrpc::Error) -> anyhow::Error {
    let (text, kind) = match &e {
        ttrpc::Error::RpcStatus(s) => (s.message().to_owned(), Kind::of_code(s.code())),
        other => (other.to_string(), None),
    };
    let message = format!("container {id}: {what}: {text}");
    match kind {
        Some(kind) => kind.err(message),
        None => anyhow::anyhow!(message),
    }
}

pub(crate) fn container_req(id: &str) -> ContainerRequest {
    let mut req = ContainerRequest::new();
    req.container_id = id.to_owned();
    req
}

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
    root: PathBuf,
    lock: IdLock,
}

impl Vm {
    pub fn load(root: &Path, id: &str) -> Result<Self> {
        let lock = IdLock::acquire(root, id)?;
        let state = VmState::load(root, id)?;
        Ok(Vm {
            state,
            root: root.to_owned(),
            lock,
        })
    }

    fn dir(&self) -> PathBuf {
        state::dir(&self.root, &self.state.id)
    }

    fn uds(&self) -> PathBuf {
        crate::sandbox::vsock_uds(&self.dir())
    }

    fn agent(&self) -> Result<AgentClient> {
        if let Some(why) = self.state.vmm.gone() {
            bail!(
                "container {}: its VM is not running (the VMM: {why}; {})",
                self.state.id,
                crate::sandbox::vmm_last_words(&self.dir())
            );
        }
        monitor::agent(&self.uds())
    }

    /// The status the OCI spec means: stopped once the monitor (which lives
    /// exactly as long as the container) or the VM is gone, else the
    /// agent's view.
    pub fn status(&self) -> String {
        if !self.state.monitor.alive() || !self.state.vmm.alive() {
            return "stopped".into();
        }
        let asked = self.agent().and_then(|c| {
            c.agent
                .state_container(ctx(), &container_req(&self.state.id))
                .map_err(|e| rpc_error("state", &self.state.id, e))
        });
        match asked {
            Ok(resp) => resp.status,
            Err(e) => {
                tracing::debug!(error = %e, "the agent did not say; using the recorded status");
                self.state.status.clone()
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
            pid: if status == "stopped" {
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
        if status != "created" {
            bail!(
                "container {} is {status}: cannot start it (only a created container starts)",
                self.state.id
            );
        }
        let client = self.agent()?;
        client
            .agent
            .start_container(ctx(), &container_req(&self.state.id))
            .map_err(|e| rpc_error("start", &self.state.id, e))?;
        self.state.status = "running".into();
        self.state.save(&self.root)?;
        if let Err(e) = run_hooks(&self.state, HostHook::Poststart) {
            tracing::warn!(id = %self.state.id, error = %e, "poststart hook failed");
        }
        Ok(())
    }

    pub fn kill(&self, signal: i32, all: bool) -> Result<()> {
        let status = self.status();
        if status == "stopped" && !all {
            bail!(
                "container {} is stopped: cannot signal it: container not running",
                self.state.id
            );
        }
        if status == "stopped" {
            return Ok(());
        }
        let mut req = SignalProcessRequest::new();
        req.container_id = self.state.id.clone();
        req.signal = signal as u32;
        req.all = all;
        self.agent()?
            .agent
            .signal_process(ctx(), &req)
            .map_err(|e| rpc_error("kill", &self.state.id, e))?;
        Ok(())
    }

    fn simple(&mut self, what: &'static str, status: Option<&str>) -> Result<()> {
        let client = self.agent()?;
        let req = container_req(&self.state.id);
        let result = match what {
            "pause" => client.agent.pause_container(ctx(), &req),
            _ => client.agent.resume_container(ctx(), &req),
        };
        result.map_err(|e| rpc_error(what, &self.state.id, e))?;
        if let Some(s) = status {
            self.state.status = s.into();
            self.state.save(&self.root)?;
        }
        Ok(())
    }

    pub fn pause(&mut self) -> Result<()> {
        self.simple("pause", Some("paused"))
    }

    pub fn resume(&mut self) -> Result<()> {
        self.simple("resume", Some("running"))
    }

    pub fn pids(&self) -> Result<Vec<i32>> {
        let resp = self
            .agent()?
            .agent
            .list_processes(ctx(), &container_req(&self.state.id))
            .map_err(|e| rpc_error("ps", &self.state.id, e))?;
        Ok(resp.pids)
    }

    pub fn update(&self, resources: &Value) -> Result<()> {
        let mut req = UpdateContainerRequest::new();
        req.container_id = self.state.id.clone();
        req.resources_json = serde_json::to_vec(resources)?;
        self.agent()?
            .agent
            .update_container(ctx(), &req)
            .map_err(|e| rpc_error("update", &self.state.id, e))?;
        Ok(())
    }

    pub fn stats(&self) -> Result<Value> {
        let resp = self
            .agent()?
            .agent
            .stats_container(ctx(), &container_req(&self.state.id))
            .map_err(|e| rpc_error("stats", &self.state.id, e))?;
        Ok(serde_json::from_slice(&resp.stats_json)?)
    }

    /// Stops the VM, virtiofsd and the monitor, runs the poststop hooks and
    /// removes the share and the state.
    pub fn delete(self, force: bool) -> Result<()> {
        let status = self.status();
        if !force && !matches!(status.as_str(), "stopped" | "created") {
            bail!(
                "container {} is {status}: cannot delete it without --force",
                self.state.id
            );
        }
        teardown(&self.state, &self.dir());
        if let Some(at) = &self.state.host_cgroup {
            HostCgroup::open(at, &self.state.id)
                .and_then(HostCgroup::remove)
                .with_context(|| format!("container {}", self.state.id))?;
        }
        if let Err(e) = run_hooks(&self.state, HostHook::Poststop) {
            tracing::warn!(id = %self.state.id, error = %e, "poststop hook failed");
        }
        std::fs::remove_dir_all(self.dir())
            .with_context(|| format!("remove {}", self.dir().display()))?;
        self.lock.remove();
        Ok(())
    }
}

/// Ends every host process of a VM container and unmounts its share.
fn teardown(st: &VmState, dir: &Path) {
    if st.vmm.alive() {
        if let Ok(client) = monitor::agent(&crate::sandbox::vsock_uds(dir)) {
            let req = kata_rs_protocol::agent::DestroySandboxRequest::new();
            let _ = client.agent.destroy_sandbox(
                ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64),
                &req,
            );
        }
        st.vmm.stop(SHUTDOWN_GRACE);
    }
    // Without its VM the monitor's wait fails and it exits by itself.
    st.monitor.stop(Duration::from_secs(5));
    st.virtiofsd.signal(Signal::SIGTERM);
    st.virtiofsd.stop(Duration::from_secs(5));
    if let Err(e) = share::teardown(&state::share_dir(dir), &st.id) {
        tracing::warn!(id = %st.id, error = %e, "unmount the share");
    }
}

pub(crate) fn start_virtiofsd(config: &Config, dir: &Path) -> Result<ProcRef> {
    let socket = state::virtiofsd_socket(dir);
    let log = std::fs::File::create(dir.join("virtiofsd.log"))?;
    let program = crate::config::resolve_program(&config.virtiofsd.path).with_context(|| {
        format!(
            "virtiofsd {} was not found (set virtiofsd.path in the configuration)",
            config.virtiofsd.path.display()
        )
    })?;
    let mut cmd = Command::new(&program);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(state::share_dir(dir))
        .args([
            "--cache",
            "never",
            "--announce-submounts",
            "--sandbox",
            "chroot",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut child = spawn_in_own_session(&mut cmd, &program)?;
    let deadline = Instant::now() + VIRTIOFSD_READY;
    while !socket.exists() {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("virtiofsd.log")).unwrap_or_default();
            bail!("virtiofsd exited with {status}: {}", log.trim());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("virtiofsd did not open {} in time", socket.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    crate::host_cgroup::oom_victim_before_caller(child.id());
    ProcRef::of(child.id() as i32).context("virtiofsd vanished")
}

/// Spawns `cmd` (running `program`) as a session of its own: the signals a
/// terminal sends the caller's group are not its to get.
pub(crate) fn spawn_in_own_session(cmd: &mut Command, program: &Path) -> Result<Child> {
    // SAFETY: setsid is async-signal-safe and touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("start {}", program.display()))
}

/// The VM's memory: the configured size plus the container's memory limit,
/// so that a limit larger than the default still fits.
pub(crate) fn sandbox_spec(config: &Config, spec: &Value) -> SandboxSpec {
    let mut sized = SandboxSpec::from_config(&config.hypervisor);
    if let Some(limit) = spec["linux"]["resources"]["memory"]["limit"].as_i64() {
        if limit > 0 {
            sized.memory_mib += (limit as u64).div_ceil(1 << 20);
        }
    }
    sized
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

fn terminal(spec: &Value) -> bool {
    spec["process"]["terminal"].as_bool().unwrap_or(false)
}

/// `create --isolation=vm`; `systemd` chooses the driver of the host
/// cgroup.
pub fn create(root: &Path, config: &Config, args: &CreateArgs, systemd: bool) -> Result<()> {
    let id = &args.id;
    kata_rs_engine::validate_id(id)?;
    let bundle = std::path::absolute(&args.bundle)?;
    kata_rs_engine::load_bundle_spec(id, &bundle)?;
    let spec: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    share::refuse_guest_hooks(&spec).with_context(|| format!("container {id}"))?;
    let lock = IdLock::acquire(root, id)?;
    let dir = state::dir(root, id);
    if dir.exists() {
        bail!("container {id} already exists");
    }
    std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    // Joined first: virtiofsd, the VMM and the monitor are born in it.
    let created = HostCgroup::create_and_join(&host_cgroups_path(&spec, id), id, systemd).and_then(
        |cgroup| {
            let mut made = Made::default();
            let created = create_in(root, config, args, &cgroup, &bundle, &spec, &mut made);
            if created.is_err() {
                made.undo(&dir, id);
                if let Err(e) = cgroup.remove() {
                    tracing::warn!(id, error = %e, "remove the host cgroup after a failed create");
                }
            }
            created
        },
    );
    created.map_err(|e| {
        let _ = std::fs::remove_dir_all(&dir);
        lock.remove();
        e.context(format!("container {id}: create"))
    })
}

/// What a create made so far, to undo on failure.
#[derive(Default)]
struct Made {
    virtiofsd: Option<ProcRef>,
    sandbox: Option<VmSandbox>,
    monitor: Option<std::process::Child>,
}

impl Made {
    fn undo(&mut self, dir: &Path, id: &str) {
        if let Some(mut m) = self.monitor.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
        drop(self.sandbox.take());
        if let Some(v) = self.virtiofsd.take() {
            v.signal(Signal::SIGTERM);
            v.stop(Duration::from_secs(5));
        }
        if let Err(e) = share::teardown(&state::share_dir(dir), id) {
            tracing::warn!(id, error = %e, "unmount the share after a failed create");
        }
    }
}

fn create_in(
    root: &Path,
    config: &Config,
    args: &CreateArgs,
    cgroup: &HostCgroup,
    bundle: &Path,
    spec: &Value,
    made: &mut Made,
) -> Result<()> {
    let id = &args.id;
    let dir = &state::dir(root, id);
    let guest_spec = share::prepare(id, bundle, spec, &state::share_dir(dir))?;
    let mut sized = sandbox_spec(config, spec);
    sized.memory_mib = size_in_cgroup(cgroup, config, spec, sized.memory_mib)?;
    made.virtiofsd = Some(start_virtiofsd(config, dir)?);
    sized
        .fs
        .push((SHARED_FS_TAG.to_owned(), state::virtiofsd_socket(dir)));
    let mut sandbox = VmSandbox::start(&config.hypervisor, &sized, dir)?;
    let vmm = ProcRef::of(sandbox.vmm_pid() as i32).context("the VMM vanished")?;
    let client = sandbox.wait_for_agent(BOOT_TIMEOUT);
    made.sandbox = Some(sandbox);
    let client = client?;

    let (monitor, control) = spawn_monitor(
        root,
        id,
        None,
        terminal(spec),
        args.console_socket.as_deref(),
    )?;
    let monitor_ref = ProcRef::of(monitor.id() as i32).context("the monitor vanished")?;
    made.monitor = Some(monitor);

    let mut req = CreateContainerRequest::new();
    req.container_id = id.clone();
    req.spec_json = serde_json::to_vec(&guest_spec)?;
    if let Err(e) = client.agent.create_container(ctx(), &req) {
        // A guest or VMM that died under the request explains itself in
        // its logs.
        let why = made
            .sandbox
            .as_mut()
            .map(VmSandbox::post_mortem)
            .unwrap_or_default();
        bail!("{:#}; {why}", rpc_error("create in the guest", id, e));
    }
    std::io::Write::write_all(&mut &control, b"go\n").context("release the monitor")?;

    let st = VmState {
        id: id.clone(),
        bundle: bundle.to_owned(),
        status: "created".into(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        owner: nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| nix::unistd::geteuid().to_string()),
        annotations: spec["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect::<HashMap<_, _>>()
            })
            .unwrap_or_default(),
        vmm,
        virtiofsd: made.virtiofsd.expect("started above"),
        monitor: monitor_ref,
        host_cgroup: Some(cgroup.reference().clone()),
    };
    st.save(root)?;
    run_hooks(&st, HostHook::Prestart)?;
    run_hooks(&st, HostHook::CreateRuntime)?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path, monitor_ref.pid)?;
    }
    // Everything stands: the VMM, virtiofsd and the monitor outlive us.
    if let Some(s) = made.sandbox.take() {
        s.detach();
    }
    made.monitor.take();
    made.virtiofsd.take();
    Ok(())
}

/// The host cgroup of a VM container: its cgroupsPath, as runc would make
/// it for the container, else one of kata-rs's own.
pub(crate) fn host_cgroups_path(spec: &Value, id: &str) -> String {
    spec["linux"]["cgroupsPath"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map_or_else(|| format!("/kata-rs/{id}"), str::to_owned)
}

/// The guest RAM of a VM container whose VM wants `wanted_mib`. A memory
/// limit on the container bounds its host cgroup at the VM's RAM plus
/// `hypervisor.host_overhead_mib`, so that the VM as a whole is what the
/// limit holds (podman's `--memory`); a smaller limit above cuts the guest.
fn size_in_cgroup(
    cgroup: &HostCgroup,
    config: &Config,
    spec: &Value,
    wanted_mib: u64,
) -> Result<u64> {
    let overhead = config.hypervisor.host_overhead_mib;
    if spec["linux"]["resources"]["memory"]["limit"]
        .as_i64()
        .is_some_and(|l| l > 0)
    {
        cgroup.limit_memory(wanted_mib + overhead)?;
    }
    let bound = cgroup
        .reference()
        .memory
        .as_ref()
        .and_then(|m| m.bound_mib());
    crate::host_cgroup::fit_guest(wanted_mib, bound, overhead)
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
pub fn exec(root: &Path, args: &ExecArgs, process: Value) -> Result<i32> {
    let vm = Vm::load(root, &args.id)?;
    let status = vm.status();
    if status != "running" {
        bail!(
            "container {} is {status}: cannot exec in it (it is not running)",
            args.id
        );
    }
    let exec_id = format!("exec-{}", std::process::id());
    let tty = process["terminal"].as_bool().unwrap_or(false);
    console::needed(tty, args.console_socket.as_deref(), !args.detach)?;
    let uds = vm.uds();
    let id = args.id.clone();
    drop(vm);
    let make = |client: &AgentClient| -> Result<()> {
        let mut req = ExecProcessRequest::new();
        req.container_id = id.clone();
        req.exec_id = exec_id.clone();
        req.process_json = serde_json::to_vec(&process)?;
        client
            .agent
            .exec_process(ctx(), &req)
            .map_err(|e| rpc_error("exec", &id, e))?;
        Ok(())
    };
    if args.detach {
        let (monitor, control) = spawn_monitor(
            root,
            &id,
            Some(&exec_id),
            tty,
            args.console_socket.as_deref(),
        )?;
        let made = monitor::agent(&uds).and_then(|c| make(&c));
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
        uds: crate::sandbox::vsock_uds(&state::dir(root, id)),
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
