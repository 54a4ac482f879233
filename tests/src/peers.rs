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

use std::fmt::Debug;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::pty::{openpty, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

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

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
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

fn text(buf: &Mutex<Vec<u8>>) -> String {
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

/// A child on a terminal of its own (a pty we hold the master side of), as
/// if a user ran it in a terminal window that can be resized.
pub struct TtySession {
    child: Child,
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl TtySession {
    pub fn start(cmd: &mut Command, rows: u16, cols: u16) -> Self {
        let pty = openpty(&winsize(rows, cols), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: only async-signal-safe calls between fork and exec. The
        // child leads a new session with the pty as its controlling
        // terminal, so it gets SIGWINCH on a resize and a whole-group kill
        // reaches what it started in the foreground.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start a command on a pty");
        // The Command still holds the slave copies: drop them, so a read
        // on the master ends once the child side has gone.
        let _ = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let master = File::from(pty.master);
        let output = Arc::default();
        collect(master.try_clone().unwrap(), Arc::clone(&output));
        Self {
            child,
            master,
            output,
        }
    }

    pub fn output(&self) -> String {
        text(&self.output)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the pty");
    }

    /// Resizes the terminal; the kernel sends SIGWINCH to the child.
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one struct winsize, which `ws` is.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Whether the terminal is in its usual cooked mode (echo, line
    /// editing), as a shell expects to find it after a command.
    pub fn is_cooked(&self) -> bool {
        use nix::sys::termios::{tcgetattr, LocalFlags};
        // On Linux the master reports the pair's settings.
        let mode = tcgetattr(self.master.as_fd()).expect("tcgetattr on the pty");
        mode.local_flags
            .contains(LocalFlags::ECHO | LocalFlags::ICANON)
    }

    /// Waits for the exit, killing the session after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
                let _ = self.child.wait();
                panic!(
                    "{timeout:?} passed on the terminal; it shows: {:?}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TtySession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
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

/// The test images (rootfs, podman tarball, OCI archive), built once per
/// test binary by tests/images/build-busybox.py, which caches them.
pub fn images() -> &'static Path {
    static IMAGES: OnceLock<PathBuf> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let dir = target.join("kata-rs/images");
        run_ok(
            Command::new("python3")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build-busybox.py"))
                .arg(&dir),
        );
        dir
    })
}

/// podman's storage, shared by the tests of one binary: the image is
/// imported once. Removed when the test binary exits.
fn podman_store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_store() {
        if let Some(dir) = STORE.get() {
            unmount_under(dir);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    STORE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("kata-rs-podman-")
            .tempdir()
            .unwrap()
            .keep();
        // SAFETY: registers a plain function, run once at exit.
        unsafe { libc::atexit(remove_store) };
        std::fs::create_dir(dir.join("cids")).unwrap();
        std::fs::create_dir(dir.join("no-hooks")).unwrap();
        // root has no CAP_SYS_RESOURCE on these hosts, so podman's default
        // rlimits (nofile 1048576) cannot be set even by runc; and no test
        // needs a network.
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             netns = \"none\"\n",
        )
        .unwrap();
        run_ok(
            Podman::global(&dir, Path::new(RUNC))
                .args(["import", "--change", "CMD=/bin/sh", "--change"])
                .arg("ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .arg(images().join("busybox-rootfs.tar"))
                .arg(IMAGE),
        );
        dir
    })
}

/// podman with a private store, running containers with one OCI runtime.
/// The containers it names are removed by [`Podman::finish`] (which checks
/// nothing is left) or, if a test fails first, when it is dropped.
pub struct Podman {
    store: &'static Path,
    runtime: PathBuf,
    hooks_dir: Option<PathBuf>,
    names: Vec<String>,
}

impl Podman {
    pub fn new(runtime: &Path) -> Self {
        Self {
            store: podman_store(),
            runtime: runtime.to_owned(),
            hooks_dir: None,
            names: Vec::new(),
        }
    }

    /// OCI hooks come from this directory only (none by default).
    pub fn with_hooks_dir(mut self, dir: &Path) -> Self {
        self.hooks_dir = Some(dir.to_owned());
        self
    }

    fn global(store: &Path, runtime: &Path) -> Command {
        let mut cmd = Command::new("podman");
        // conmon writes an `oom` file into the directory it starts in.
        cmd.current_dir(store)
            .env("CONTAINERS_CONF", store.join("containers.conf"))
            .arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("runroot"))
            .arg("--tmpdir")
            .arg(store.join("tmp"))
            .args(["--cgroup-manager=cgroupfs", "--events-backend=file"])
            .arg("--runtime")
            .arg(runtime);
        cmd
    }

    /// `podman` with the global options, ready for a subcommand.
    pub fn command(&self) -> Command {
        let mut cmd = Self::global(self.store, &self.runtime);
        // Without --hooks-dir podman would read the host's hook directories.
        cmd.arg("--hooks-dir").arg(
            self.hooks_dir
                .as_deref()
                .unwrap_or(&self.store.join("no-hooks")),
        );
        cmd
    }

    /// Runs `podman ARGS` to its end.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Outcome {
        run(self.command().args(args), stdin)
    }

    /// Runs `podman ARGS`, failing the test unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        run_ok(self.command().args(args))
    }

    /// A new container name, removed at the end of the test.
    pub fn name(&mut self) -> String {
        let name = unique_name("podman");
        self.names.push(name.clone());
        name
    }

    /// `--name N --cidfile F` for a container `name` gave.
    pub fn naming(&self, name: &str) -> [String; 4] {
        let cidfile = self.store.join("cids").join(name);
        [
            "--name".into(),
            name.into(),
            "--cidfile".into(),
            cidfile.to_string_lossy().into_owned(),
        ]
    }

    /// `podman run OPTS IMAGE CMD` in a new named container, to its end.
    pub fn run_container(
        &mut self,
        opts: &[&str],
        cmd: &[&str],
        stdin: Option<&[u8]>,
    ) -> (String, Outcome) {
        let name = self.name();
        let out = run(
            self.command()
                .arg("run")
                .args(self.naming(&name))
                .args(opts)
                .arg(IMAGE)
                .args(cmd),
            stdin,
        );
        (name, out)
    }

    /// `podman inspect --format FORMAT NAME`.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "--format", format, name])
            .trim()
            .to_owned()
    }

    /// Polls `podman logs` until they contain `needle`.
    pub fn wait_for_log(&self, name: &str, needle: &str) {
        wait_until(
            TIMEOUT,
            &format!("{needle:?} in the logs of {name}"),
            || self.run(&["logs", name], None).stdout.contains(needle),
        );
    }

    fn remove_all(&self) -> Option<Outcome> {
        if self.names.is_empty() {
            return None;
        }
        let mut cmd = self.command();
        cmd.args(["rm", "--force", "--ignore", "--time", "0"])
            .args(&self.names);
        Some(run(&mut cmd, None))
    }

    /// Removes this test's containers and checks nothing of them is left:
    /// no container in `podman ps -a`, no conmon, no process in their
    /// cgroups.
    pub fn finish(mut self) {
        let removed = self.remove_all();
        for name in std::mem::take(&mut self.names) {
            let listed = self.ok(&[
                "ps",
                "--all",
                "--quiet",
                "--filter",
                &format!("name=^{name}$"),
            ]);
            assert_eq!(
                listed.trim(),
                "",
                "container {name} is still listed after podman rm: {removed:?}"
            );
            let mut needles = vec![name.clone()];
            if let Ok(id) = std::fs::read_to_string(self.store.join("cids").join(&name)) {
                needles.push(id.trim().to_owned());
            }
            for needle in needles.iter().filter(|n| !n.is_empty()) {
                wait_for_processes_to_end(needle);
            }
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.remove_all();
    }
}

