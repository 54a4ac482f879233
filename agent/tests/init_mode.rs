//! Runs the agent in init mode, as PID 1 of new PID and mount namespaces,
//! the closest a host gets to the guest without a VM: its mounts stay in
//! the private mount namespace, and its reboot(RB_AUTOBOOT) only ends the
//! PID namespace (the kernel turns it into SIGHUP for that namespace's init).
//!
//! Needs root (CAP_SYS_ADMIN) and unshare(1), so it is ignored by default:
//! `cargo test -p kata-rs-agent --test init_mode -- --ignored`.

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kata_rs_protocol::agent::{DestroySandboxRequest, GuestDetailsRequest};
use kata_rs_protocol::health::{health_check_response::ServingStatus, CheckRequest};
use kata_rs_protocol::AgentClient;
use nix::sys::signal::Signal;

const AGENT: &str = env!("CARGO_BIN_EXE_kata-rs-agent");

struct Unshared(Child);

impl Drop for Unshared {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64)
}

/// The mount points and filesystem types of a process, from its mountinfo.
fn mounts_of(pid: u32) -> Vec<(String, String)> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((fields[4].to_owned(), fields.get(sep + 1)?.to_string()))
        })
        .collect()
}

#[test]
#[ignore = "needs root: runs the agent as PID 1 in new PID and mount namespaces"]
fn agent_as_pid1_mounts_serves_and_reboots_its_namespace() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (CAP_SYS_ADMIN) for unshare --pid --mount"
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut unshare = Unshared(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount", "--propagation", "private"])
            .args(["--kill-child", AGENT, "--log-level", "debug", "--listen"])
            .arg(format!("unix://{}", socket.display()))
            .spawn()
            .expect("unshare(1)"),
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(&socket) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => {
                if let Some(status) = unshare.0.try_wait().unwrap() {
                    panic!("agent exited before serving: {status}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("agent did not serve within 10s: {e}"),
        }
    };
    let client = AgentClient::from_stream(stream).unwrap();
    let resp = client.health.check(ctx(), &CheckRequest::new()).unwrap();
    assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));
    let details = client
        .agent
        .get_guest_details(ctx(), &GuestDetailsRequest::new())
        .unwrap();
    assert!(details.online_cpus >= 1 && details.mem_total_bytes > 0);

    // unshare's only child is the agent.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.0.id())).unwrap();
    let agent_pid: u32 = children.trim().parse().expect("one child pid");
    let mounts = mounts_of(agent_pid);
    for (target, fstype) in [
        ("/dev", "devtmpfs"),
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        assert!(
            mounts.iter().any(|(t, f)| t == target && f == fstype),
            "no {fstype} on {target} in {mounts:?}"
        );
    }

    client
        .agent
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .expect("DestroySandbox is answered before the reboot");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = unshare.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "agent did not reboot within 10s");
        std::thread::sleep(Duration::from_millis(20));
    };
    // unshare re-raises its child's fatal signal on itself.
    assert_eq!(status.signal(), Some(Signal::SIGHUP as i32), "{status}");
}
