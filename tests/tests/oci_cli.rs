//! `kata-rs` as an OCI runtime, driven the way conmon and containerd drive
//! runc: life cycle and OCI state, exit codes and streams, signals, exec,
//! pause/resume, hooks, bad input, and no leftovers after any of it.
//!
//! Runs with the isolation in $KATA_RS_TEST_ISOLATION (namespace by
//! default; tests/run.sh runs it natively as root).

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use kata_rs_tests::oci::*;
use kata_rs_tests::peers::{tty_sizes, TtySession, STTY_LOOP};
use kata_rs_tests::{cgroup, runs_sealed};
use serde_json::json;

fn id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The stdout of `exec --process FILE` in container `id`, FILE naming
/// only args, cwd, user and env: the rest is the runtime's to fill in.
fn exec_bare_process(rt: &Runtime, bundle: &Bundle, id: &str, args: &[&str]) -> String {
    let process = bundle.path().join("process.json");
    let json = json!({
        "args": args,
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "env": ["PATH=/bin"],
    });
    std::fs::write(&process, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = rt.ok(&["exec", "--process", process.to_str().unwrap(), id]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A failed command: non-zero, and one error line on stderr in runc's
/// form that says `needle`. Returns the line's msg.
fn assert_one_line_error(out: &std::process::Output, needle: &str) -> String {
    assert!(!out.status.success(), "expected a failure: {out:?}");
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{err}");
    let msg = runc_error_msg(lines[0])
        .unwrap_or_else(|| panic!("{:?} is not an error line as runc writes one", lines[0]));
    assert!(
        msg.contains(needle),
        "error {msg:?} does not say {needle:?}"
    );
    msg
}

#[test]
fn create_start_kill_delete_follow_the_oci_life_cycle() {
    let rt = Runtime::new();
    let id = id("life");
    let bundle = Bundle::new(&id, &["sleep", "300"]);
    let pid_file = bundle.path().join("pid");
    let iso = format!("--isolation={}", isolation());
    rt.ok(&[
        "create",
        &iso,
        "--bundle",
        bundle.path().to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    let state = rt.state(&id);
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["bundle"], bundle.path().to_str().unwrap());
    assert!(state["ociVersion"].as_str().unwrap().starts_with("1."));
    let pid: i64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(state["pid"], pid);

    rt.ok(&["start", &id]);
    assert_eq!(rt.status(&id), "running");
    let list = rt.ok(&["list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());

    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    let gone = rt.run(&["state", &id]);
    assert_one_line_error(&gone, "does not exist");
    rt.assert_clean(&id, &bundle);
}

/// A state root that does not exist yet is made, as runc makes its own
/// (on a fresh boot /run/kata-rs is not there).
#[test]
fn a_missing_state_root_is_made() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("state");
    let id = id("fresh-root");
    let bundle = Bundle::new(&id, &["true"]);
    let out = std::process::Command::new(runtime_binary())
        .arg("--root")
        .arg(&root)
        .args(Runtime::run_args(&id, &bundle))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.is_dir());
    let mode = std::os::unix::fs::PermissionsExt::mode(&root.metadata().unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the state root is root's alone");
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "state is left"
    );
}

#[test]
fn run_propagates_the_exit_code_and_keeps_streams_apart() {
    let rt = Runtime::new();
    let id = id("exit");
    let bundle = Bundle::new(&id, &["sh", "-c", "echo out; echo err >&2; exit 42"]);
    let out = rt.run_container(&id, &bundle);
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(stderr(&out), "err\n");
    rt.assert_clean(&id, &bundle);
}

/// A VMM killed by its own seccomp filter (one thread made a call outside
/// it, on the test's request) fails the start with a message that says so,
/// and the runtime cleans up after it as after any failed start.
#[test]
fn a_vmm_its_seccomp_filter_kills_fails_the_start_clearly_and_leaves_nothing() {
    if isolation() != "vm" {
        println!("SKIP: namespace isolation starts no VMM");
        return;
    }
    let rt = Runtime::new();
    let id = id("sigsys");
    let bundle = Bundle::new(&id, &["true"]);
    let child = rt
        .run_command(&id, &bundle)
        .env(kata_rs_vmm::seccomp::TEST_VIOLATION_ENV, "vcpu")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, command_timeout(), "kata-rs run");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("killed by SIGSYS") && err.contains("seccomp filter"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one error line: {err}");
    rt.assert_clean(&id, &bundle);
}

#[test]
fn run_passes_stdin_through() {
    let rt = Runtime::new();
    let id = id("stdin");
    let bundle = Bundle::new(&id, &["sh", "-c", "read line; echo got:$line"]);
    let mut child = rt
        .run_command(&id, &bundle)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = wait_output(child, command_timeout(), "kata-rs run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got:hello\n");
    rt.assert_clean(&id, &bundle);
}

#[test]
fn signals_to_run_reach_the_container() {
    let rt = Runtime::new();
    let id = id("sig");
    let bundle = Bundle::new(
        &id,
        &[
            "sh",
            "-c",
            "trap 'echo term; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
        ],
    );
    let mut child = rt
        .run_command(&id, &bundle)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read on a thread: a container that never says "ready" must fail the
    // test, not hang it.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = std::io::BufReader::new(stdout);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        tx.send(line).unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        rest
    });
    let ready = rx.recv_timeout(command_timeout());
    if ready.is_err() {
        let _ = child.kill();
    }
    assert_eq!(ready.as_deref(), Ok("ready\n"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = wait_output(child, command_timeout(), "kata-rs run");
    assert_eq!(reader.join().unwrap(), "term\n");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    rt.assert_clean(&id, &bundle);
}

#[test]
fn a_container_killed_by_a_signal_reports_128_plus_n() {
    let rt = Runtime::new();
    let id = id("kill9");
    let bundle = Bundle::new(&id, &["sleep", "300"]);
    let child = rt
        .run_command(&id, &bundle)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    rt.wait_status(&id, "running");
    rt.ok(&["kill", &id, "KILL"]);
    let out = wait_output(child, command_timeout(), "kata-rs run");
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    rt.assert_clean(&id, &bundle);
}

#[test]
fn exec_runs_with_env_cwd_and_user() {
    let rt = Runtime::new();
    let id = id("exec");
    let bundle = Bundle::new(&id, &["sleep", "300"]);
    rt.create_ok(&id, &bundle);
    rt.ok(&["start", &id]);
    let out = rt.ok(&[
        "exec",
        "--env",
        "GREETING=hi",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        &id,
        "sh",
        "-c",
        "echo $GREETING; pwd; id -u; id -g",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n/tmp\n1000\n1000\n"
    );
    let failed = rt.run(&["exec", &id, "sh", "-c", "exit 7"]);
    assert_eq!(failed.status.code(), Some(7));

    assert_eq!(
        exec_bare_process(&rt, &bundle, &id, &["sh", "-c", "echo from-process-json"]),
        "from-process-json\n"
    );

    let ps = rt.ok(&["ps", "--format", "json", &id]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(!pids.is_empty());

    rt.ok(&["delete", "--force", &id]);
    rt.assert_clean(&id, &bundle);
}

/// containerd's CRI writes cgroupsPath as "slice:prefix:name" for a pod
/// under a .slice parent, whatever the runtime; runc without
/// --systemd-cgroup (its default) takes that as a cgroupfs path, and so
/// does kata-rs. Choosing the systemd driver where systemd does not run
/// fails at once with one error naming the choice, and leaves nothing.
#[test]
fn a_slice_style_cgroups_path_is_a_cgroupfs_path_unless_systemd_is_chosen() {
    let rt = Runtime::new();
    let id = id("slice");
    let mut bundle = Bundle::new(&id, &["sleep", "300"]);
    let path = format!("kata-rs-test.slice:cri-containerd:{id}");
    bundle.config["linux"]["cgroupsPath"] = path.clone().into();
    bundle.save();
    let cgroups = || -> Vec<std::path::PathBuf> {
        let mut dirs = vec![std::path::Path::new("/sys/fs/cgroup").join(&path)];
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            dirs.push(hierarchy.path().join(&path));
        }
        dirs.into_iter().filter(|d| d.is_dir()).collect()
    };
    rt.create_ok(&id, &bundle);
    rt.ok(&["start", &id]);
    if isolation() == "namespace" {
        let pid = rt.state(&id)["pid"].to_string();
        let found = cgroups();
        assert!(!found.is_empty(), "no cgroup named {path}");
        for dir in &found {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|p| p == pid),
                "the init {pid} is not in {}",
                dir.display()
            );
        }
    }
    rt.ok(&["delete", "--force", &id]);
    assert_eq!(cgroups(), Vec::<std::path::PathBuf>::new(), "cgroups left");
    rt.assert_clean(&id, &bundle);

    if std::path::Path::new("/run/systemd/system").is_dir() {
        println!("systemd runs here: its refusal is not what this host shows");
        return;
    }
    let refused = |global: &[&str], says: &str| {
        let bundle_path = bundle.path().to_str().unwrap();
        let mut args = global.to_vec();
        args.extend(["run", "--bundle", bundle_path, &id]);
        assert_one_line_error(&rt.run(&args), says);
        rt.assert_clean(&id, &bundle);
    };
    refused(
        &["--systemd-cgroup"],
        "--systemd-cgroup chooses the systemd cgroup driver, but systemd is not running",
    );
    let config = bundle.path().join("systemd.toml");
    let base = std::env::var_os("KATA_RS_CONFIG")
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_default();
    let text = if base.contains("[runtime]\n") {
        base.replace("[runtime]\n", "[runtime]\nsystemd_cgroup = true\n")
    } else {
        format!("{base}\n[runtime]\nsystemd_cgroup = true\n")
    };
    std::fs::write(&config, text).unwrap();
    refused(
        &["--config", config.to_str().unwrap()],
        "runtime.systemd_cgroup in the configuration chooses",
    );
}

/// `kata-rs events` reports each OOM kill in the container as an "oom"
/// event, beside its statistics, as runc's does.
/// A memory limit holds every host process of the container: with
/// namespace isolation its own, as runc's; in a VM the monitor, the VMM
/// and virtiofsd, under a limit that holds the whole guest.
#[test]
fn a_memory_limit_holds_every_host_process_of_the_container() {
    let rt = Runtime::new();
    let id = id("bounded");
    let mut bundle = Bundle::new(&id, &["sleep", "300"]);
    bundle.config["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}});
    bundle.save();
    rt.create_ok(&id, &bundle);
    let pid = rt.state(&id)["pid"].as_u64().unwrap() as u32;
    let dir = cgroup::memory_cgroup_of(pid);
    assert_eq!(dir, cgroup::memory_root().join("kata-rs-test").join(&id));
    let limit = cgroup::memory_limit(&dir).expect("a memory limit");
    let members = cgroup::members(&dir);
    let has = |what: &str| members.iter().any(|(_, cmd)| cmd.contains(what));
    if isolation() == "vm" {
        assert!(
            has("kata-rs-vmm") && has("virtiofsd") && has("vm-monitor"),
            "{members:?}"
        );
        rt.ok(&["start", &id]);
        let meminfo = rt.ok(&["exec", &id, "grep", "MemTotal", "/proc/meminfo"]);
        let meminfo = String::from_utf8_lossy(&meminfo.stdout).into_owned();
        let kib: u64 = meminfo.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            (64 << 20..limit).contains(&(kib << 10)),
            "the guest's {kib} kB of RAM do not fit under {limit} and hold the limit"
        );
    } else {
        assert_eq!(limit, 64 << 20);
    }
    rt.ok(&["delete", "--force", &id]);
    assert!(!dir.exists(), "{} is left", dir.display());
    rt.assert_clean(&id, &bundle);
}

#[test]
fn events_report_oom_kills() {
    let rt = Runtime::new();
    let id = id("oom-events");
    let mut bundle = Bundle::new(
        &id,
        &[
            "sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.1; done; \
             dd if=/dev/zero of=/dev/null bs=64M count=1; exec sleep 300",
        ],
    );
    bundle.config["linux"]["resources"] = json!({"memory": {"limit": 16 << 20}});
    bundle.save();
    rt.create_ok(&id, &bundle);
    rt.ok(&["start", &id]);
    let mut events = rt
        .command(&["events", "--interval", "1", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if tx
                .send(event["type"].as_str().unwrap_or("?").to_owned())
                .is_err()
            {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(command_timeout())
            .expect("an event in time")
    };
    assert_eq!(next(), "stats");
    std::fs::write(bundle.rootfs().join("tmp/go"), "").unwrap();
    let mut seen = vec![next()];
    while seen.last().map(String::as_str) == Some("stats") {
        seen.push(next());
    }
    assert_eq!(seen.last().map(String::as_str), Some("oom"), "{seen:?}");
    let _ = events.kill();
    let _ = events.wait();
    rt.ok(&["delete", "--force", &id]);
    rt.assert_clean(&id, &bundle);
}

/// Every rootfsPropagation runc takes runs (containerd sets rshared and
/// rslave for pods with Bidirectional and HostToContainer mounts), and the
/// container's root is a shared mount exactly when it asked for one. In VM
/// isolation the propagation is the guest's; the two containerd uses are
/// tried there.
#[test]
fn every_rootfs_propagation_runc_takes_runs() {
    let rt = Runtime::new();
    let values: &[&str] = if isolation() == "vm" {
        &["rshared", "rslave"]
    } else {
        &[
            "private",
            "rprivate",
            "slave",
            "rslave",
            "shared",
            "rshared",
            "unbindable",
            "runbindable",
        ]
    };
    for value in values {
        let id = id(&format!("propagation-{value}"));
        // The optional fields of the mount at / (after pivot_root, the
        // container's root).
        let root_mount = "while read -r _ _ _ _ at rest; do [ \"$at\" = / ] && echo \"$rest\"; \
                          done </proc/self/mountinfo; true";
        let mut bundle = Bundle::new(&id, &["sh", "-c", root_mount]);
        bundle.config["linux"]["rootfsPropagation"] = (*value).into();
        bundle.save();
        let out = rt.run_container(&id, &bundle);
        assert!(out.status.success(), "{value}: {}", stderr(&out));
        let root = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            root.contains(" shared:"),
            value.ends_with("shared"),
            "{value}: the root mount is {root:?}"
        );
        rt.assert_clean(&id, &bundle);
    }
}

/// The lines of /proc/<pid>/status and /proc/<pid>/limits that say what
/// confines a process, as `sh` in the container prints them. `$0` is a
/// pid, or `self` for that `sh` (not its grep, whose own exec works its
/// capabilities out anew).
const CONFINEMENT: &str = "p=$0; [ $p = self ] && p=$$; \
     grep -E '^(Seccomp|NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/$p/status; \
     grep 'Max open files' /proc/$p/limits; mkdir /tmp/forbidden 2>&1; true";

/// An exec runs under the container's seccomp filter and, where its own
/// process leaves them out, with the container's capabilities, no-new-privs
/// and rlimits, as runc's does: the same confinement as the container's
/// init, whether the process comes from the command line or a file.
#[test]
fn exec_is_confined_as_the_container_is() {
    let rt = Runtime::new();
    let id = id("confined");
    let mut bundle = Bundle::new(&id, &["sleep", "300"]);
    let process = bundle.config["process"].as_object_mut().unwrap();
    // Without no_new_privileges, as containerd and podman write it: the
    // filter then needs CAP_SYS_ADMIN to load, which the process lacks.
    process.remove("noNewPrivileges");
    process["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 777, "soft": 555}]);
    bundle.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    });
    bundle.save();
    rt.create_ok(&id, &bundle);
    rt.ok(&["start", &id]);

    let confinement = |args: &[&str], pid: &str| {
        let mut all = vec!["exec"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[&id, "sh", "-c", CONFINEMENT, pid]);
        String::from_utf8_lossy(&rt.ok(&all).stdout).into_owned()
    };
    let init = confinement(&[], "1");
    assert!(
        init.contains("Seccomp:\t2\n"),
        "the init has no filter:\n{init}"
    );
    assert!(init.contains("NoNewPrivs:\t0\n"), "{init}");
    assert!(
        init.lines().any(|l| l
            .split_whitespace()
            .eq(["Max", "open", "files", "555", "777", "files"])),
        "{init}"
    );
    assert!(init.contains("Operation not permitted"), "{init}");
    assert_eq!(confinement(&[], "self"), init, "exec differs from the init");

    assert_eq!(
        exec_bare_process(&rt, &bundle, &id, &["sh", "-c", CONFINEMENT, "self"]),
        init,
        "an exec from a bare process.json differs from the init"
    );

    let nnp = confinement(&["--no-new-privs"], "self");
    assert_eq!(nnp, init.replace("NoNewPrivs:\t0", "NoNewPrivs:\t1"));

    // Not root: the template's ambient set keeps its capabilities, and
    // mkdir in root's /tmp would be EACCES, not the filter's EPERM.
    assert_eq!(confinement(&["--user", "1000:1000"], "self"), init);

    rt.ok(&["delete", "--force", &id]);
    rt.assert_clean(&id, &bundle);
}

/// An exec runs with the container's LSM label (its AppArmor profile or
/// SELinux process label), as runc's does. It needs an LSM in the kernel
/// the container runs on: the host's, or its guest's.
#[test]
fn exec_takes_the_containers_lsm_label() {
    let rt = Runtime::new();
    let id = id("label");
    let bundle = Bundle::new(&id, &["sleep", "300"]);
    rt.create_ok(&id, &bundle);
    rt.ok(&["start", &id]);
    let label = |pid: &str| rt.run(&["exec", &id, "cat", &format!("/proc/{pid}/attr/current")]);
    let init = label("1");
    let exec = label("self");
    rt.ok(&["delete", "--force", &id]);
    rt.assert_clean(&id, &bundle);
    if !init.status.success() {
        println!(
            "SKIP: the container's kernel has no LSM to label processes with ({})",
            stderr(&init).trim()
        );
        return;
    }
    assert!(exec.status.success(), "{}", stderr(&exec));
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        String::from_utf8_lossy(&init.stdout),
        "the exec's label is not the init's"
    );
}

/// The runtime's own messages never land in a container's stderr, which
/// conmon and containerd keep as the container's log; not even when the
/// container is torn down under it.
#[test]
fn delete_force_ends_a_running_container_and_its_stderr_stays_its_own() {
    let rt = Runtime::new();
    let id = id("force");
    let bundle = Bundle::new(&id, &["sh", "-c", "echo up >&2; exec sleep 300"]);
    let err = tempfile::tempfile().unwrap();
    let iso = format!("--isolation={}", isolation());
    let b = bundle.path().to_str().unwrap();
    let create = rt
        .command(&["create", &iso, "--bundle", b, &id])
        .stdout(Stdio::null())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap();
    let out = wait_output(create, command_timeout(), "kata-rs create");
    let read = || {
        use std::io::{Read, Seek};
        let mut f = err.try_clone().unwrap();
        let mut text = String::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut text).unwrap();
        text
    };
    assert!(out.status.success(), "create: {}", read());
    rt.ok(&["start", &id]);
    let deadline = std::time::Instant::now() + command_timeout();
    while read().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container said nothing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.ok(&["delete", "--force", &id]);
    rt.assert_clean(&id, &bundle);
    assert_eq!(read(), "up\n", "the container's stderr");
}

/// In a shell's terminal, `run` and `exec -t` without --console-socket use
/// kata-rs's own terminal, as runc does (`kata-rs spec` makes a bundle with
/// a terminal): input and output pass, resizes reach the container, the
/// exit code comes back, and the terminal is left as it was found.
#[test]
fn run_and_exec_with_a_terminal_and_no_console_socket_use_our_own() {
    let rt = Runtime::new();
    let id = id("own-tty");
    let script = format!("{STTY_LOOP}; exit 7");
    let mut bundle = Bundle::new(&id, &["sh", "-c", &script]);
    bundle.config["process"]["terminal"] = true.into();
    bundle.save();
    let mut tty = TtySession::start(&mut rt.run_command(&id, &bundle), 24, 80);
    assert_eq!(tty_sizes(&mut tty), Some(7), "{}", tty.output());
    assert!(tty.is_cooked(), "run left the terminal in raw mode");
    rt.assert_clean(&id, &bundle);

    let id = format!("{id}-exec");
    let bundle = Bundle::new(&id, &["sleep", "300"]);
    rt.create_ok(&id, &bundle);
    rt.ok(&["start", &id]);
    let mut exec = rt.command(&["exec", "-t", &id, "sh", "-c", &script]);
    let mut tty = TtySession::start(&mut exec, 24, 80);
    assert_eq!(tty_sizes(&mut tty), Some(7), "{}", tty.output());
    assert!(tty.is_cooked(), "exec left the terminal in raw mode");
    // Detached, nobody would read the terminal: refused, by name.
    let detached = rt.run(&["exec", "-t", "-d", &id, "true"]);
    assert_one_line_error(&detached, "no --console-socket");
    rt.ok(&["delete", "--force", &id]);
    rt.assert_clean(&id, &bundle);
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let rt = Runtime::new();
    let id = id("pause");
    let bundle = Bundle::new(
        &id,
        &[
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done",
        ],
    );
    rt.create_ok(&id, &bundle);
    rt.ok(&["start", &id]);
    let count = || {
        let out = rt.ok(&["exec", &id, "cat", "/tmp/count"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_millis(300));
    rt.ok(&["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    let frozen = std::fs::read_to_string(bundle.rootfs().join("tmp/count")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let still = std::fs::read_to_string(bundle.rootfs().join("tmp/count")).unwrap();
    assert_eq!(frozen, still, "the counter advanced while paused");
    // A signal that does not end the container leaves it paused.
    rt.ok(&["kill", &id, "SIGCONT"]);
    assert_eq!(rt.status(&id), "paused");
    rt.ok(&["resume", &id]);
    assert_eq!(rt.status(&id), "running");
    let before = count();
    let deadline = std::time::Instant::now() + command_timeout();
    while count() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the counter did not advance after resume"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.ok(&["delete", "--force", &id]);
    rt.assert_clean(&id, &bundle);
}

#[test]
fn hooks_run_in_order_and_a_failing_hook_stops_create() {
    let rt = Runtime::new();
    let id = id("hooks");
    let mut bundle = Bundle::new(&id, &["true"]);
    let trace = bundle.path().join("trace");
    let hook = bundle.path().join("hook.sh");
    write_script(
        &hook,
        &format!(
            "read state; echo \"$1 $(echo \"$state\" | grep -o '\"status\":\"[a-z]*\"')\" >> {}",
            trace.display()
        ),
    );
    let entry = |name: &str| json!([{"path": hook.to_str().unwrap(), "args": ["hook.sh", name]}]);
    bundle.config["hooks"] = json!({
        "createRuntime": entry("createRuntime"),
        "poststart": entry("poststart"),
        "poststop": entry("poststop"),
    });
    bundle.save();
    let out = rt.run_container(&id, &bundle);
    assert!(out.status.success(), "{}", stderr(&out));
    let trace_text = std::fs::read_to_string(&trace).unwrap();
    let order: Vec<&str> = trace_text
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        order,
        ["createRuntime", "poststart", "poststop"],
        "{trace_text}"
    );
    assert!(
        trace_text.contains("\"status\":\"creating\""),
        "{trace_text}"
    );
    rt.assert_clean(&id, &bundle);

    let failing = bundle.path().join("fail.sh");
    write_script(&failing, "echo hook-says-no >&2; exit 5");
    bundle.config["hooks"] = json!({"createRuntime": [{"path": failing.to_str().unwrap()}]});
    bundle.save();
    let out = rt.create(&id, &bundle);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("hook"), "{}", stderr(&out));
    rt.assert_clean(&id, &bundle);
}

#[test]
fn bad_input_gets_one_clear_error_and_changes_nothing() {
    let rt = Runtime::new();
    let id = id("bad");
    let mut bundle = Bundle::new(&id, &["sleep", "300"]);
    let b = bundle.path().to_str().unwrap().to_owned();
    let iso = format!("--isolation={}", isolation());

    std::fs::write(bundle.path().join("config.json"), "{ not json").unwrap();
    assert_one_line_error(&rt.create(&id, &bundle), "not a valid OCI config");
    bundle.config["ociVersion"] = "0.1".into();
    bundle.save();
    assert_one_line_error(&rt.create(&id, &bundle), "not supported");
    bundle.config["ociVersion"] = "1.0.2".into();
    bundle.config["root"]["path"] = "missing-rootfs".into();
    bundle.save();
    assert_one_line_error(&rt.create(&id, &bundle), "missing-rootfs");
    bundle.config["root"]["path"] = "rootfs".into();
    bundle.save();
    assert_one_line_error(
        &rt.run(&["create", "--isolation=container", "--bundle", &b, &id]),
        "container",
    );
    assert!(rt.leftovers().is_empty(), "{:?}", rt.leftovers());

    assert_one_line_error(
        &rt.run(&["create", &iso, "--bundle", &b, "a/b"]),
        "invalid container id",
    );
    assert_one_line_error(&rt.run(&["start", &id]), "does not exist");
    assert_one_line_error(&rt.run(&["kill", &id]), "does not exist");
    assert_one_line_error(&rt.run(&["delete", &id]), "does not exist");
    rt.ok(&["delete", "--force", &id]);

    rt.create_ok(&id, &bundle);
    let before = rt.state(&id);
    assert_one_line_error(&rt.create(&id, &bundle), "already exists");
    assert_one_line_error(&rt.run(&["kill", &id, "SIGNOPE"]), "unknown signal");
    rt.ok(&["start", &id]);
    assert_one_line_error(&rt.run(&["start", &id]), "running");
    assert_one_line_error(&rt.run(&["delete", &id]), "--force");
    let after = rt.state(&id);
    assert_eq!(before["pid"], after["pid"]);
    assert_eq!(after["status"], "running");
    rt.ok(&["delete", "--force", &id]);
    rt.assert_clean(&id, &bundle);
}

#[test]
fn a_failed_init_says_why() {
    let rt = Runtime::new();
    let id = id("why");
    let bundle = Bundle::new(&id, &["true"]);
    let proc_dir = bundle.path().join("rootfs/proc");
    let _ = std::fs::remove_dir(&proc_dir);
    std::os::unix::fs::symlink("/tmp", &proc_dir).unwrap();
    let msg = assert_one_line_error(&rt.create(&id, &bundle), "failed to prepare rootfs");
    assert!(
        msg.contains("proc must be mounted on ordinary directory"),
        "{msg:?} does not say why"
    );
    rt.assert_clean(&id, &bundle);
}

#[test]
fn a_capability_the_kernel_refuses_is_named_with_its_errno() {
    if isolation() == "vm" {
        println!("SKIP: the agent holds every capability in the guest: nothing there is refused");
        return;
    }
    let rt = Runtime::new();
    let id = id("caps");
    let mut bundle = Bundle::new(&id, &["true"]);
    for set in ["bounding", "permitted", "effective"] {
        bundle.config["process"]["capabilities"][set] = json!(["CAP_SYS_MODULE"]);
    }
    bundle.save();
    // kata-rs without CAP_SYS_MODULE in its bounding set cannot give it.
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--bounding-set", "-sys_module"])
        .arg(runtime_binary())
        .args(rt.command(&[]).get_args())
        .args(["create", "--isolation=namespace", "--bundle"])
        .arg(bundle.path())
        .arg(&id)
        .stdin(Stdio::null());
    let msg = assert_one_line_error(&cmd.output().unwrap(), "capabilities");
    assert!(msg.contains("EPERM"), "{msg:?} does not name EPERM");
    rt.assert_clean(&id, &bundle);
}

#[test]
fn errors_reach_a_json_log_as_containerd_reads_it() {
    let mut rt = Runtime::new();
    let log = rt.root.path().with_extension("log.json");
    rt.log = Some(log.clone());
    let out = rt.run(&["state", "no-such-container"]);
    assert!(!out.status.success());
    // As runc: with --log, the line goes to the log and stderr gets the
    // bare message.
    assert_eq!(stderr(&out), "container no-such-container does not exist\n");
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert!(
        last["msg"].as_str().unwrap().contains("does not exist"),
        "{text}"
    );
    assert!(last["time"].is_string());
}

#[test]
fn spec_and_features_print_what_callers_parse() {
    let rt = Runtime::new();
    let features = rt.ok(&["features"]);
    let features: serde_json::Value = serde_json::from_slice(&features.stdout).unwrap();
    assert!(features["ociVersionMax"]
        .as_str()
        .unwrap()
        .starts_with("1."));
    assert_eq!(features["linux"]["seccomp"]["enabled"], true);
    let dir = tempfile::tempdir().unwrap();
    rt.ok(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    // runc's template: sh on a terminal, the rootfs at rootfs/.
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (
            &spec["process"]["terminal"],
            &spec["process"]["args"],
            &spec["root"]["path"]
        ),
        (&json!(true), &json!(["sh"]), &json!("rootfs"))
    );
    let again = rt.run(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    assert_one_line_error(&again, "already exists");
}

#[test]
fn concurrent_commands_on_one_container_stay_consistent() {
    let rt = std::sync::Arc::new(Runtime::new());
    let id = id("conc");
    let bundle = Bundle::new(&id, &["sleep", "300"]);
    rt.create_ok(&id, &bundle);
    rt.ok(&["start", &id]);
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let rt = rt.clone();
            let id = id.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let cmd = if i % 2 == 0 { "state" } else { "ps" };
                    rt.ok(&[cmd, &id]);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    rt.assert_clean(&id, &bundle);
}

/// Receives the terminal a runtime sends to the console socket `listener`
/// (runc's protocol: one message, the pty master as SCM_RIGHTS).
fn receive_terminal(listener: &std::os::unix::net::UnixListener) -> std::fs::File {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let (conn, _) = listener
        .accept()
        .expect("a connection to the console socket");
    let mut name = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .expect("a message on the console socket");
    for cmsg in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
            return unsafe { std::fs::File::from_raw_fd(fds[0]) };
        }
    }
    panic!("the console socket message carried no descriptor");
}

/// containerd's shim runs `create` for a terminal with the runtime's output
/// on a pipe that it reads to the end: nothing the container leaves running
/// may hold that pipe, or the shim waits for the container to exit.
#[test]
fn create_with_a_terminal_leaves_the_callers_pipes_and_the_terminal_works() {
    let rt = Runtime::new();
    let id = id("tty");
    let mut bundle = Bundle::new(&id, &["sh", "-c", "echo hello-tty; sleep 300"]);
    bundle.config["process"]["terminal"] = json!(true);
    bundle.save();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let terminal = std::thread::spawn(move || receive_terminal(&listener));
    let iso = format!("--isolation={}", isolation());
    let child = rt
        .command(&[
            "create",
            &iso,
            "--bundle",
            bundle.path().to_str().unwrap(),
            "--console-socket",
            socket.to_str().unwrap(),
            &id,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Reads stdout and stderr to their end, as the shim does.
    let out = wait_output(child, command_timeout(), "kata-rs create with a terminal");
    assert!(out.status.success(), "{}", stderr(&out));
    let mut master = terminal.join().unwrap();
    rt.ok(&["start", &id]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = std::io::Read::read(&mut master, &mut buf) {
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("hello-tty") {
                break;
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
    });
    let seen = rx.recv_timeout(command_timeout()).unwrap_or_default();
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    assert!(
        seen.contains("hello-tty\r\n"),
        "the terminal showed {seen:?}"
    );
    rt.assert_clean(&id, &bundle);
}

#[test]
fn check_boot_brings_a_sandbox_up_and_down_and_leaves_nothing() {
    if isolation() != "vm" {
        println!("SKIP: `check --boot` boots a VM, which this isolation's run does not");
        return;
    }
    let rt = Runtime::new();
    let out = rt.ok(&["check", "--boot", "--timeout", "300"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "the agent answered its health check (SERVING)",
        "boot: agent version",
        "boot: guest has",
        "boot: DestroySandbox:",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    // Its sandbox went whole: processes, host cgroup and directory.
    let left = kata_rs_tests::peers::processes_mentioning("kata-rs-check-");
    assert!(left.is_empty(), "left running: {left:?}");
    let checks_in = |dir: &std::path::Path| -> Vec<_> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("kata-rs-check-"))
            })
            .collect()
    };
    let cgroups = checks_in(&cgroup::memory_root().join("kata-rs"));
    assert!(cgroups.is_empty(), "host cgroups left: {cgroups:?}");
    let dirs = checks_in(&std::env::temp_dir());
    assert!(dirs.is_empty(), "sandbox directories left: {dirs:?}");
}

/// The processes below `pid`, by their parent pids.
fn descendants(pid: i32) -> Vec<i32> {
    let parent_of = |p: i32| -> Option<i32> {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))?
            .trim()
            .parse()
            .ok()
    };
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut found = vec![pid];
    let mut grew = true;
    while grew {
        grew = false;
        for &p in &all {
            if !found.contains(&p) && parent_of(p).is_some_and(|pp| found.contains(&pp)) {
                found.push(p);
                grew = true;
            }
        }
    }
    found.retain(|&p| p != pid);
    found
}

/// CVE-2019-5736: a runtime process inside a container's namespaces (the
/// init between create and start; an exec's process until it execs) must
/// not offer the container the runtime's file through `/proc/<pid>/exe`,
/// which the container could open and, once the runtime is gone, write.
/// Each runs from a sealed in-memory copy of the runtime: the init itself,
/// and the exec's process as a fork of `kata-rs exec`, which is checked
/// while its process runs.
#[test]
fn runtime_processes_in_a_container_run_from_a_sealed_copy() {
    if isolation() == "vm" {
        println!(
            "SKIP: in VM isolation no runtime process enters a container: its processes are \
             the guest agent's, inside the VM"
        );
        return;
    }
    let rt = Runtime::new();
    let id = id("sealed");
    let bundle = Bundle::new(&id, &["sleep", "300"]);
    rt.create_ok(&id, &bundle);
    let init = rt.state(&id)["pid"].as_i64().unwrap() as i32;
    runs_sealed(init).unwrap_or_else(|e| panic!("the created container's init: {e}"));
    rt.ok(&["start", &id]);

    let exec = rt.command(&["exec", &id, "sleep", "30"]).spawn().unwrap();
    let exec_pid = exec.id() as i32;
    let container_mnt = std::fs::read_link(format!("/proc/{init}/ns/mnt")).unwrap();
    let deadline = std::time::Instant::now() + command_timeout();
    let mut running = false;
    while !running && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        running = descendants(exec_pid).iter().any(|p| {
            std::fs::read_link(format!("/proc/{p}/ns/mnt")).is_ok_and(|ns| ns == container_mnt)
        });
    }
    let sealed = runs_sealed(exec_pid);
    rt.ok(&["delete", "--force", &id]);
    let _ = wait_output(exec, command_timeout(), "exec");
    assert!(
        running,
        "the exec's process did not show up in the container"
    );
    sealed.unwrap_or_else(|e| panic!("kata-rs exec: {e}"));
    rt.assert_clean(&id, &bundle);
}

