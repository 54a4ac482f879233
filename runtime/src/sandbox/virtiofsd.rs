//! virtiofsd, sharing a sandbox's `share/` directory with its guest over
//! vhost-user.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::error::{FileError, OnPath};
use super::process::{spawn_in_own_session, ProcRef};
use super::{share_dir, virtiofsd_socket};
use crate::config::Config;

/// How long virtiofsd may take to open its socket.
const READY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("virtiofsd {} was not found (set virtiofsd.path in the configuration)", .0.display())]
    NotFound(PathBuf),
    #[error("virtiofsd exited with {status}: {log}")]
    Exited { status: ExitStatus, log: String },
    #[error("virtiofsd did not open {} in time", .0.display())]
    NotReady(PathBuf),
    #[error("wait for virtiofsd: {0}")]
    Wait(std::io::Error),
    #[error("virtiofsd vanished")]
    Vanished,
}

/// Starts virtiofsd for the sandbox in `dir` and waits for its socket; its
/// log goes to `virtiofsd.log` there.
pub fn start(config: &Config, dir: &Path) -> Result<ProcRef, VirtiofsdError> {
    let socket = virtiofsd_socket(dir);
    let log_path = dir.join("virtiofsd.log");
    let log = std::fs::File::create(&log_path).on_path("create", &log_path)?;
    let program = crate::config::resolve_program(&config.virtiofsd.path)
        .ok_or_else(|| VirtiofsdError::NotFound(config.virtiofsd.path.clone()))?;
    let mut cmd = Command::new(&program);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(share_dir(dir))
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
    let deadline = Instant::now() + READY;
    while !socket.exists() {
        if let Some(status) = child.try_wait().map_err(VirtiofsdError::Wait)? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(VirtiofsdError::Exited {
                status,
                log: log.trim().to_owned(),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(VirtiofsdError::NotReady(socket));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    crate::host_cgroup::oom_victim_before_caller(child.id());
    ProcRef::of(child.id() as i32).ok_or(VirtiofsdError::Vanished)
}
