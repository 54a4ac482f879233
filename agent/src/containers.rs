//! The containers of the sandbox: the engine's operations with what the
//! agent adds around them: the virtio-fs share, bundles in the guest, stdio
//! relays, and exit statuses kept for WaitProcess.
//!
//! Locking: `table` maps ids to entries; each entry's `ops` lock runs one
//! engine operation on that container at a time (the engine's own lock is a
//! POSIX record lock, which threads of one process all hold at once). Wait
//! does not take `ops`: it blocks on the process's own condition variable.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use kata_rs_engine::{
    engine::validate_id, ContainerStatus, CreateOptions, Engine, EngineError, ExecOptions,
    LinuxResources, OomKills, Process, Spec,
};
use kata_rs_protocol::{GUEST_SHARE_DIR, SHARED_FS_TAG};
use nix::errno::Errno;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::reaper::Reaper;
use crate::relay;
use crate::stdio::{StreamRegistry, Streams};

/// What went wrong, classified as the RPC status it becomes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        let text = kata_rs_engine::error::chain(&e);
        match e {
            EngineError::NotFound { .. } => Error::NotFound(text),
            EngineError::Exists { .. } => Error::AlreadyExists(text),
            EngineError::InvalidId { .. } => Error::InvalidArgument(text),
            EngineError::WrongStatus { .. } => Error::FailedPrecondition(text),
            EngineError::Engine { .. } | EngineError::Io { .. } => Error::Internal(text),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where the agent keeps containers and how it makes them.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `containers/` (the engine's root), `bundles/<id>/config.json`
    /// and `console/` (console sockets): /run/kata-rs in the guest.
    pub state_dir: PathBuf,
    /// Mount the virtio-fs share on the first CreateContainer (as init).
    pub mount_share: bool,
    /// Enter the rootfs with MS_MOVE and chroot instead of pivot_root: as
    /// init the agent's root is the initramfs, which pivot_root refuses to
    /// move.
    pub no_pivot: bool,
    /// Run the spec's hooks, as runc does: only on a host, where their
    /// paths are the host's. A guest's agent drops them; the host runs a VM
    /// container's hooks itself.
    pub run_hooks: bool,
    /// The systemd cgroup driver, on a host (the shim checked that systemd
    /// runs); cgroupfs otherwise.
    pub systemd_cgroup: bool,
}

pub struct Containers {
    config: Config,
    engine: Engine,
    reaper: Arc<Reaper>,
    streams: Arc<StreamRegistry>,
    share_mounted: Mutex<bool>,
    table: Mutex<HashMap<String, Arc<Entry>>>,
}

struct Entry {
    ops: Mutex<()>,
    /// By exec id ("" is the init). Exec processes leave once waited for.
    procs: Mutex<HashMap<String, Arc<Proc>>>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    /// The OOM killer killed in the container's memory cgroup while the
    /// process ran (runc's shim reports such a kill as the container's).
    pub oom_killed: bool,
}

/// One process the agent started, and what it needs after the start.
struct Proc {
    pid: i32,
    /// How it ended, once it exited and its output is drained.
    status: Mutex<Option<Exit>>,
    exited: Condvar,
    /// Dropped by CloseStdin: the stdin relay's stop pipe.
    close_stdin: Mutex<Option<OwnedFd>>,
    /// The pty master, for TtyWinResize.
    tty: Option<OwnedFd>,
}

impl Proc {
    fn wait(&self) -> Exit {
        let mut status = lock(&self.status);
        loop {
            if let Some(exit) = *status {
                return exit;
            }
            status = self.exited.wait(status).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value stays consistent across a panicking holder.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

impl Containers {
    pub fn new(config: Config, reaper: Arc<Reaper>, streams: Arc<StreamRegistry>) -> Result<Self> {
        let engine = Engine::new(config.state_dir.join("containers"), config.systemd_cgroup)?;
        Ok(Containers {
            config,
            engine,
            reaper,
            streams,
            share_mounted: Mutex::new(false),
            table: Mutex::new(HashMap::new()),
        })
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>> {
        validate_id(id)?;
        lock(&self.table)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id} does not exist")))
    }

    fn proc(&self, id: &str, exec_id: &str) -> Result<Arc<Proc>> {
        let entry = self.entry(id)?;
        let procs = lock(&entry.procs);
        procs.get(exec_id).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "container {id} has no process with exec id {exec_id:?}"
            ))
        })
    }

    /// Mounts the sandbox's virtio-fs share once.
    fn ensure_share(&self) -> Result<()> {
        let mut mounted = lock(&self.share_mounted);
        if *mounted || !self.config.mount_share {
            return Ok(());
        }
        std::fs::create_dir_all(GUEST_SHARE_DIR)
            .map_err(|e| internal(&format!("creating {GUEST_SHARE_DIR}"), e))?;
        match nix::mount::mount(
            Some(SHARED_FS_TAG),
            GUEST_SHARE_DIR,
            Some("virtiofs"),
            nix::mount::MsFlags::MS_NODEV,
            None::<&str>,
        ) {
            Ok(()) | Err(Errno::EBUSY) => {
                tracing::info!(
                    tag = SHARED_FS_TAG,
                    target = GUEST_SHARE_DIR,
                    "mounted the share"
                );
                *mounted = true;
                Ok(())
            }
            Err(e) => Err(Error::FailedPrecondition(format!(
                "mounting the virtio-fs share (tag {SHARED_FS_TAG}) on {GUEST_SHARE_DIR}: {e} \
                 (the VM needs a virtio-fs device with tag {SHARED_FS_TAG})"
            ))),
        }
    }

    pub fn create(&self, id: &str, spec_json: &[u8]) -> Result<()> {
        validate_id(id)?;
        let mut spec: Spec = serde_json::from_slice(spec_json)
            .map_err(|e| Error::InvalidArgument(format!("container {id}: bad spec JSON: {e}")))?;
        if !self.config.run_hooks {
            spec.set_hooks(None);
        }
        let root = spec.root().as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!("container {id}: the spec has no root"))
        })?;
        if !root.path().is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "container {id}: root.path {} must be an absolute guest path",
                root.path().display()
            )));
        }
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);

        let entry = Arc::new(Entry {
            ops: Mutex::new(()),
            procs: Mutex::new(HashMap::new()),
        });
        let _ops = lock(&entry.ops);
        {
            let mut table = lock(&self.table);
            if table.contains_key(id) {
                return Err(Error::AlreadyExists(format!(
                    "container {id} already exists"
                )));
            }
            table.insert(id.to_owned(), Arc::clone(&entry));
        }
        let result = self.create_locked(id, &spec, terminal, &entry);
        if result.is_err() {
            lock(&self.table).remove(id);
            let _ = std::fs::remove_dir_all(self.bundle_dir(id));
        }
        result
    }

    fn bundle_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("bundles").join(id)
    }

    fn create_locked(&self, id: &str, spec: &Spec, terminal: bool, entry: &Entry) -> Result<()> {
        self.ensure_share()?;
        let bundle = self.bundle_dir(id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&bundle)
            .map_err(|e| internal(&format!("creating {}", bundle.display()), e))?;
        let json = serde_json::to_vec(spec).map_err(|e| internal("encoding the spec", e))?;
        std::fs::write(bundle.join("config.json"), json)
            .map_err(|e| internal("writing the bundle's config.json", e))?;

        let streams = self.streams.claim(id, "");
        let io = ProcIo::new(&self.config.state_dir, id, "", terminal, streams)?;
        let engine = &self.engine;
        let no_pivot = self.config.no_pivot;
        let (started, exit) = io.start(&self.reaper, |stdio, console_socket| {
            let container = engine.create(
                id,
                CreateOptions {
                    bundle: bundle.clone(),
                    console_socket,
                    no_pivot,
                    stdio,
                    ..Default::default()
                },
            )?;
            container.pid().ok_or_else(|| {
                Error::Internal(format!("container {id}: created without an init pid"))
            })
        })?;
        tracing::info!(
            container_id = id,
            pid = started.pid,
            terminal,
            "container created"
        );
        // Read before start: the init has not run yet.
        let oom_kills = self.engine.load(id).ok().and_then(|c| oom_counter(&c));
        lock(&entry.procs).insert(String::new(), started.watch(id, "", exit, oom_kills));
        Ok(())
    }

    pub fn start(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _ops = lock(&entry.ops);
        // The poststart hooks are the engine's children, waited for by it.
        self.reaper.hold(|| self.engine.load(id)?.start())?;
        tracing::info!(container_id = id, "container started");
        Ok(())
    }

    /// Starts exec `exec_id` in container `id`; its pid.
    pub fn exec(&self, id: &str, exec_id: &str, process_json: &[u8]) -> Result<i32> {
        let entry = self.entry(id)?;
        if exec_id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "container {id}: an exec needs a non-empty exec id"
            )));
        }
        validate_id(exec_id).map_err(|e| Error::InvalidArgument(format!("exec id: {e}")))?;
        let process: Process = serde_json::from_slice(process_json).map_err(|e| {
            Error::InvalidArgument(format!("container {id}: bad process JSON: {e}"))
        })?;
        let _ops = lock(&entry.ops);
        if lock(&entry.procs).contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!(
                "container {id} already has a process with exec id {exec_id}"
            )));
        }
        let container = self.engine.load(id)?;
        // Read before the process exists, or a kill right after its exec
        // would count as one before it.
        let oom_kills = oom_counter(&container);
        let terminal = process.terminal().unwrap_or(false);
        let streams = self.streams.claim(id, exec_id);
        let io = ProcIo::new(&self.config.state_dir, id, exec_id, terminal, streams)?;
        let (started, exit) = io.start(&self.reaper, |stdio, console_socket| {
            let opts = ExecOptions {
                process,
                console_socket,
                detached: true,
                ..Default::default()
            };
            let pid = match stdio {
                Some(stdio) => container.exec_with_stdio(opts, stdio)?,
                None => container.exec(opts)?,
            };
            Ok(pid)
        })?;
        tracing::info!(
            container_id = id,
            exec_id,
            pid = started.pid,
            "process started"
        );
        let pid = started.pid;
        lock(&entry.procs).insert(
            exec_id.to_owned(),
            started.watch(id, exec_id, exit, oom_kills),
        );
        Ok(pid)
    }

    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let entry = self.entry(id)?;
        let number = i32::try_from(signal)
            .map_err(|_| Error::InvalidArgument(format!("signal {signal} is out of range")))?;
        let sig = nix::sys::signal::Signal::try_from(number)
            .map_err(|e| Error::InvalidArgument(format!("signal {signal}: {e}")))?;
        // A process that finished is not found, as runc's shim has it:
        // containerd takes that for "already gone".
        if exec_id.is_empty() {
            let _ops = lock(&entry.ops);
            let mut container = self.engine.load(id)?;
            if !all && container.status().is_stopped() {
                // containerd's runc shim reads "container not running" as
                // "already gone" too.
                return Err(Error::NotFound(format!(
                    "container {id}: process already finished: container not running"
                )));
            }
            return Ok(container.kill(sig, all)?);
        }
        let proc = self.proc(id, exec_id)?;
        // The status lock keeps the reaper's delivery (and so pid reuse) out
        // while the signal is sent.
        let status = lock(&proc.status);
        if status.is_some() {
            return Err(Error::NotFound(format!(
                "container {id}: process {exec_id} already finished"
            )));
        }
        match nix::sys::signal::kill(Pid::from_raw(proc.pid), sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(internal(&format!("signalling process {exec_id}"), e)),
        }
    }

    /// Blocks until the process exited and its output reached the host.
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<Exit> {
        let proc = self.proc(id, exec_id)?;
        let exit = proc.wait();
        if !exec_id.is_empty() {
            if let Ok(entry) = self.entry(id) {
                let mut procs = lock(&entry.procs);
                if procs.get(exec_id).is_some_and(|p| Arc::ptr_eq(p, &proc)) {
                    procs.remove(exec_id);
                }
            }
        }
        tracing::info!(
            container_id = id,
            exec_id,
            code = exit.code,
            oom_killed = exit.oom_killed,
            "process waited for"
        );
        Ok(exit)
    }

    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<()> {
        let proc = self.proc(id, exec_id)?;
        let master = proc.tty.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "container {id}: process {exec_id:?} has no terminal"
            ))
        })?;
        let size = libc::winsize {
            ws_row: u16::try_from(rows).unwrap_or(u16::MAX),
            ws_col: u16::try_from(columns).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a valid winsize that outlives the call.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(internal(
                "resizing the terminal",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let proc = self.proc(id, exec_id)?;
        lock(&proc.close_stdin).take();
        Ok(())
    }

    pub fn state(&self, id: &str) -> Result<(ContainerStatus, i32)> {
        let entry = self.entry(id)?;
        let _ops = lock(&entry.ops);
        let state = self.engine.load(id)?.state()?;
        Ok((state.status, state.pid))
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _ops = lock(&entry.ops);
        Ok(self.engine.load(id)?.pause()?)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _ops = lock(&entry.ops);
        Ok(self.engine.load(id)?.resume()?)
    }

    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let entry = self.entry(id)?;
        let resources: LinuxResources = serde_json::from_slice(resources_json).map_err(|e| {
            Error::InvalidArgument(format!("container {id}: bad resources JSON: {e}"))
        })?;
        let _ops = lock(&entry.ops);
        Ok(self.engine.load(id)?.update(&resources)?)
    }

    pub fn stats(&self, id: &str) -> Result<Vec<u8>> {
        let entry = self.entry(id)?;
        let _ops = lock(&entry.ops);
        let stats = self.engine.load(id)?.stats()?;
        serde_json::to_vec(&stats).map_err(|e| internal("encoding statistics", e))
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let entry = self.entry(id)?;
        let _ops = lock(&entry.ops);
        Ok(self.engine.load(id)?.pids()?)
    }

    /// Deletes the container with the engine and forgets it. Waiters of its
    /// processes still get their statuses as the processes die.
    pub fn remove(&self, id: &str, force: bool) -> Result<()> {
        let entry = self.entry(id)?;
        let _ops = lock(&entry.ops);
        // As are the poststop hooks.
        self.reaper.hold(|| self.engine.load(id)?.delete(force))?;
        lock(&self.table).remove(id);
        self.streams.discard(id);
        let _ = std::fs::remove_dir_all(self.bundle_dir(id));
        tracing::info!(container_id = id, "container removed");
        Ok(())
    }
}