/// A containerd of one test's own (own root, state, sockets, config) with
/// the busybox image imported, whose `ctr run` uses either the default runc
/// shim with `--runc-binary` set to one OCI runtime, or kata-rs's shim v2;
/// or whose CRI plugin serves the runtime handlers `runc` and `kata-rs`.
/// Stopped, with everything it mounted or started, when dropped.
pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    /// Where containerd finds containerd-shim-kata-rs-v2.
    shim_dir: Option<PathBuf>,
    /// What `ctr run` gets to choose the runtime.
    runtime_args: Vec<String>,
    /// The containerd namespace ctr works in.
    namespace: &'static str,
    ids: Vec<String>,
}

/// ctr namespace of the tests' containers.
const CTR_NAMESPACE: &str = "kata-rs-tests";
/// The containerd namespace of CRI's pods and images.
const CRI_NAMESPACE: &str = "k8s.io";
/// The pods' sandbox image (tests/images/build-busybox.py builds it).
pub const PAUSE_IMAGE: &str = "localhost/kata-rs-pause:latest";
/// The test CNI plugin, which also serves as `loopback`.
const CNI_PLUGIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cni/kata-rs-test-net");

impl Containerd {
    /// With the runc shim running `runtime`.
    pub fn start(runtime: &Path) -> Self {
        let args = vec![
            "--runc-binary".into(),
            runtime.to_string_lossy().into_owned(),
        ];
        Self::launch(args, None, false)
    }