/// CVE-2024-21626: nothing of the runtime's (a cgroup directory, the state
/// directory, a log) reaches a container's processes: the init's and an
/// exec'd process's descriptors are their stdio alone, and each works in
/// the container's directory the spec names.
#[test]
fn no_host_descriptor_or_directory_reaches_a_container_process() {
    let rt = Runtime::new();
    let id = id("fds");
    let report = "ls /proc/$$/fd; readlink /proc/$$/cwd";
    let init = format!("({report}) > /init-report; exec sleep 300");
    let bundle = Bundle::new(&id, &["sh", "-c", &init]);
    std::os::unix::fs::symlink("busybox", bundle.rootfs().join("bin/readlink")).unwrap();
    rt.create_ok(&id, &bundle);
    rt.ok(&["start", &id]);
    let seen = bundle.rootfs().join("init-report");
    let deadline = std::time::Instant::now() + command_timeout();
    while std::fs::read_to_string(&seen).map_or(true, |s| !s.ends_with("/\n"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap_or_default(),
        "0\n1\n2\n/\n",
        "the container's init: its descriptors, then its directory"
    );
    let out = rt.ok(&["exec", "--cwd", "/tmp", &id, "sh", "-c", report]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\n1\n2\n/tmp\n",
        "an exec'd process: its descriptors, then its directory"
    );
    rt.ok(&["delete", "--force", &id]);
    rt.assert_clean(&id, &bundle);
}

/// CVE-2024-21626's other half: a spec whose working directory is a
/// descriptor of the process that sets the container up
/// (`/proc/self/fd/N`) must not start a container there; were that
/// descriptor a host directory, its process would work outside the
/// container's root.
#[test]
fn a_working_directory_through_a_setup_descriptor_is_refused() {
    if isolation() == "vm" {
        println!(
            "SKIP: in VM isolation the process that sets a container up is the guest agent's, \
             inside the VM"
        );
        return;
    }
    let rt = Runtime::new();
    for fd in 3..=9 {
        let id = id(&format!("cwd{fd}"));
        let mut bundle = Bundle::new(&id, &["sh", "-c", "readlink /proc/$$/cwd; true"]);
        std::os::unix::fs::symlink("busybox", bundle.rootfs().join("bin/readlink")).unwrap();
        bundle.config["process"]["cwd"] = format!("/proc/self/fd/{fd}").into();
        bundle.save();
        let out = rt.run_container(&id, &bundle);
        assert!(
            !out.status.success(),
            "a container ran in /proc/self/fd/{fd}, which was {:?}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        let _ = rt.run(&["delete", "--force", &id]);
        rt.assert_clean(&id, &bundle);
    }
}
