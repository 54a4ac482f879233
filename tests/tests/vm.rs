//! VM-mode integration tests: the real guest kernel and agent (or guest
//! probe) booted by kata-rs-vmm on KVM that runs standard guests, which on
//! hosts without VMX/SVM means inside the emulated KVM host. tests/run.sh
//! runs them with `--ignored` where that holds; a plain `cargo test` lists
//! them as ignored.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use kata_rs::sandbox::agent::Agent;
use kata_rs::sandbox::size::Size;
use kata_rs::sandbox::vmm::{Vmm, VmmSpec};
use kata_rs_protocol::health::health_check_response::ServingStatus;
use kata_rs_protocol::{agent, health};
use kata_rs_tests::*;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

/// How long these tests give a guest to power off: its exit status is what
/// they check.
const POWER_OFF_GRACE: Duration = Duration::from_secs(30);

fn boot_agent(
    vcpus: u8,
    memory_mib: u64,
    dir: &std::path::Path,
) -> (Vmm, kata_rs_protocol::AgentClient) {
    let hv = hypervisor(vcpus, memory_mib);
    let spec = VmmSpec {
        size: Size::configured(&hv),
        fs: Vec::new(),
        nics: Vec::new(),
    };
    let mut sandbox = Vmm::start(&hv, &spec, dir).expect("start the VMM");
    let client = sandbox.wait_for_agent(BOOT_TIMEOUT).expect("agent answers");
    (sandbox, client)
}

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn agent_serves_health_and_version_then_destroy_stops_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sandbox, client) = boot_agent(1, 256, dir.path());
    let uds = sandbox.vsock_uds().to_owned();
    let pid = sandbox.vmm_pid();

    let check = client
        .health
        .check(ctx(), &health::CheckRequest::new())
        .unwrap();
    assert_eq!(check.status.enum_value(), Ok(ServingStatus::SERVING));
    let version = client
        .health
        .version(ctx(), &health::VersionRequest::new())
        .unwrap();
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.protocol_version, kata_rs_protocol::PROTOCOL_VERSION);

    let status = sandbox
        .power_off(&Agent::new(client.clone()), POWER_OFF_GRACE)
        .unwrap();
    assert!(
        status.success(),
        "VMM exit status after DestroySandbox: {status}"
    );
    assert!(
        !uds.exists(),
        "the hybrid vsock socket must be gone after the VMM exits"
    );
    assert!(!process_alive(pid));
}

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn guest_details_report_two_vcpus_and_the_memory_size() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sandbox, client) = boot_agent(2, 512, dir.path());
    let details = client
        .agent
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .unwrap();
    assert_eq!(details.online_cpus, 2);
    let mib = details.mem_total_bytes >> 20;
    // MemTotal excludes what the kernel reserves for itself.
    assert!(
        (400..=512).contains(&mib),
        "MemTotal {mib} MiB for a 512 MiB guest"
    );
    assert!(
        details.kernel_release.starts_with("6.12"),
        "{}",
        details.kernel_release
    );
    assert!(sandbox
        .power_off(&Agent::new(client.clone()), POWER_OFF_GRACE)
        .unwrap()
        .success());
}

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn guest_initiated_vsock_connection_reaches_the_host_listener() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(dir.path().join("vsock.sock_5000")).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream).write_all(b"hello from the host\n").unwrap();
        line
    });
    let mut vmm = VmmProcess::start(
        dir.path(),
        &[
            "--initrd",
            probe_initrd().to_str().unwrap(),
            "--vsock-uds",
            uds.to_str().unwrap(),
            "--cmdline-append",
            "probe.vsock_port=5000",
        ],
    );
    let status = vmm.wait(BOOT_TIMEOUT);
    assert!(status.success(), "{status}: {}", vmm.stderr_text());
    assert_eq!(server.join().unwrap(), "hello from the guest\n");
    let lines = vmm.probe_lines();
    assert!(
        lines.contains(&"vsock ok hello from the host".to_owned()),
        "{lines:?}"
    );
    assert!(!uds.exists());
}

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn read_only_disk_is_readable_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut content = b"KATA-RS-DISK-MARKER".to_vec();
    content.resize(1 << 20, 0);
    std::fs::write(&img, &content).unwrap();
    let mut vmm = VmmProcess::start(
        dir.path(),
        &[
            "--initrd",
            probe_initrd().to_str().unwrap(),
            "--disk",
            &format!("{},ro", img.display()),
            "--cmdline-append",
            "probe.disk=/dev/vda",
        ],
    );
    assert!(vmm.wait(BOOT_TIMEOUT).success(), "{}", vmm.stderr_text());
    let lines = vmm.probe_lines();
    assert!(
        lines.contains(&"disk-read ok KATA-RS-DISK-MARKER".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("disk-write error")),
        "a write to a read-only disk must fail: {lines:?}"
    );
    assert_eq!(
        std::fs::read(&img).unwrap(),
        content,
        "the image must be unchanged"
    );
}

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn read_write_disk_keeps_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let mut vmm = VmmProcess::start(
        dir.path(),
        &[
            "--initrd",
            probe_initrd().to_str().unwrap(),
            "--disk",
            img.to_str().unwrap(),
            "--cmdline-append",
            "probe.disk=/dev/vda",
        ],
    );
    assert!(vmm.wait(BOOT_TIMEOUT).success(), "{}", vmm.stderr_text());
    assert!(
        vmm.probe_lines().contains(&"disk-write ok".to_owned()),
        "{:?}",
        vmm.probe_lines()
    );
    let data = std::fs::read(&img).unwrap();
    assert!(data[..512].iter().all(|b| *b == b'W'));
    assert!(data[512..].iter().all(|b| *b == 0));
}

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn killed_vmm_leaves_nothing_the_next_run_trips_on() {
    let dir = tempfile::tempdir().unwrap();
    let (sandbox, _client) = boot_agent(1, 256, dir.path());
    let uds = sandbox.vsock_uds().to_owned();
    let pid = sandbox.vmm_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(sandbox);
    assert!(!process_alive(pid));
    // SIGKILL leaves the socket file; the next VMM on the same path must
    // replace it and work.
    let (mut sandbox, client) = boot_agent(1, 256, dir.path());
    assert_eq!(sandbox.vsock_uds(), uds);
    assert!(sandbox
        .power_off(&Agent::new(client.clone()), POWER_OFF_GRACE)
        .unwrap()
        .success());
    assert!(!uds.exists());
}

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn sigterm_stops_the_vmm_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (sandbox, client) = boot_agent(1, 256, dir.path());
    let uds = sandbox.vsock_uds().to_owned();
    let pid = sandbox.vmm_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!process_alive(pid), "VMM still running after SIGTERM");
    assert!(!uds.exists(), "the socket must be removed on SIGTERM");
    drop((client, sandbox));
}

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn guest_panic_is_a_failure_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut vmm = VmmProcess::start(
        dir.path(),
        &[
            "--initrd",
            agent_initrd().to_str().unwrap(),
            "--cmdline-append",
            "rdinit=/nonexistent",
        ],
    );
    let status = vmm.wait(BOOT_TIMEOUT);
    assert_eq!(status.code(), Some(1), "console:\n{}", vmm.console_text());
    assert_eq!(
        vmm.stderr_text().trim(),
        "kata-rs-vmm: the guest kernel panicked"
    );
    assert!(vmm.console_text().contains("Kernel panic - not syncing"));
}