    /// With the shim `containerd-shim-kata-rs-v2` found in `shim_dir`.
    pub fn start_with_shim(shim_dir: &Path) -> Self {
        let args = vec!["--runtime".into(), "io.containerd.kata-rs.v2".into()];
        Self::launch(args, Some(shim_dir), false)
    }

    /// With the CRI plugin, as a Kubernetes node has it: runtime handlers
    /// `runc` (the reference) and `kata-rs` (the shim in `shim_dir`, with
    /// the configuration file KATA_RS_CONFIG names as its ConfigPath), the
    /// test CNI plugin and the pause image. See [`Containerd::cri`].
    pub fn start_with_cri(shim_dir: &Path) -> Self {
        Self::launch(Vec::new(), Some(shim_dir), true)
    }

    fn launch(runtime_args: Vec<String>, shim_dir: Option<&Path>, cri: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kata-rs-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        // Top-level keys come before the first table.
        let disabled = if cri {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\""
        };
        let mut config = format!(
            "version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             disabled_plugins = [{disabled}]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n  level = \"debug\"\n\
             [metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        );
        if cri {
            config += &cri_config(dir.path());
        }
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let mut containerd = Self {
            dir,
            daemon: None,
            shim_dir: shim_dir.map(Path::to_path_buf),
            runtime_args,
            namespace: if cri { CRI_NAMESPACE } else { CTR_NAMESPACE },
            ids: Vec::new(),
        };
        containerd.spawn_daemon();
        let archives: &[&str] = if cri {
            &["busybox-oci.tar", "pause-oci.tar"]
        } else {
            &["busybox-oci.tar"]
        };
        for archive in archives {
            run_ok(&mut containerd.ctr(&[
                "images",
                "import",
                &images().join(archive).to_string_lossy(),
            ]));
        }
        if cri {
            containerd.wait_for_cri();
        }
        containerd
    }

    /// Starts the daemon (again) and waits until it serves.
    fn spawn_daemon(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .unwrap();
        let mut daemon = Command::new("containerd");
        if let Some(shim_dir) = &self.shim_dir {
            // containerd looks for a shim binary in its PATH.
            let path = std::env::var("PATH").unwrap_or_default();
            daemon.env("PATH", format!("{}:{path}", shim_dir.display()));
        }
        let daemon = daemon
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start containerd");
        self.daemon = Some(daemon);
        wait_until(TIMEOUT, "containerd to serve", || {
            self.address().exists() && run(&mut self.ctr(&["version"]), None).code == Some(0)
        });
    }

    fn wait_for_cri(&self) {
        let client = self.cri();
        wait_until(
            TIMEOUT,
            "CRI to report the runtime and network ready",
            || client.ready().unwrap_or(false),
        );
    }

    /// Stops the daemon alone (SIGTERM; its shims keep running, as on a
    /// node where containerd restarts) and starts it again.
    pub fn restart(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
            let _ = daemon.wait();
        }
        let _ = std::fs::remove_file(self.address());
        self.spawn_daemon();
        if self.namespace == CRI_NAMESPACE {
            self.wait_for_cri();
        }
    }

