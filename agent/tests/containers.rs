//! The container RPCs and stdio streams, against the agent binary run with
//! `--no-init` on Unix sockets, creating real namespace containers on this
//! host (busybox rootfs). Needs root: ignored by default, run with
//! `cargo test -p kata-rs-agent --test containers -- --ignored`.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kata_rs_protocol::agent::{
    ContainerRequest, CreateContainerRequest, ExecProcessRequest, ProcessRequest,
    RemoveContainerRequest, SignalProcessRequest,
};
use kata_rs_protocol::stdio::{StreamHeader, StreamKind};
use kata_rs_protocol::AgentClient;
use serde_json::{json, Value};
use ttrpc::Code;

const AGENT: &str = env!("CARGO_BIN_EXE_kata-rs-agent");

struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    client: AgentClient,
}

impl Agent {
    fn spawn() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(AGENT)
            .args(["--no-init", "--log-level", "debug"])
            .arg(format!("--listen=unix://{}", socket.display()))
            .arg(format!(
                "--stdio-listen=unix://{}",
                dir.path().join("stdio.sock").display()
            ))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&socket) {
                break s;
            }
            assert!(Instant::now() < deadline, "agent did not serve");
            std::thread::sleep(Duration::from_millis(20));
        };
        let client = AgentClient::from_stream(stream).unwrap();
        Agent { child, dir, client }
    }

    /// Opens one stdio stream, as the runtime does before the RPC.
    fn stream(&self, id: &str, exec_id: &str, kind: StreamKind) -> UnixStream {
        let mut s = UnixStream::connect(self.dir.path().join("stdio.sock")).unwrap();
        s.write_all(StreamHeader::new(id, exec_id, kind).to_string().as_bytes())
            .unwrap();
        s
    }

    /// A busybox rootfs for a container.
    fn rootfs(&self, id: &str) -> PathBuf {
        let rootfs = self.dir.path().join("rootfs").join(id);
        install_busybox(&rootfs);
        rootfs
    }

    fn create(&self, id: &str, args: &[&str]) -> ttrpc::Result<()> {
        self.create_spec(id, &spec(id, &self.rootfs(id), args))
    }

    fn create_spec(&self, id: &str, spec: &Value) -> ttrpc::Result<()> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.spec_json = serde_json::to_vec(&spec).unwrap();
        self.client.agent.create_container(ctx(), &req).map(|_| ())
    }

    fn start(&self, id: &str) -> ttrpc::Result<()> {
        let mut req = ContainerRequest::new();
        req.container_id = id.into();
        self.client.agent.start_container(ctx(), &req).map(|_| ())
    }

    /// Starts an exec; its pid.
    fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> ttrpc::Result<i32> {
        self.exec_process(id, exec_id, &process(args))
    }

    fn exec_process(&self, id: &str, exec_id: &str, process: &Value) -> ttrpc::Result<i32> {
        let mut req = ExecProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.process_json = serde_json::to_vec(process).unwrap();
        self.client.agent.exec_process(ctx(), &req).map(|r| r.pid)
    }

    fn wait(&self, id: &str, exec_id: &str) -> ttrpc::Result<i32> {
        self.wait_exit(id, exec_id).map(|(status, _)| status)
    }

    /// The exit status, and whether the OOM killer killed in the
    /// container meanwhile.
    fn wait_exit(&self, id: &str, exec_id: &str) -> ttrpc::Result<(i32, bool)> {
        let mut req = ProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        self.client
            .agent
            .wait_process(ctx(), &req)
            .map(|r| (r.exit_status, r.oom_killed))
    }

    /// Sends `signal` to process `exec_id` ("" for the init) of `id`.
    fn signal(&self, id: &str, exec_id: &str, signal: u32) -> ttrpc::Result<()> {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.signal = signal;
        self.client.agent.signal_process(ctx(), &req).map(|_| ())
    }

    fn status(&self, id: &str) -> ttrpc::Result<String> {
        let mut req = ContainerRequest::new();
        req.container_id = id.into();
        self.client
            .agent
            .state_container(ctx(), &req)
            .map(|r| r.status)
    }

    fn remove(&self, id: &str, force: bool) -> ttrpc::Result<()> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.into();
        req.force = force;
        self.client.agent.remove_container(ctx(), &req).map(|_| ())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

fn code<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

fn read_all(mut s: UnixStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn install_busybox(rootfs: &Path) {
    if rootfs.exists() {
        return;
    }
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for dir in ["proc", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    for applet in ["sh", "echo", "cat", "sleep", "true", "test", "dd"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
}

fn process(args: &[&str]) -> Value {
    json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/",
        "noNewPrivileges": true
    })
}

fn spec(id: &str, rootfs: &Path, args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": process(args),
        "root": {"path": rootfs, "readonly": false},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "cgroupsPath": format!("/kata-rs-agent-test/{id}")
        }
    })
}