/// CPU features a guest kernel turns off by itself, without a word on a
/// quiet console, when CPUID leaf 0xd disagrees with the XCR0 it set.
const XSAVE_FLAGS: [&str; 3] = ["xsave", "avx", "avx2"];

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn elf_and_bzimage_both_boot_with_the_hosts_xsave_features() {
    let host_cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let host_flags = cpu_flags(&host_cpuinfo).expect("a flags line in this host's /proc/cpuinfo");
    let expected: Vec<&str> = XSAVE_FLAGS
        .into_iter()
        .filter(|f| host_flags.contains(f))
        .collect();
    if expected.is_empty() {
        eprintln!("note: this host's CPU has none of {XSAVE_FLAGS:?}; only the boots are checked");
    }
    let bzimage = artefact("KATA_RS_TEST_BZIMAGE");
    for kernel in [kernel(), bzimage] {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        let out = std::process::Command::new(vmm_binary())
            .args([
                "--kernel",
                kernel.to_str().unwrap(),
                "--initrd",
                probe_initrd().to_str().unwrap(),
            ])
            .args(["--console", console.to_str().unwrap()])
            .args([
                "--cmdline-append",
                &format!("probe.cpu_flags=1 {}", extra_kernel_params()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            kernel.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = probe_lines(&std::fs::read_to_string(&console).unwrap());
        assert!(
            lines.contains(&"done".to_owned()),
            "{}: {lines:?}",
            kernel.display()
        );
        let guest_flags: Vec<&str> = lines
            .iter()
            .find_map(|l| l.strip_prefix("cpu-flags "))
            .unwrap_or_else(|| panic!("{}: no cpu-flags line: {lines:?}", kernel.display()))
            .split_whitespace()
            .collect();
        for flag in &expected {
            assert!(
                guest_flags.contains(flag),
                "{}: the host's CPU has {flag}, the guest's lacks it: {guest_flags:?}",
                kernel.display()
            );
        }
    }
}

/// Boots the probe with one virtio-fs share and returns its PROBE lines.
fn boot_probe_with_fs(dir: &std::path::Path, extra: &str) -> (Virtiofsd, Vec<String>) {
    let fsd = Virtiofsd::start(dir);
    let mut vmm = VmmProcess::start(
        dir,
        &[
            "--initrd",
            probe_initrd().to_str().unwrap(),
            "--fs",
            &format!("hostshare={}", fsd.socket.display()),
            "--cmdline-append",
            &format!("probe.fs=hostshare {extra}"),
        ],
    );
    let status = vmm.wait(BOOT_TIMEOUT);
    assert!(
        status.success(),
        "{status}: {}\nconsole:\n{}\nvirtiofsd:\n{}",
        vmm.stderr_text(),
        vmm.console_text(),
        fsd.log_text()
    );
    let lines = vmm.probe_lines();
    (fsd, lines)
}

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn virtio_fs_share_reads_host_files_and_keeps_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (fsd, lines) = boot_probe_with_fs(dir.path(), "");
    assert!(
        lines.contains(&"fs-read ok hello from the host".to_owned()),
        "{lines:?}"
    );
    assert!(lines.contains(&"fs-write ok".to_owned()), "{lines:?}");
    assert_eq!(
        std::fs::read_to_string(fsd.shared.join("from-guest.txt")).unwrap(),
        "written by the guest\n"
    );
}

#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn virtio_fs_works_again_after_the_driver_unbinds_and_binds() {
    let dir = tempfile::tempdir().unwrap();
    let (_fsd, lines) = boot_probe_with_fs(dir.path(), "probe.fs_rebind=1");
    assert!(
        lines.contains(&"fs-rebind ok hello from the host".to_owned()),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("error")), "{lines:?}");
}