/// A process's stdio before it starts: the agent's ends of its pipes (or
/// the console socket its pty master will come through) and the host's
/// connections.
struct ProcIo {
    streams: Streams,
    terminal: Option<Console>,
}

/// A console socket: libcontainer connects to it and sends the pty master.
struct Console {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the engine's create or exec hands back once the process runs.
struct Started {
    pid: i32,
    relays: Vec<JoinHandle<()>>,
    exited_tx: OwnedFd,
    close_stdin: Option<OwnedFd>,
    tty: Option<OwnedFd>,
}

impl ProcIo {
    fn new(
        state_dir: &Path,
        id: &str,
        exec_id: &str,
        terminal: bool,
        streams: Streams,
    ) -> Result<Self> {
        let console = if terminal {
            let dir = state_dir.join("console");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| internal("creating the console socket directory", e))?;
            // Numbered, not named after the ids: two 64-character ids (as
            // CRI gives an exec) would not fit in a socket address.
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{n}.sock"));
            tracing::debug!(container = id, exec = exec_id, socket = %path.display(), "console socket");
            let _ = std::fs::remove_file(&path);
            let listener =
                UnixListener::bind(&path).map_err(|e| internal("binding the console socket", e))?;
            Some(Console { listener, path })
        } else {
            None
        };
        Ok(ProcIo {
            streams,
            terminal: console,
        })
    }

