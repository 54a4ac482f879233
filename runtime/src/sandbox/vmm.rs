//! The VMM of a sandbox: one `kata-rs-vmm` process in its own session, its
//! hybrid vsock socket, console and log in the sandbox directory, and the
//! agent reached through that socket once the guest has booted.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kata_rs_protocol::{AgentClient, AGENT_VSOCK_PORT};

use super::agent::Agent;
use super::size::Size;
use super::vsock_uds;
use crate::config::{resolve_program, Hypervisor};

/// How often the agent is asked for while it boots.
const AGENT_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Bound for one hybrid vsock handshake attempt.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("the VMM {0} was not found (set hypervisor.vmm in the configuration)")]
    VmmNotFound(PathBuf),
    #[error("cannot prepare the sandbox directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the VMM {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM {status} before the agent answered ({vmm_says}); {console}")]
    VmmExited {
        status: VmmExit,
        vmm_says: String,
        console: String,
    },
    #[error("the agent did not answer within {0:?}; {1}")]
    AgentTimeout(Duration, String),
    #[error("the guest's agent cannot serve this runtime")]
    Agent(#[source] kata_rs_protocol::ClientError),
    #[error("agent request {what} failed")]
    Rpc {
        what: &'static str,
        #[source]
        source: ttrpc::Error,
    },
    #[error("waiting for the VMM failed")]
    Wait(#[source] std::io::Error),
}

/// How the VMM ended, in words: a kill by SIGSYS is its seccomp filter
/// refusing a system call, which the VMM itself cannot report.
#[derive(Debug)]
pub struct VmmExit(pub ExitStatus);

impl std::fmt::Display for VmmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.signal() == Some(libc::SIGSYS) {
            return f.write_str(
                "was killed by SIGSYS: one of its threads made a system call outside its \
                 seccomp filter (the kernel's audit log names it)",
            );
        }
        write!(f, "exited with {}", self.0)
    }
}

/// The VMM's stderr log of the sandbox in `dir`.
fn vmm_log(dir: &Path) -> PathBuf {
    dir.join("vmm.log")
}

/// The last line the VMM of the sandbox in `dir` logged: why it gave up,
/// when it did.
pub fn vmm_last_words(dir: &Path) -> String {
    match last_lines(&vmm_log(dir), 1).as_slice() {
        [line] => format!("it said: {line}"),
        _ => "it printed nothing".to_owned(),
    }
}

/// The VM's devices and size.
#[derive(Debug, Clone)]
pub struct VmmSpec {
    pub size: Size,
    /// virtio-fs shares: tag and virtiofsd's vhost-user socket.
    pub fs: Vec<(String, PathBuf)>,
    /// virtio-net NICs.
    pub nics: Vec<Nic>,
}

/// A virtio-net NIC of the VM: the tap the VMM inherits, the NIC's MAC and
/// the MTU the device tells the guest.
#[derive(Debug, Clone)]
pub struct Nic {
    pub tap: Arc<OwnedFd>,
    pub mac: String,
    pub mtu: u32,
}

pub struct Vmm {
    vmm: Child,
    dir: PathBuf,
    uds: PathBuf,
    console: PathBuf,
    /// Handed over to a later command: dropping this handle leaves the VMM.
    detached: bool,
}

