//! A pod in namespace isolation: the guest's agent, run on the host with
//! `--no-init` on Unix sockets in the pod directory. Every task request
//! then takes the same path as in a VM (the same RPCs and stdio streams),
//! and the containers are the host's namespace containers, as runc would
//! run them.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kata_rs_protocol::AgentClient;
use nix::sys::signal::Signal;

use crate::config::Config;
use crate::sandbox::agent::Agent;
use crate::sandbox::process::{spawn_in_own_session, ProcRef};

/// How long the agent may take to listen: it only parses its arguments.
const READY: Duration = Duration::from_secs(10);

/// How long the agent, and then the clean-up after it, may take to end.
const END: Duration = Duration::from_secs(10);

/// Set once the agent has exited and whatever containers it left are gone.
#[derive(Default)]
pub struct Ended {
    done: Mutex<bool>,
    cond: Condvar,
}

impl Ended {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_all();
    }

    /// Waits up to `bound` for the agent's end; whether it came.
    pub fn wait(&self, bound: Duration) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .cond
            .wait_timeout_while(done, bound, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }
}

pub struct HostAgent {
    pub process: ProcRef,
    pub agent: Agent,
    /// Where it takes stdio streams.
    pub stdio: PathBuf,
    /// Set by the thread that reaps the agent, once its containers are
    /// gone too: a process's exit is not reported before that when the
    /// agent died under it.
    pub ended: Arc<Ended>,
}

impl HostAgent {
    /// Starts the agent for the pod in `dir`, its log in `agent.log` there.
    pub fn start(config: &Config, dir: &Path) -> Result<Self> {
        let program =
            crate::config::resolve_program(&config.runtime.host_agent).with_context(|| {
                format!(
                    "the agent {} was not found (set runtime.host_agent in the configuration)",
                    config.runtime.host_agent.display()
                )
            })?;
        // Short names: a pod directory named after a long id leaves little
        // of a socket address's 108 bytes.
        let socket = dir.join("agent.sock");
        let stdio = dir.join("stdio.sock");
        let log_path = dir.join("agent.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let mut cmd = Command::new(&program);
        cmd.args(["--no-init", "--log-level", &config.runtime.log_level])
            .arg(format!("--listen=unix://{}", socket.display()))
            .arg(format!("--stdio-listen=unix://{}", stdio.display()))
            .arg("--state-dir")
            .arg(dir.join("agent"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if config.runtime.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        // A signal to the shim's group (a terminal's Ctrl-C under `ctr run`)
        // is not the containers' to get.
        let mut child = spawn_in_own_session(&mut cmd, &program)?;
        match connect(&mut child, &socket, &log_path) {
            Ok((process, client)) => {
                tracing::info!(pid = process.pid, "agent started on the host");
                Ok(Self {
                    process,
                    agent: Agent::new(client),
                    stdio,
                    ended: watch(child, dir.to_owned()),
                })
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Ends the agent: asked first (it exits once it answered), then
    /// killed if it does not; returns once its containers are gone too.
    pub fn stop(&self) {
        if let Err(e) = self.agent.destroy_sandbox() {
            tracing::warn!(error = %e, "ask the host agent to stop");
            self.process.signal(Signal::SIGTERM);
        }
        if !self.ended.wait(END) {
            tracing::warn!(
                pid = self.process.pid,
                "the host agent did not stop; killing it"
            );
            self.process.signal(Signal::SIGKILL);
            if !self.ended.wait(END) {
                tracing::warn!(pid = self.process.pid, "the host agent's end was not seen");
            }
        }
    }
}

/// Connects to the agent once it listens: its process and a client.
fn connect(child: &mut Child, socket: &Path, log: &Path) -> Result<(ProcRef, AgentClient)> {
    let deadline = Instant::now() + READY;
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) => {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(log).unwrap_or_default();
                    bail!("the agent exited with {status}: {}", log.trim());
                }
                if Instant::now() > deadline {
                    bail!("the agent did not listen on {}: {e}", socket.display());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    let process = ProcRef::of(child.id() as i32).context("the agent vanished")?;
    let client = AgentClient::from_stream(stream).map_err(|e| anyhow!("{e}"))?;
    client
        .check_protocol(READY)
        .with_context(|| format!("the host agent on {}", socket.display()))?;
    Ok((process, client))
}

/// Reaps the agent of the pod in `dir` when it ends, however it ends, and
/// removes what containers it left.
fn watch(mut child: Child, dir: PathBuf) -> Arc<Ended> {
    let ended = Arc::new(Ended::default());
    let set = Arc::clone(&ended);
    std::thread::spawn(move || {
        match child.wait() {
            Ok(status) => tracing::info!(%status, "the host agent exited"),
            Err(e) => tracing::warn!(error = %e, "wait for the host agent"),
        }
        remove_leftovers(&dir);
        set.set();
    });
    ended
}

/// Force-deletes whatever containers the agent of the pod in `dir` left
/// (it was killed, or its shim was), with their processes and cgroups:
/// unlike a VM's, they do not end with the agent. Whether none is left.
pub fn remove_leftovers(dir: &Path) -> bool {
    let root = dir.join("agent").join("containers");
    if !root.exists() {
        return true;
    }
    let engine = match kata_rs_engine::Engine::new(&root, false) {
        Ok(engine) => engine,
        Err(e) => {
            tracing::warn!(root = %root.display(), error = %e, "open the host agent's containers");
            return false;
        }
    };
    let mut clean = true;
    for id in engine.ids().unwrap_or_default() {
        tracing::warn!(id, "removing a container the host agent left");
        if let Err(e) = engine.load(&id).and_then(|c| c.delete(true)) {
            tracing::warn!(id, error = %e, "remove a container the host agent left");
            clean = false;
        }
    }
    clean
}