/// A busybox container in a VM: the rootfs lies in the virtio-fs share, the
/// agent mounts it, runs the container, relays its stdio over hybrid vsock
/// port 1025, runs an exec in it, and removes it.
#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn agent_runs_a_container_from_the_virtio_fs_share() {
    use kata_rs_protocol::stdio::{StreamHeader, StreamKind};
    use kata_rs_protocol::{hybrid, AgentClient, GUEST_SHARE_DIR, SHARED_FS_TAG};
    use std::io::Read;

    let dir = tempfile::tempdir().unwrap();
    let fsd = Virtiofsd::start(dir.path());
    kata_rs_tests::oci::install_busybox(&fsd.shared.join("rootfs"));
    let uds = dir.path().join("vsock.sock");
    let vmm = VmmProcess::start(
        dir.path(),
        &[
            "--initrd",
            agent_initrd().to_str().unwrap(),
            "--vsock-uds",
            uds.to_str().unwrap(),
            "--fs",
            &format!("{SHARED_FS_TAG}={}", fsd.socket.display()),
        ],
    );
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let client = loop {
        let up = AgentClient::connect_hybrid(
            &uds,
            kata_rs_protocol::AGENT_VSOCK_PORT,
            Duration::from_secs(5),
        )
        .ok()
        .filter(|c| c.health.check(ctx(), &health::CheckRequest::new()).is_ok());
        if let Some(client) = up {
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not answer; console:\n{}",
            vmm.console_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let stream = |exec_id: &str, kind| {
        let mut s = hybrid::connect(
            &uds,
            kata_rs_protocol::STDIO_VSOCK_PORT,
            Duration::from_secs(30),
        )
        .expect("stdio stream");
        s.write_all(
            StreamHeader::new("c1", exec_id, kind)
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        s
    };
    let process = |args: &[&str]| {
        serde_json::json!({
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": args,
            "env": ["PATH=/bin"], "cwd": "/"
        })
    };
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": process(&["sh", "-c", "echo hello from the guest; read line; exit 42"]),
        "root": {"path": format!("{GUEST_SHARE_DIR}/rootfs")},
        "hostname": "c1",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "cgroupsPath": "/c1"
        }
    });
    let mut stdin = stream("", StreamKind::Stdin);
    let mut stdout = stream("", StreamKind::Stdout);
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "c1".into();
    req.spec_json = serde_json::to_vec(&spec).unwrap();
    let created = client.agent.create_container(ctx(), &req);
    assert!(
        created.is_ok(),
        "{created:?}; console:\n{}",
        vmm.console_text()
    );
    let mut c1 = agent::ContainerRequest::new();
    c1.container_id = "c1".into();
    client.agent.start_container(ctx(), &c1).unwrap();
    let mut line = [0u8; 21];
    stdout.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"hello from the guest\n");

    let mut exec_out = stream("e1", StreamKind::Stdout);
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = "c1".into();
    exec.exec_id = "e1".into();
    exec.process_json =
        serde_json::to_vec(&process(&["sh", "-c", "echo exec in $(hostname); exit 7"])).unwrap();
    client.agent.exec_process(ctx(), &exec).unwrap();
    let mut wait = agent::ProcessRequest::new();
    wait.container_id = "c1".into();
    wait.exec_id = "e1".into();
    assert_eq!(
        client.agent.wait_process(ctx(), &wait).unwrap().exit_status,
        7
    );
    let mut text = String::new();
    exec_out.read_to_string(&mut text).unwrap();
    assert_eq!(text, "exec in c1\n");

    stdin.write_all(b"go\n").unwrap();
    wait.exec_id = String::new();
    assert_eq!(
        client.agent.wait_process(ctx(), &wait).unwrap().exit_status,
        42
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    let mut remove = agent::RemoveContainerRequest::new();
    remove.container_id = "c1".into();
    client.agent.remove_container(ctx(), &remove).unwrap();
    assert!(client.agent.state_container(ctx(), &c1).is_err());
    client
        .agent
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .unwrap();
    drop(vmm);
}