    /// A CRI client of this containerd (started with
    /// [`Containerd::start_with_cri`]).
    pub fn cri(&self) -> crate::cri::Cri {
        crate::cri::Cri::connect(&self.address()).expect("connect to containerd's CRI socket")
    }

    /// The log containerd and its shims wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Where the shim serving `grouping` (a pod, or a container outside any
    /// pod) listens: containerd's state directory, by containerd's hash of
    /// its own address, the namespace and the grouping.
    pub fn shim_socket(&self, grouping: &str) -> PathBuf {
        use sha2::Digest;
        let key = self.address().join(self.namespace).join(grouping);
        let hash = sha2::Sha256::digest(key.as_os_str().as_encoded_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        Path::new("/run/containerd/s").join(hex)
    }

    /// Waits for the shim of `grouping` to take its socket away, as runc's
    /// shim does; a socket left is never removed.
    pub fn assert_no_shim_socket(&self, grouping: &str) {
        let socket = self.shim_socket(grouping);
        wait_until(
            TIMEOUT,
            &format!("the shim's socket {} to go", socket.display()),
            || !socket.exists(),
        );
    }

    /// `ctr ARGS` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.address())
            .args(["--namespace", self.namespace])
            .args(args);
        cmd
    }

    /// A new container id, deleted at the end of the test.
    pub fn id(&mut self) -> String {
        let id = unique_name("ctr");
        self.ids.push(id.clone());
        id
    }

    /// `ctr run RUNTIME-ARGS OPTS IMAGE ID CMD` for a new container (add
    /// `--rm` or `-d` to OPTS); returns it with its id.
    pub fn run_command(&mut self, opts: &[&str], cmd: &[&str]) -> (String, Command) {
        let id = self.id();
        let command = self.run_command_as(&id, opts, cmd);
        (id, command)
    }

    /// `ctr run` as [`Containerd::run_command`], for an id from
    /// [`Containerd::id`].
    pub fn run_command_as(&self, id: &str, opts: &[&str], cmd: &[&str]) -> Command {
        let mut command = self.ctr(&["run"]);
        command
            .args(&self.runtime_args)
            .args(opts)
            .args([IMAGE, id])
            .args(cmd);
        command
    }

    /// The task's status as `ctr task ls` shows it (RUNNING, PAUSED, ...).
    pub fn task_status(&self, id: &str) -> String {
        self.task_column(id, 2)
    }

    /// The task's pid as containerd has it from the shim.
    pub fn task_pid(&self, id: &str) -> String {
        self.task_column(id, 1)
    }

    fn task_column(&self, id: &str, column: usize) -> String {
        run_ok(&mut self.ctr(&["task", "ls"]))
            .lines()
            .find(|line| line.split_whitespace().next() == Some(id))
            .and_then(|line| line.split_whitespace().nth(column))
            .unwrap_or("")
            .to_owned()
    }

    /// Kills and deletes this test's tasks and containers; returns what
    /// each ctr command answered.
    fn remove_all(&self) -> Vec<Outcome> {
        let mut answers = Vec::new();
        // CRI's pods: stopped and removed as a kubelet would, so that CNI
        // takes their veths and CRI their namespaces.
        if self.namespace == CRI_NAMESPACE {
            if let Ok(cri) = crate::cri::Cri::connect(&self.address()) {
                for pod in cri.pods().unwrap_or_default() {
                    let _ = cri.stop_pod(&pod);
                    let _ = cri.remove_pod(&pod);
                }
            }
        }
        for id in &self.ids {
            for args in [
                &["task", "kill", "--signal", "SIGKILL", id][..],
                &["task", "delete", "--force", id],
                &["container", "delete", id],
            ] {
                answers.push(run(&mut self.ctr(args), None));
            }
        }
        answers
    }

