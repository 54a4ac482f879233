//! virtiofsd, sharing a sandbox's `share/` directory with its guest over
//! vhost-user.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::process::{spawn_in_own_session, ProcRef};
use super::{share_dir, virtiofsd_socket};
use crate::config::Config;

/// How long virtiofsd may take to open its socket.
const READY: Duration = Duration::from_secs(10);

/// Starts virtiofsd for the sandbox in `dir` and waits for its socket; its
/// log goes to `virtiofsd.log` there.
pub fn start(config: &Config, dir: &Path) -> Result<ProcRef> {
    let socket = virtiofsd_socket(dir);
    let log_path = dir.join("virtiofsd.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
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
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
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
