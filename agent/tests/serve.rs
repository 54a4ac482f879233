//! Runs the agent binary with --no-init on a Unix socket and checks its
//! answers against this host, through the generated ttrpc clients.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kata_rs_protocol::agent::{DestroySandboxRequest, GuestDetailsRequest};
use kata_rs_protocol::health::{
    health_check_response::ServingStatus, CheckRequest, VersionRequest,
};
use kata_rs_protocol::{AgentClient, PROTOCOL_VERSION};

const AGENT: &str = env!("CARGO_BIN_EXE_kata-rs-agent");

/// The agent process; killed on drop so a failing test leaves nothing.
struct Agent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        Self::start_at(dir, socket)
    }

    fn start_at(dir: tempfile::TempDir, socket: PathBuf) -> Self {
        let child = Command::new(AGENT)
            .args(["--no-init", "--log-level", "debug", "--listen"])
            .arg(format!("unix://{}", socket.display()))
            .arg(format!(
                "--stdio-listen=unix://{}",
                dir.path().join("stdio.sock").display()
            ))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn kata-rs-agent");
        let mut agent = Agent {
            child,
            socket,
            _dir: dir,
        };
        agent.wait_for_socket();
        agent
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("agent exited before serving: {status}");
            }
            assert!(Instant::now() < deadline, "agent did not serve within 10s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self) -> AgentClient {
        let stream = UnixStream::connect(&self.socket).expect("connect to agent");
        AgentClient::from_stream(stream).expect("ttrpc client")
    }

    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64)
}

/// Runs a host tool and returns its trimmed stdout.
fn host(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(out.status.success(), "{cmd} {args:?}: {}", out.status);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn host_mem_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .expect("MemTotal line");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn health_check_and_version() {
    let agent = Agent::start();
    let client = agent.client();

    let resp = client.health.check(ctx(), &CheckRequest::new()).unwrap();
    assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));

    let mut req = CheckRequest::new();
    req.service = "kata_rs.agent.v1.AgentService".into();
    let resp = client.health.check(ctx(), &req).unwrap();
    assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));

    req.service = "no.such.Service".into();
    match client.health.check(ctx(), &req) {
        Err(ttrpc::Error::RpcStatus(status)) => {
            assert_eq!(status.code(), ttrpc::Code::NOT_FOUND, "{status:?}")
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }

    let version = client
        .health
        .version(ctx(), &VersionRequest::new())
        .unwrap();
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.protocol_version, PROTOCOL_VERSION);
}

#[test]
fn guest_details_match_this_host() {
    let agent = Agent::start();
    let details = agent
        .client()
        .agent
        .get_guest_details(ctx(), &GuestDetailsRequest::new())
        .unwrap();

    let online: u32 = host("getconf", &["_NPROCESSORS_ONLN"]).parse().unwrap();
    assert_eq!(details.online_cpus, online);
    // nproc counts the CPUs this process may run on, which is never more
    // than the online ones (and equal unless affinity is restricted).
    let usable: u32 = host("nproc", &[]).parse().unwrap();
    assert!(
        usable <= details.online_cpus,
        "nproc {usable} > {details:?}"
    );

    assert_eq!(details.mem_total_bytes, host_mem_total_bytes());
    assert_eq!(details.kernel_release, host("uname", &["-r"]));
    assert_eq!(details.agent_version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn destroy_sandbox_replies_then_ends_the_agent() {
    let mut agent = Agent::start();
    let client = agent.client();
    client
        .agent
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .expect("DestroySandbox is answered before teardown");
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent exits after DestroySandbox");
    assert!(status.success(), "{status}");
}

#[test]
fn replaces_a_stale_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // A dropped listener leaves its socket file behind, as a crashed agent
    // would.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());

    let agent = Agent::start_at(dir, socket);
    let resp = agent
        .client()
        .health
        .check(ctx(), &CheckRequest::new())
        .unwrap();
    assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));
}

#[test]
fn refuses_to_replace_a_non_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.sock");
    std::fs::write(&file, "not a socket").unwrap();
    let out = Command::new(AGENT)
        .args(["--no-init", "--listen"])
        .arg(format!("unix://{}", file.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
}

#[test]
fn refuses_init_duties_when_not_pid1() {
    let out = Command::new(AGENT).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not 1"), "{stderr}");
    assert!(stderr.contains("--no-init"), "{stderr}");
}