    /// Deletes this test's containers and checks nothing of them is left:
    /// no task or container in ctr, no shim, no process in their cgroups.
    pub fn finish(mut self) {
        let removed = self.remove_all();
        assert_eq!(
            run_ok(&mut self.ctr(&["task", "ls", "--quiet"])).trim(),
            "",
            "tasks left after kill and delete: {removed:?}"
        );
        assert_eq!(
            run_ok(&mut self.ctr(&["container", "ls", "--quiet"])).trim(),
            "",
            "containers left after kill and delete: {removed:?}"
        );
        let address = self.address().to_string_lossy().into_owned();
        for needle in self.ids.iter().chain([&address]) {
            wait_for_processes_to_end(needle);
        }
        for id in std::mem::take(&mut self.ids) {
            self.assert_no_shim_socket(&id);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What containerd and its shims said last: the failing test's
            // only view of the shim's side.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the last lines of containerd's log:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        self.remove_all();
        if let Some(mut daemon) = self.daemon.take() {
            let _ = killpg(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while daemon.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // Shims outlive containerd by design; these were started for this
        // test's containerd alone (their command line names its socket).
        let address = self.address().to_string_lossy().into_owned();
        for process in processes_mentioning(&address) {
            if let Some(pid) = process.split(':').next().and_then(|p| p.parse().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        unmount_under(self.dir.path());
    }
}

/// containerd's CRI plugin configured as a node running kata-rs would be
/// (docs/howto-kubernetes.md shows the same stanza), with CNI from `dir`:
/// the test plugin under its own name and as `loopback`, one network.
fn cri_config(dir: &Path) -> String {
    let bin = dir.join("cni/bin");
    let conf = dir.join("cni/conf");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    for name in ["kata-rs-test-net", "loopback"] {
        std::os::unix::fs::symlink(CNI_PLUGIN, bin.join(name)).unwrap();
    }
    std::fs::write(
        conf.join("10-kata-rs-test.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "kata-rs-test",
            "plugins": [{"type": "kata-rs-test-net", "subnet": "10.213.0.0/16",
                         "ipv6Prefix64": "fd00:213:0:0", "mtu": 9000}]}"#,
    )
    .unwrap();
    let config_path = std::env::var("KATA_RS_CONFIG").unwrap_or_default();
    // restrict_oom_score_adj: root has no CAP_SYS_RESOURCE on these hosts,
    // so the pause container's -998 could not be set (not even by runc).
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        "[{cri}]\n\
         \x20 sandbox_image = \"{PAUSE_IMAGE}\"\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 disable_apparmor = true\n\
         \x20 restrict_oom_score_adj = true\n\
         [{cri}.containerd]\n\
         \x20 default_runtime_name = \"runc\"\n\
         [{cri}.containerd.runtimes.runc]\n\
         \x20 runtime_type = \"io.containerd.runc.v2\"\n\
         [{cri}.containerd.runtimes.runc.options]\n\
         \x20 BinaryName = \"{RUNC}\"\n\
         [{cri}.containerd.runtimes.kata-rs]\n\
         \x20 runtime_type = \"io.containerd.kata-rs.v2\"\n\
         \x20 pod_annotations = [\"io.kata-rs.isolation\"]\n\
         [{cri}.containerd.runtimes.kata-rs.options]\n\
         \x20 ConfigPath = \"{config_path}\"\n\
         [{cri}.cni]\n\
         \x20 bin_dir = \"{}\"\n\
         \x20 conf_dir = \"{}\"\n",
        bin.display(),
        conf.display()
    )
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
