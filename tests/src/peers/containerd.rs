//! A containerd of one test's own: `ctr` with runc's shim or kata-rs's,
//! or its CRI plugin.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{
    images, processes_mentioning, run, run_ok, unique_name, unmount_under,
    wait_for_processes_to_end, wait_until, Outcome, IMAGE, RUNC, TIMEOUT,
};

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