#[test]
#[ignore = "needs root: creates namespace containers"]
fn output_reaches_the_host_before_the_exit_status() {
    let agent = Agent::spawn();
    let out = agent.stream("c1", "", StreamKind::Stdout);
    let err = agent.stream("c1", "", StreamKind::Stderr);
    agent
        .create("c1", &["sh", "-c", "echo hello; echo oops >&2; exit 42"])
        .unwrap();
    assert_eq!(agent.status("c1").unwrap(), "created");
    agent.start("c1").unwrap();
    // The status is kept for a waiter that comes after the exit.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.wait("c1", "").unwrap(), 42);
    // By the time WaitProcess answered, the streams were closed.
    assert_eq!(read_all(out), "hello\n");
    assert_eq!(read_all(err), "oops\n");
    assert_eq!(agent.status("c1").unwrap(), "stopped");
    agent.remove("c1", false).unwrap();
    let (c, msg) = code(agent.status("c1"));
    assert_eq!(c, Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("c1"), "{msg}");
}

#[test]
#[ignore = "needs root: creates namespace containers"]
fn stdin_eof_from_the_host_ends_the_input() {
    let agent = Agent::spawn();
    let mut input = agent.stream("cat", "", StreamKind::Stdin);
    let out = agent.stream("cat", "", StreamKind::Stdout);
    agent.create("cat", &["cat"]).unwrap();
    agent.start("cat").unwrap();
    input.write_all(b"through the container\n").unwrap();
    input.shutdown(Shutdown::Write).unwrap();
    assert_eq!(agent.wait("cat", "").unwrap(), 0);
    assert_eq!(read_all(out), "through the container\n");
    agent.remove("cat", false).unwrap();
}

#[test]
#[ignore = "needs root: creates namespace containers"]
fn exec_close_stdin_signals_and_forced_removal() {
    let agent = Agent::spawn();
    agent.create("box", &["sleep", "1000"]).unwrap();
    agent.start("box").unwrap();
    assert_eq!(agent.status("box").unwrap(), "running");

    let out = agent.stream("box", "e1", StreamKind::Stdout);
    agent
        .exec("box", "e1", &["sh", "-c", "echo from exec; exit 3"])
        .unwrap();
    assert_eq!(agent.wait("box", "e1").unwrap(), 3);
    assert_eq!(read_all(out), "from exec\n");
    // A waited exec is gone, so its id is free again.
    let (c, _) = code(agent.wait("box", "e1"));
    assert_eq!(c, Code::NOT_FOUND);

    let _input = agent.stream("box", "e2", StreamKind::Stdin);
    let out = agent.stream("box", "e2", StreamKind::Stdout);
    agent.exec("box", "e2", &["cat"]).unwrap();
    let (c, _) = code(agent.exec("box", "e2", &["true"]));
    assert_eq!(c, Code::ALREADY_EXISTS);
    let mut req = ProcessRequest::new();
    req.container_id = "box".into();
    req.exec_id = "e2".into();
    agent.client.agent.close_stdin(ctx(), &req).unwrap();
    assert_eq!(agent.wait("box", "e2").unwrap(), 0);
    assert_eq!(read_all(out), "");

    let pid = agent.exec("box", "e3", &["sleep", "1000"]).unwrap();
    let mut req = ContainerRequest::new();
    req.container_id = "box".into();
    let pids = agent.client.agent.list_processes(ctx(), &req).unwrap().pids;
    assert!(pids.contains(&pid), "exec pid {pid} not among {pids:?}");
    agent.signal("box", "e3", 15).unwrap();
    // Finished but not yet waited for: still known, and not found for a
    // signal. SIGCONT until the agent has seen the exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (c, msg) = loop {
        match agent.signal("box", "e3", 18) {
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => break code(other),
        }
    };
    assert_eq!(c, Code::NOT_FOUND, "a signal to a finished exec: {msg}");
    assert!(msg.contains("already finished"), "{msg}");
    assert_eq!(agent.wait("box", "e3").unwrap(), 128 + 15);

    let mut req = ContainerRequest::new();
    req.container_id = "box".into();
    let pids = agent.client.agent.list_processes(ctx(), &req).unwrap().pids;
    assert_eq!(pids.len(), 1, "{pids:?}");

    let (c, msg) = code(agent.remove("box", false));
    assert_eq!(c, Code::FAILED_PRECONDITION, "{msg}");
    agent.remove("box", true).unwrap();
    // The init died of the forced removal; its waiter learns how.
    let (c, _) = code(agent.wait("box", ""));
    assert_eq!(c, Code::NOT_FOUND);
}