/// PF_USER_WORKER (include/linux/sched.h): a kernel worker living in a
/// process, such as KVM's `kvm-nx-lpage-recovery`; it runs no user code.
const PF_USER_WORKER: u64 = 0x4000;

/// Each thread of process `pid` but the kernel's workers: its name and its
/// `Seccomp:` mode.
fn threads_seccomp(pid: u32) -> Vec<(String, String)> {
    let user_worker = |task: &std::path::Path| {
        let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
            .is_some_and(|flags| flags & PF_USER_WORKER != 0)
    };
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|task| !user_worker(&task.path()))
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map_or_else(String::new, |v| v.trim().to_owned())
            };
            (field("Name:"), field("Seccomp:"))
        })
        .collect()
}

/// A 1 MiB disk image in `dir` starting with a marker the probe reads.
fn marked_disk(dir: &std::path::Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    let mut content = b"KATA-RS-DISK-MARKER".to_vec();
    content.resize(1 << 20, 0);
    std::fs::write(&img, &content).unwrap();
    img
}

/// Sends a few broadcast datagrams out of host interface `tap`, given an
/// address and brought up for it: frames the VMM must take off the tap
/// (and, with the guest's card down, hold while it has no buffer).
fn broadcast_into(tap: &str) {
    for args in [
        vec!["addr", "add", "192.0.2.1/24", "dev", tap],
        vec!["link", "set", tap, "up"],
    ] {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    let socket = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
    socket.set_broadcast(true).unwrap();
    for _ in 0..8 {
        socket.send_to(b"to the guest", "192.0.2.255:9").unwrap();
    }
}

/// A VMM with one device of every kind: while the guest waits on its vsock
/// connection and frames arrive on its tap, every thread of the VMM (main,
/// signals, each vCPU, each device's) runs under a seccomp filter
/// (`Seccomp: 2`), and the guest's disk, vsock and virtio-fs work under the
/// enforced filters.
#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn every_vmm_thread_runs_under_its_seccomp_filter() {
    let dir = tempfile::tempdir().unwrap();
    let fsd = Virtiofsd::start(dir.path());
    let img = marked_disk(dir.path());
    let uds = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(dir.path().join("vsock.sock_5000")).unwrap();
    let (pid_tx, pid_rx) = std::sync::mpsc::channel::<u32>();
    let tap = format!("kseccomp{}", std::process::id() % 10000);
    let server_tap = tap.clone();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        // The guest waits for this answer with every device active.
        broadcast_into(&server_tap);
        let threads = threads_seccomp(pid_rx.recv().unwrap());
        (&stream).write_all(b"hello from the host\n").unwrap();
        threads
    });
    let mut vmm = VmmProcess::start(
        dir.path(),
        &[
            "--vcpus",
            "2",
            "--initrd",
            probe_initrd().to_str().unwrap(),
            "--vsock-uds",
            uds.to_str().unwrap(),
            "--disk",
            &format!("{},ro", img.display()),
            "--fs",
            &format!("hostshare={}", fsd.socket.display()),
            "--net",
            &format!("tap={tap},mac=02:00:00:00:5e:01"),
            "--cmdline-append",
            "probe.disk=/dev/vda probe.vsock_port=5000 probe.fs=hostshare",
        ],
    );
    pid_tx.send(vmm.child.id()).unwrap();
    let status = vmm.wait(BOOT_TIMEOUT);
    assert!(
        status.success(),
        "{status}: {}\nconsole:\n{}",
        vmm.stderr_text(),
        vmm.console_text()
    );
    let threads = server.join().unwrap();
    let mut names: Vec<&str> = threads.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "kata-rs-vmm",
            "signals",
            "vcpu0",
            "vcpu1",
            "virtio-blk",
            "virtio-fs",
            "virtio-net",
            "virtio-vsock"
        ]
    );
    for (name, mode) in &threads {
        assert_eq!(mode, "2", "thread {name} is not filtered: {threads:?}");
    }
    let lines = vmm.probe_lines();
    for line in [
        "disk-read ok KATA-RS-DISK-MARKER",
        "vsock ok hello from the host",
        "fs-read ok hello from the host",
        "fs-write ok",
    ] {
        assert!(lines.contains(&line.to_owned()), "no {line:?} in {lines:?}");
    }
}