impl Vmm {
    /// Starts the VMM for a sandbox living in `dir` (created if needed).
    pub fn start(hv: &Hypervisor, spec: &VmmSpec, dir: &Path) -> Result<Self, VmmError> {
        let vmm = resolve_program(&hv.vmm).ok_or_else(|| VmmError::VmmNotFound(hv.vmm.clone()))?;
        std::fs::create_dir_all(dir).map_err(|source| VmmError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let uds = vsock_uds(dir);
        let console = dir.join("console.log");
        let vmm_log = File::create(vmm_log(dir)).map_err(|source| VmmError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let mut cmd = Command::new(&vmm);
        cmd.arg("--kernel")
            .arg(&hv.kernel)
            .arg("--initrd")
            .arg(&hv.initrd)
            .arg("--vcpus")
            .arg(spec.size.vcpus.to_string())
            .arg("--memory-mib")
            .arg(spec.size.memory_mib.to_string())
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--console")
            .arg(&console)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(vmm_log);
        cmd.arg("--seccomp").arg(hv.seccomp.to_string());
        if !hv.kernel_params.is_empty() {
            cmd.arg("--cmdline-append").arg(&hv.kernel_params);
        }
        for (tag, socket) in &spec.fs {
            cmd.arg("--fs").arg(format!("{tag}={}", socket.display()));
        }
        // The taps keep their numbers in the VMM.
        let taps: Vec<i32> = spec.nics.iter().map(|nic| nic.tap.as_raw_fd()).collect();
        for (nic, fd) in spec.nics.iter().zip(&taps) {
            debug_assert_eq!(nic.tap.as_raw_fd(), *fd);
            let Nic { mac, mtu, .. } = nic;
            cmd.arg("--net").arg(format!("fd={fd},mac={mac},mtu={mtu}"));
        }
        // Its own session: the VMM must outlive a CLI that is interrupted,
        // and not receive the terminal's signals.
        // SAFETY: setsid and fcntl are async-signal-safe and touch no Rust
        // state; `taps` is only read.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                for fd in &taps {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|source| VmmError::Spawn { path: vmm, source })?;
        tracing::info!(pid = child.id(), dir = %dir.display(), "VMM started");
        crate::host_cgroup::oom_victim_before_caller(child.id());
        Ok(Self {
            vmm: child,
            dir: dir.to_owned(),
            uds,
            console,
            detached: false,
        })
    }

    /// Leaves the VMM running when this handle goes: the OCI command line
    /// creates a VM in one command and stops it in another.
    pub fn detach(&mut self) {
        self.detached = true;
    }

    pub fn vmm_pid(&self) -> u32 {
        self.vmm.id()
    }

    /// Waits until the agent answers a health check, polling through the
    /// hybrid socket while the guest boots.
    pub fn wait_for_agent(&mut self, timeout: Duration) -> Result<AgentClient, VmmError> {
        let deadline = Instant::now() + timeout;
        let mut last_error = String::from("no attempt made");
        while Instant::now() < deadline {
            if let Some(status) = self.vmm.try_wait().map_err(VmmError::Wait)? {
                return Err(VmmError::VmmExited {
                    status: VmmExit(status),
                    vmm_says: vmm_last_words(&self.dir),
                    console: self.console_tail(),
                });
            }
            match AgentClient::connect_hybrid(&self.uds, AGENT_VSOCK_PORT, HANDSHAKE_TIMEOUT) {
                Ok(client) => {
                    let req = kata_rs_protocol::health::CheckRequest::new();
                    match client.health.check(
                        ttrpc::context::with_timeout(HANDSHAKE_TIMEOUT.as_nanos() as i64),
                        &req,
                    ) {
                        Ok(_) => {
                            client
                                .check_protocol(HANDSHAKE_TIMEOUT)
                                .map_err(VmmError::Agent)?;
                            return Ok(client);
                        }
                        Err(e) => last_error = format!("health check: {e}"),
                    }
                }
                Err(e) => last_error = format!("{e:#}"),
            }
            std::thread::sleep(AGENT_POLL_INTERVAL);
        }
        Err(VmmError::AgentTimeout(
            timeout,
            format!("last error: {last_error}; {}", self.console_tail()),
        ))
    }

    pub fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    /// Has `agent` power the guest off and waits up to `grace` for the
    /// VMM to exit; kills it if it does not. Its exit status (SIGKILL's
    /// when it was killed).
    pub fn power_off(&mut self, agent: &Agent, grace: Duration) -> Result<ExitStatus, VmmError> {
        if let Err(e) = agent.destroy_sandbox() {
            tracing::warn!(error = %e, "the guest was not asked to power off; killing its VMM");
            self.kill();
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.vmm.try_wait().map_err(VmmError::Wait)? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                tracing::info!(
                    pid = self.vmm.id(),
                    ?grace,
                    "the VM did not power off within its grace; killing its VMM"
                );
                let _ = self.vmm.kill();
                return self.vmm.wait().map_err(VmmError::Wait);
            }
            std::thread::sleep(AGENT_POLL_INTERVAL);
        }
    }

    /// Kills the VMM, if it still runs, and reaps it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.vmm.try_wait() {
            let _ = self.vmm.kill();
            let _ = self.vmm.wait();
        }
    }

    /// What the VM side tells after a request to the agent failed: whether
    /// the VMM still runs and what it and the guest console printed last. A
    /// guest that lost its agent panics within moments, so this waits that
    /// long for the VMM to exit first.
    pub fn post_mortem(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        let vmm = loop {
            match self.vmm.try_wait() {
                Ok(Some(status)) => break format!("the VMM {}", VmmExit(status)),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(AGENT_POLL_INTERVAL),
                Ok(None) => break "the VMM still runs".to_owned(),
                Err(e) => break format!("the VMM's status is unknown ({e})"),
            }
        };
        format!(
            "{vmm}; {}; {}",
            vmm_last_words(&self.dir),
            self.console_tail()
        )
    }

    /// The last lines of the guest console, for error messages.
    pub fn console_tail(&self) -> String {
        let tail = last_lines(&self.console, 5);
        if tail.is_empty() {
            return format!("the guest console ({}) is empty", self.console.display());
        }
        format!("guest console ends with: {}", tail.join(" | "))
    }
}

/// The last `n` non-blank lines of the log at `path`, trimmed, oldest first;
/// none when it cannot be read.
fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(n)
        .map(str::to_owned)
        .collect();
    lines.reverse();
    lines
}

impl Drop for Vmm {
    /// A VMM dropped without a clean power-off must not keep running.
    fn drop(&mut self) {
        if !self.detached {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn last_lines_skip_blank_lines_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "one\n  two  \n\n three\n\n").unwrap();
        assert_eq!(last_lines(&log, 2), ["two", "three"]);
        assert_eq!(last_lines(&log, 9), ["one", "two", "three"]);
        assert!(last_lines(&dir.path().join("missing"), 3).is_empty());
    }
}