#[test]
#[ignore = "needs root: creates namespace containers"]
fn a_tty_exec_with_cri_length_ids_gets_a_terminal() {
    let agent = Agent::spawn();
    // CRI's ids: 64 hex characters for the container and for an exec.
    let (id, exec_id) = ("c".repeat(64), "e".repeat(64));
    agent.create(&id, &["sleep", "1000"]).unwrap();
    agent.start(&id).unwrap();
    let tty = agent.stream(&id, &exec_id, StreamKind::Tty);
    let mut p = process(&["sh", "-c", "test -t 0 && test -t 1 && echo on-a-terminal"]);
    p["terminal"] = true.into();
    agent.exec_process(&id, &exec_id, &p).unwrap();
    assert_eq!(agent.wait(&id, &exec_id).unwrap(), 0);
    assert!(read_all(tty).contains("on-a-terminal"));
    agent.remove(&id, true).unwrap();
}

#[test]
#[ignore = "needs root: creates namespace containers"]
fn a_failed_create_says_why_over_the_rpc() {
    let agent = Agent::spawn();
    let rootfs = agent.rootfs("why");
    let _ = std::fs::remove_dir(rootfs.join("proc"));
    std::os::unix::fs::symlink("/tmp", rootfs.join("proc")).unwrap();
    let (_, msg) = code(agent.create_spec("why", &spec("why", &rootfs, &["true"])));
    assert!(
        msg.contains(
            "failed to prepare rootfs: filesystem proc must be mounted on ordinary directory"
        ),
        "{msg}"
    );
    assert_eq!(code(agent.status("why")).0, Code::NOT_FOUND);
}

#[test]
#[ignore = "needs root: creates namespace containers"]
fn killed_init_reports_128_plus_signal() {
    let agent = Agent::spawn();
    agent.create("k", &["sleep", "1000"]).unwrap();
    agent.start("k").unwrap();
    agent.signal("k", "", 9).unwrap();
    assert_eq!(agent.wait_exit("k", "").unwrap(), (137, false));
    agent.remove("k", false).unwrap();
}

/// A container whose memory limit the OOM killer enforced: WaitProcess
/// says so, for the init and for an exec that ran meanwhile, so that the
/// shim can publish the OOM event and CRI report OOMKilled.
#[test]
#[ignore = "needs root: creates namespace containers"]
fn an_oom_kill_in_the_container_is_reported_by_wait_process() {
    let agent = Agent::spawn();
    let mut spec = spec("hog", &agent.rootfs("hog"), &["sleep", "1000"]);
    spec["linux"]["resources"] = json!({"memory": {"limit": 16 << 20}});
    agent.create_spec("hog", &spec).unwrap();
    agent.start("hog").unwrap();
    agent.exec("hog", "calm", &["true"]).unwrap();
    assert_eq!(agent.wait_exit("hog", "calm").unwrap(), (0, false));
    agent
        .exec(
            "hog",
            "hungry",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        )
        .unwrap();
    assert_eq!(agent.wait_exit("hog", "hungry").unwrap(), (137, true));
    agent.signal("hog", "", 9).unwrap();
    assert_eq!(agent.wait_exit("hog", "").unwrap(), (137, true));
    agent.remove("hog", false).unwrap();
}

#[test]
#[ignore = "needs root: creates namespace containers"]
fn bad_requests_get_clear_errors() {
    let agent = Agent::spawn();
    let (c, msg) = code(agent.status("a/b"));
    assert_eq!(c, Code::INVALID_ARGUMENT, "{msg}");
    let (c, msg) = code(agent.start("nope"));
    assert_eq!(c, Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("nope"), "{msg}");

    let mut req = CreateContainerRequest::new();
    req.container_id = "j".into();
    req.spec_json = b"{ not json".to_vec();
    let (c, msg) = code(agent.client.agent.create_container(ctx(), &req));
    assert_eq!(c, Code::INVALID_ARGUMENT, "{msg}");
    let (c, _) = code(agent.status("j"));
    assert_eq!(c, Code::NOT_FOUND);

    agent.create("twice", &["true"]).unwrap();
    let (c, _) = code(agent.create("twice", &["true"]));
    assert_eq!(c, Code::ALREADY_EXISTS);
    let (c, msg) = code(agent.exec("twice", "e", &["true"]));
    assert_eq!(c, Code::FAILED_PRECONDITION, "{msg}");
    agent.start("twice").unwrap();
    let (c, msg) = code(agent.start("twice"));
    assert_eq!(c, Code::FAILED_PRECONDITION, "{msg}");
    assert_eq!(agent.wait("twice", "").unwrap(), 0);
    // A finished process is not found, as runc's shim answers a kill of
    // one: containerd takes that for "already gone".
    let (c, msg) = code(agent.signal("twice", "", 15));
    assert_eq!(c, Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("already finished"), "{msg}");
    if let Err(e) = agent.remove("twice", false) {
        panic!("remove after wait: {e:?}");
    }

    // A header the agent cannot parse gets the connection closed.
    for header in [
        "c1 - stdio\n",
        "only-two -\n",
        &format!("{}\n", "x".repeat(600)),
    ] {
        let mut s = UnixStream::connect(agent.dir.path().join("stdio.sock")).unwrap();
        let _ = s.write_all(header.as_bytes());
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "{header:?}");
    }
}
