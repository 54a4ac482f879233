//! The real-peer harness: podman and containerd's `ctr` driving an OCI
//! runtime, so one behaviour can be run with runc as the reference and then
//! with the runtime under test, and the two results compared.
//!
//! The runtime under test comes from `KATA_RS_TEST_OCI_RUNTIME` (an absolute
//! path); tests/run.sh sets it to kata-rs once kata-rs answers `features`.
//! Without it, or without root or the peers, a test prints one `SKIP:` line
//! and returns, which tests/run.sh counts as a skip, not a pass.
//!
//! Every child process runs under a timeout, so no test can hang; every
//! container gets a unique name, so tests run in parallel.
//!
//! - [`process`]: peer commands under a timeout, and what they leave;
//! - [`tty`]: a command on a terminal of its own;
//! - [`podman`]: podman with a private store;
//! - [`containerd`]: a containerd of one test's own, for ctr and CRI.

mod containerd;
mod podman;
mod process;
mod tty;

pub use containerd::{Containerd, PAUSE_IMAGE};
pub use podman::{images, Podman};
pub use process::{processes_mentioning, run, run_ok, wait_for_processes_to_end, Outcome, Spawned};
pub use tty::TtySession;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The reference runtime.
pub const RUNC: &str = "/usr/sbin/runc";
/// The busybox image tests/images/build-busybox.py builds, by this name in
/// both podman's and containerd's stores.
pub const IMAGE: &str = "localhost/kata-rs-busybox:latest";
/// Bound on any one peer command; generous because the two cores of these
/// machines are shared by parallel tests.
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// The runtime under test, or why the peer tests cannot run here.
pub fn runtime_under_test(tools: &[&str]) -> Result<PathBuf, String> {
    let Some(runtime) = std::env::var_os("KATA_RS_TEST_OCI_RUNTIME") else {
        return Err("KATA_RS_TEST_OCI_RUNTIME is not set (tests/run.sh sets it to kata-rs once `kata-rs features` works)".into());
    };
    let runtime = PathBuf::from(runtime);
    // A wrong path is a broken set-up, not a reason to skip.
    assert!(
        runtime.is_absolute() && runtime.exists(),
        "KATA_RS_TEST_OCI_RUNTIME={} is not an absolute path to a file",
        runtime.display()
    );
    if !nix::unistd::geteuid().is_root() {
        return Err("podman and containerd need root".into());
    }
    if !Path::new(RUNC).exists() {
        return Err(format!("the reference runtime {RUNC} is not installed"));
    }
    for tool in tools {
        if which(tool).is_none() {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(runtime)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    })
}

/// Runs `behaviour` with runc, then with the runtime under test, and checks
/// that both observe the same thing. `behaviour` asserts what must hold
/// (so the reference run checks the test itself) and returns what else the
/// runtime under test has to match. Prints `SKIP: ...` where it cannot run.
pub fn compare<T: PartialEq + Debug>(tools: &[&str], behaviour: impl Fn(&Path) -> T) {
    let runtime = match runtime_under_test(tools) {
        Ok(runtime) => runtime,
        Err(reason) => {
            println!("SKIP: {reason}");
            return;
        }
    };
    let reference = behaviour(Path::new(RUNC));
    let observed = behaviour(&runtime);
    assert_eq!(
        observed,
        reference,
        "{} observed something else than runc (left: it, right: runc)",
        runtime.display()
    );
}

/// A name no other test in any running test binary uses.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "kata-rs-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `done` until it holds, failing the test after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Detaches every mount at or below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

// The container-side halves of behaviours both peers test.

/// Traps SIGTERM and exits 3 on it.
pub const TRAP_TERM: &str = "trap 'echo got TERM; exit 3' TERM; echo ready; sleep 1000 & wait";
/// Ignores SIGTERM: only SIGKILL ends it.
pub const IGNORE_TERM: &str = "trap '' TERM; echo ready; sleep 1000 & wait";

/// Reads the counter a container writes to the host directory.
pub fn counter(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("n"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes a growing counter to /data/n, replacing the file whole each time.
pub const COUNTER: &str =
    "i=0; while :; do i=$((i+1)); echo $i >/data/n.new; mv /data/n.new /data/n; sleep 0.05; done";

/// Fills memory twice: a child first (the shell reports it killed and shows
/// the cgroup's OOM-kill count, v2 or v1 file), then as PID 1.
pub const OOM: &str = "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo dd=$?; \
    grep -h '^oom_kill ' /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null; \
    exec dd if=/dev/zero of=/dev/null bs=64M count=1";

/// Prints the terminal's size for each line read, until end-of-file.
pub const STTY_LOOP: &str = "while read line; do stty size; done";

/// Drives [`STTY_LOOP`] on a terminal of 24x80, then resized to 40x100,
/// then sends end-of-file; returns the exit code. Each size is asked for
/// until it shows: peers pass sizes on apart from the input (and ctr only
/// after the task started, so the first answer may be 0x0).
pub fn tty_sizes(tty: &mut TtySession) -> Option<i32> {
    for (rows, cols) in [(24, 80), (40, 100)] {
        tty.resize(rows, cols);
        let size = format!("{rows} {cols}");
        let deadline = Instant::now() + TIMEOUT;
        while !tty.output().contains(&size) {
            assert!(
                Instant::now() < deadline,
                "no {size:?} on the terminal: {:?}",
                tty.output()
            );
            tty.write(b"\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // ^D: end-of-file for the canonical-mode terminal inside.
    tty.write(b"\x04");
    tty.wait(TIMEOUT).code()
}