/// A thread that makes a call outside its filter (on the test's request)
/// kills the VMM with SIGSYS; with `--seccomp log` the same call is only
/// logged and the guest runs to its end.
#[test]
#[ignore = "needs KVM that boots a standard guest: run through tests/run.sh"]
fn a_call_outside_a_threads_filter_kills_the_vmm_unless_filters_only_log() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let img = marked_disk(dir.path());
    let disk = format!("{},ro", img.display());
    let violation = [(kata_rs_vmm::seccomp::TEST_VIOLATION_ENV, "virtio-blk")];
    let boot = |mode: &str| {
        let mut vmm = VmmProcess::start_with_env(
            dir.path(),
            &violation,
            &[
                "--seccomp",
                mode,
                "--initrd",
                probe_initrd().to_str().unwrap(),
                "--disk",
                &disk,
                "--cmdline-append",
                "probe.disk=/dev/vda",
            ],
        );
        let status = vmm.wait(BOOT_TIMEOUT);
        (status, vmm.probe_lines(), vmm.stderr_text())
    };
    let (status, _, stderr) = boot("enforce");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status}: {stderr}");
    let (status, lines, stderr) = boot("log");
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        lines.contains(&"disk-read ok KATA-RS-DISK-MARKER".to_owned()),
        "{lines:?}"
    );
}
