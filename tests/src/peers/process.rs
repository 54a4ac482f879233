//! Peer commands in process groups of their own, under a timeout, with
//! their output collected; and the processes a container leaves.

use std::fmt::Debug;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{wait_until, TIMEOUT};

/// What a finished command left: exit code (None if a signal ended it),
/// stdout and stderr.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A child process in its own process group with its output collected by
/// threads, killed (the whole group) if it outlives its timeout or is
/// dropped while running.
pub struct Spawned {
    child: Child,
    what: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

pub(super) fn collect(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

pub(super) fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

impl Spawned {
    /// Starts `cmd`, feeding it `stdin` then end-of-file (or /dev/null).
    pub fn start(cmd: &mut Command, stdin: Option<&[u8]>) -> Self {
        let what = format!("{cmd:?}");
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        let (stdout, stderr) = Default::default();
        let mut readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            let input = input.to_vec();
            readers.push(std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            }));
        }
        Self {
            child,
            what,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn stdout(&self) -> String {
        text(&self.stdout)
    }

    /// Waits until stdout contains `needle`.
    pub fn wait_for_stdout(&self, needle: &str) {
        wait_until(TIMEOUT, &format!("{needle:?} from {}", self.what), || {
            self.stdout().contains(needle)
        });
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit, killing the process group after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?}; stdout: {}; stderr: {}",
                    self.what,
                    self.stdout(),
                    text(&self.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // A daemon it started (conmon, a shim) may hold its pipes open:
        // take what came within a moment rather than wait for their end.
        let readers_deadline = Instant::now() + Duration::from_secs(5);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < readers_deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Outcome {
            code: status.code(),
            stdout: self.stdout(),
            stderr: text(&self.stderr),
        }
    }

    fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Runs `cmd` to its end under [`TIMEOUT`].
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Outcome {
    Spawned::start(cmd, stdin).wait(TIMEOUT)
}

/// Runs `cmd` and fails the test unless it exits 0; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd, None);
    assert_eq!(out.code, Some(0), "{what} failed: {out:?}");
    out.stdout
}

/// Waits up to 10 s for the processes mentioning `needle` to end; fails
/// the test naming those left.
pub fn wait_for_processes_to_end(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes mentioning {needle} still run: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes (other than this one) whose command line or cgroup mentions
/// `needle`: what is left of a container or of its monitor.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if cmdline.contains(needle) || cgroup.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}