    /// Runs `spawn` (the engine call) with the process's stdio under the
    /// reaper's lock, then starts the relays. Returns the started process
    /// and the receiver of its exit status.
    fn start(
        mut self,
        reaper: &Reaper,
        spawn: impl FnOnce(Option<[OwnedFd; 3]>, Option<PathBuf>) -> Result<i32>,
    ) -> Result<(Started, Receiver<WaitStatus>)> {
        let (exited_rx, exited_tx) = pipe()?;
        let mut relays = Vec::new();
        let mut close_stdin = None;
        if let Some(console) = self.terminal.take() {
            let path = console.path.clone();
            let (pid, rx) =
                reaper.watch(|| spawn(None, Some(path)).map(|p| (Pid::from_raw(p), p)))?;
            let master = kata_rs_engine::console::receive_queued_master(&console.listener)
                .map_err(|e| internal("receiving the pty master", e))?;
            if let Some(conn) = self.streams.tty.take() {
                let (stop_rx, stop_tx) = pipe()?;
                close_stdin = Some(stop_tx);
                let (m, c, e) = (dup(&master)?, dup(&conn)?, dup(&exited_rx)?);
                relays.push(spawn_relay("tty-out", move || relay::output(m, c, e))?);
                let (m, e) = (dup(&master)?, dup(&exited_rx)?);
                // The input side ends with the process: no output depends
                // on it, so the exit does not wait for it.
                spawn_relay("tty-in", move || relay::input(conn, m, vec![e, stop_rx]))?;
            }
            let started = Started {
                pid,
                relays,
                exited_tx,
                close_stdin,
                tty: Some(master),
            };
            return Ok((started, rx));
        }

        let (stdin, stdin_relay) = match self.streams.stdin.take() {
            Some(conn) => {
                let (r, w) = pipe()?;
                let (stop_rx, stop_tx) = pipe()?;
                close_stdin = Some(stop_tx);
                (r, Some((conn, w, stop_rx)))
            }
            None => (dev_null()?, None),
        };
        let mut outputs = Vec::new();
        let mut child_ends = Vec::new();
        for conn in [self.streams.stdout.take(), self.streams.stderr.take()] {
            match conn {
                Some(conn) => {
                    let (r, w) = pipe()?;
                    outputs.push((r, conn));
                    child_ends.push(w);
                }
                None => child_ends.push(dev_null()?),
            }
        }
        let [stdout, stderr]: [OwnedFd; 2] = child_ends
            .try_into()
            .map_err(|_| Error::Internal("stdout and stderr".into()))?;
        // The child ends move into the engine call and are closed in the
        // agent when it returns, so an output relay sees EOF once the
        // process (and whatever inherited them) is done with them.
        let (pid, rx) = reaper
            .watch(|| spawn(Some([stdin, stdout, stderr]), None).map(|p| (Pid::from_raw(p), p)))?;
        for (r, conn) in outputs {
            let e = dup(&exited_rx)?;
            relays.push(spawn_relay("stdio-out", move || relay::output(r, conn, e))?);
        }
        if let Some((conn, w, stop_rx)) = stdin_relay {
            let e = dup(&exited_rx)?;
            spawn_relay("stdio-in", move || relay::input(conn, w, vec![e, stop_rx]))?;
        }
        let started = Started {
            pid,
            relays,
            exited_tx,
            close_stdin,
            tty: None,
        };
        Ok((started, rx))
    }
}

