//! Driving `kata-rs` as an OCI runtime from tests: busybox bundles, a
//! private state root, commands with a time bound, and the checks that a
//! container left nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `kata-rs` binary under test: $KATA_RS_TEST_RUNTIME (tests/run.sh
/// sets it), else the workspace's debug build.
pub fn runtime_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KATA_RS_TEST_RUNTIME") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/kata-rs");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p kata-rs` or set KATA_RS_TEST_RUNTIME",
        path.display()
    );
    path
}

/// The msg of an error line in runc's stderr form, logrus's text
/// (`time="..." level=error msg="..."`), or None if `line` is not one.
pub fn runc_error_msg(line: &str) -> Option<String> {
    let rest = line.strip_prefix("time=\"")?;
    let (_, rest) = rest.split_once("\" level=error msg=")?;
    let Some(quoted) = rest.strip_prefix('"') else {
        return Some(rest.split(' ').next().unwrap_or_default().to_owned());
    };
    let mut msg = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(msg),
            '\\' => match chars.next()? {
                'n' => msg.push('\n'),
                't' => msg.push('\t'),
                other => msg.push(other),
            },
            c => msg.push(c),
        }
    }
    None
}

/// The isolation these tests run with: $KATA_RS_TEST_ISOLATION (vm or
/// namespace), namespace by default.
pub fn isolation() -> String {
    std::env::var("KATA_RS_TEST_ISOLATION").unwrap_or_else(|_| "namespace".into())
}

/// How long one runtime command may take: VM mode boots a VM, and inside
/// the emulated KVM host that takes a while. $KATA_RS_TEST_TIMEOUT
/// (seconds) overrides it.
pub fn command_timeout() -> Duration {
    if let Some(secs) = std::env::var("KATA_RS_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return Duration::from_secs(secs);
    }
    // Longer than kata-rs's own limits on a create (boot, CreateContainer,
    // monitor), so that its error, not this timeout, says what went wrong.
    if isolation() == "vm" {
        Duration::from_secs(420)
    } else {
        Duration::from_secs(60)
    }
}

/// Waits for `child`, killing it and failing the test after `timeout`.
pub fn wait_output(child: Child, timeout: Duration, what: &str) -> Output {
    wait_or_kill(child, timeout)
        .unwrap_or_else(|| panic!("{what} did not finish within {timeout:?}"))
}

/// Waits for `child`; kills it and returns None after `timeout`.
fn wait_or_kill(child: Child, timeout: Duration) -> Option<Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Some(out.expect("wait for a child")),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            None
        }
    }
}

/// `out` of the kata-rs command `what`, failing the test with its stderr
/// unless it succeeded.
fn succeeded(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "kata-rs {what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A directory with a busybox root filesystem and a config.json.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub config: Value,
}

impl Bundle {
    /// A bundle running `args`, from `kata-rs spec`'s template, with its
    /// cgroup at /kata-rs-test/<id> so leftovers can be looked for.
    pub fn new(id: &str, args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kata-rs-bundle-")
            .tempdir()
            .unwrap();
        install_busybox(&dir.path().join("rootfs"));
        let out = Command::new(runtime_binary())
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "kata-rs spec: {out:?}");
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
        config["root"]["readonly"] = false.into();
        config["linux"]["cgroupsPath"] = format!("/kata-rs-test/{id}").into();
        let mut bundle = Bundle { dir, config };
        bundle.save();
        bundle
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Writes `config` back to config.json.
    pub fn save(&mut self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }
}

/// /bin/busybox (Debian's busybox-static) and its applets as symlinks, plus
/// the files a container expects.
pub fn install_busybox(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for dir in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "echo", "cat", "sleep", "true", "false", "id", "pwd", "env", "ls", "kill", "touch",
        "mkdir", "grep", "head", "stty", "dd", "rm", "ps", "wc", "yes", "seq", "test",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
}

/// `kata-rs` with a private state root.
pub struct Runtime {
    pub root: tempfile::TempDir,
    pub log: Option<PathBuf>,
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

/// A test that failed half-way must not leave containers (in VM mode:
/// VMs that keep the CPUs busy) to the tests after it.
impl Drop for Runtime {
    fn drop(&mut self) {
        let Ok(out) = self.command(&["list", "--quiet"]).output() else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self.command(&["delete", "--force", id]).output();
        }
    }
}

impl Runtime {
    pub fn new() -> Self {
        Runtime {
            root: tempfile::Builder::new()
                .prefix("kata-rs-root-")
                .tempdir()
                .unwrap(),
            log: None,
        }
    }

    /// The command for `args`, with --root (and --log) set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(runtime_binary());
        cmd.arg("--root").arg(self.root.path());
        if let Some(log) = &self.log {
            cmd.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    /// Runs `args` to completion within the command timeout. Its output
    /// goes through files, not pipes: a created container inherits the
    /// runtime's stdio and keeps it open long after `create` returns.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = tempfile::tempfile().unwrap();
        let err = tempfile::tempfile().unwrap();
        let child = self
            .command(args)
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .spawn()
            .expect("start kata-rs");
        let finished = wait_or_kill(child, command_timeout());
        let read = |mut f: std::fs::File| {
            use std::io::{Read, Seek};
            let mut buf = Vec::new();
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            f.read_to_end(&mut buf).unwrap();
            buf
        };
        let Some(Output { status, .. }) = finished else {
            panic!(
                "kata-rs {args:?} did not finish within {:?}; its stderr so far: {}",
                command_timeout(),
                String::from_utf8_lossy(&read(err))
            );
        };
        Output {
            status,
            stdout: read(out),
            stderr: read(err),
        }
    }

    /// Runs `args` and fails the test unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> Output {
        succeeded(&format!("{args:?}"), self.run(args))
    }

    /// The arguments of `run` for `bundle` as `id`, with the isolation
    /// under test.
    pub fn run_args(id: &str, bundle: &Bundle) -> Vec<String> {
        vec![
            "run".into(),
            format!("--isolation={}", isolation()),
            "--bundle".into(),
            bundle.path().to_string_lossy().into_owned(),
            id.into(),
        ]
    }

    /// `run` of `bundle` as `id`, to be spawned with the caller's stdio.
    pub fn run_command(&self, id: &str, bundle: &Bundle) -> Command {
        let args = Self::run_args(id, bundle);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(&args)
    }

    /// `run` of `bundle` as `id` to completion.
    pub fn run_container(&self, id: &str, bundle: &Bundle) -> Output {
        let args = Self::run_args(id, bundle);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    /// `create` with the isolation under test.
    pub fn create(&self, id: &str, bundle: &Bundle) -> Output {
        let iso = format!("--isolation={}", isolation());
        let b = bundle.path().to_str().unwrap();
        self.run(&["create", &iso, "--bundle", b, id])
    }

    /// `create`, which must succeed.
    pub fn create_ok(&self, id: &str, bundle: &Bundle) -> Output {
        succeeded(&format!("create {id}"), self.create(id, bundle))
    }

    pub fn state(&self, id: &str) -> Value {
        let out = self.ok(&["state", id]);
        serde_json::from_slice(&out.stdout).expect("state prints JSON")
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_owned()
    }

    /// Polls `state` until the status is `want` (the container may not
    /// exist yet when polling starts).
    pub fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + command_timeout();
        loop {
            let out = self.run(&["state", id]);
            let status = serde_json::from_slice::<Value>(&out.stdout)
                .map(|v| v["status"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_else(|_| String::from_utf8_lossy(&out.stderr).into_owned());
            if status == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} stayed {status}, expected {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What is under the state root (nothing, once every container is
    /// deleted).
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails the test if anything of container `id` is left: state, lock,
    /// cgroups, mounts of its bundle, processes naming the state root.
    pub fn assert_clean(&self, id: &str, bundle: &Bundle) {
        let left = self.leftovers();
        assert!(
            !left.iter().any(|f| f.starts_with(id)),
            "state left under the root: {left:?}"
        );
        for cgroup in cgroup_dirs(id) {
            assert!(!cgroup.exists(), "cgroup left: {}", cgroup.display());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let bundle_path = bundle.path().to_string_lossy().into_owned();
        assert!(
            !mounts.contains(&bundle_path),
            "mounts of the bundle left:\n{}",
            mounts
                .lines()
                .filter(|l| l.contains(&bundle_path))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let root = self.root.path().to_string_lossy().into_owned();
        let procs = processes_mentioning(&root);
        assert!(procs.is_empty(), "processes left: {procs:?}");
    }
}

/// The cgroup directories a test container at /kata-rs-test/<id> would
/// have: one per v1 hierarchy, or the one of the v2 hierarchy.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.filter_map(|e| e.ok()) {
            dirs.push(e.path().join("kata-rs-test").join(id));
        }
    }
    dirs.push(PathBuf::from("/sys/fs/cgroup/kata-rs-test").join(id));
    dirs
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(format!("{}: {text}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// Writes an executable shell script (for hooks).
pub fn write_script(path: &Path, body: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "#!/bin/sh\n{body}").unwrap();
    drop(f);
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}