impl Started {
    /// Starts the thread that takes the exit status from the reaper, lets
    /// the output relays drain and close their connections, and only then
    /// publishes the status: a host that prints the output before it exits
    /// with the status must have all of it by the time WaitProcess returns.
    fn watch(
        self,
        id: &str,
        exec_id: &str,
        rx: Receiver<WaitStatus>,
        oom_kills: Option<(OomKills, u64)>,
    ) -> Arc<Proc> {
        let proc = Arc::new(Proc {
            pid: self.pid,
            status: Mutex::new(None),
            exited: Condvar::new(),
            close_stdin: Mutex::new(self.close_stdin),
            tty: self.tty,
        });
        let watched = Arc::clone(&proc);
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        let (relays, exited_tx) = (self.relays, self.exited_tx);
        let monitor = move || {
            // A closed channel means the reaper is gone, which as PID 1
            // cannot happen; report it as a failure, not a hang.
            let code = match rx.recv() {
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
                Ok(other) => {
                    tracing::warn!(container_id = id, exec_id, ?other, "unexpected wait status");
                    255
                }
                Err(_) => 255,
            };
            let oom_killed = oom_kills
                .as_ref()
                .is_some_and(|(kills, before)| kills.count() > *before);
            drop(exited_tx);
            for relay in relays {
                let _ = relay.join();
            }
            tracing::info!(
                container_id = id,
                exec_id,
                code,
                oom_killed,
                "process exited"
            );
            *lock(&watched.status) = Some(Exit { code, oom_killed });
            watched.exited.notify_all();
        };
        if let Err(e) = std::thread::Builder::new()
            .name("process-exit".into())
            .spawn(monitor)
        {
            // Without the monitor no status can ever arrive: say so now
            // rather than let a waiter hang.
            tracing::error!(pid = proc.pid, error = %e, "starting the exit monitor");
            *lock(&proc.status) = Some(Exit {
                code: 255,
                oom_killed: false,
            });
        }
        proc
    }
}

/// The container's OOM kill counter and its count now; without one (a
/// cgroup the engine cannot read) its processes run on, with no OOM kill
/// to report.
fn oom_counter(container: &kata_rs_engine::Container) -> Option<(OomKills, u64)> {
    match container.oom_kills() {
        Ok(Some(kills)) => {
            let before = kills.count();
            Some((kills, before))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(container_id = container.id(), error = %e, "no OOM kill counter");
            None
        }
    }
}

fn spawn_relay(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|e| internal("starting a stdio relay", e))
}

/// A pipe as (read end, write end), both close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| internal("creating a pipe", e))
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone()
        .map_err(|e| internal("duplicating a descriptor", e))
}

fn dev_null() -> Result<OwnedFd> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| internal("opening /dev/null", e))
}
