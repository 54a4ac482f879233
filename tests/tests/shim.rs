//! `containerd-shim-kata-rs-v2` under a real containerd, driven by
//! `ctr run --runtime io.containerd.kata-rs.v2`: each container in a
//! microVM, its life cycle, streams, exec, signals, pause and terminal,
//! and nothing left of the VM, virtiofsd or the pod directory afterwards.
//!
//! The shim serves VM mode: these tests run where tests/run.sh runs VM
//! tests (KATA_RS_TEST_ISOLATION=vm, with KATA_RS_CONFIG naming this
//! build's kernel, initrd and VMM); elsewhere each prints `SKIP:`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_rs_tests::oci::{isolation, runtime_binary};
use kata_rs_tests::peers::{
    run, run_ok, tty_sizes, wait_until, Containerd, Spawned, TtySession, STTY_LOOP, TIMEOUT,
    TRAP_TERM,
};

/// A containerd whose `ctr run` uses the shim built next to `kata-rs`, or
/// why these tests cannot run here.
fn containerd() -> Option<Containerd> {
    if isolation() != "vm" {
        println!("SKIP: the shim runs containers in microVMs: needs KATA_RS_TEST_ISOLATION=vm (tests/run.sh sets it where KVM boots the guest)");
        return None;
    }
    let shim_dir = runtime_binary().parent().map(Path::to_path_buf)?;
    assert!(
        shim_dir.join("containerd-shim-kata-rs-v2").exists(),
        "containerd-shim-kata-rs-v2 is not built in {}",
        shim_dir.display()
    );
    Some(Containerd::start_with_shim(&shim_dir))
}

/// The pod directory the shim keeps for `id` while it runs.
fn pod_dir(id: &str) -> PathBuf {
    Path::new("/run/kata-rs/pods").join(id)
}

#[test]
fn run_gives_the_exit_code_and_keeps_streams_apart() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let (id, mut cmd) = containerd.run_command(
        &["--rm"],
        &["sh", "-c", "echo to-out; echo to-err >&2; exit 42"],
    );
    let out = run(&mut cmd, None);
    containerd.finish();
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(42), "to-out\n", "to-err\n"),
        "{out:?}"
    );
    assert!(!pod_dir(&id).exists(), "the pod directory is left");
}

#[test]
fn exec_signals_and_delete() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let (id, mut cmd) = containerd.run_command(&["--rm"], &["sh", "-c", TRAP_TERM]);
    let task = Spawned::start(&mut cmd, None);
    task.wait_for_stdout("ready");
    assert_eq!(containerd.task_status(&id), "RUNNING");
    let exec = run(
        &mut containerd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "probe",
            &id,
            "sh",
            "-c",
            "echo from-exec; exit 7",
        ]),
        None,
    );
    assert_eq!(
        (exec.code, exec.stdout.as_str()),
        (Some(7), "from-exec\n"),
        "{exec:?}"
    );
    run_ok(&mut containerd.ctr(&["task", "kill", &id]));
    let out = task.wait(TIMEOUT);
    containerd.finish();
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(3), "ready\ngot TERM\n"),
        "{out:?}"
    );
    assert!(!pod_dir(&id).exists(), "the pod directory is left");
}

#[test]
fn pause_resume_ps_and_metrics() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let (id, mut cmd) = containerd.run_command(&["-d"], &["sleep", "1000"]);
    run_ok(&mut cmd);
    run_ok(&mut containerd.ctr(&["task", "pause", &id]));
    let paused = containerd.task_status(&id);
    run_ok(&mut containerd.ctr(&["task", "resume", &id]));
    let resumed = containerd.task_status(&id);
    let pids = run_ok(&mut containerd.ctr(&["task", "ps", &id]));
    let metrics = run_ok(&mut containerd.ctr(&["task", "metrics", &id]));
    run_ok(&mut containerd.ctr(&["task", "kill", "--signal", "SIGKILL", &id]));
    wait_until(TIMEOUT, "the task to stop", || {
        containerd.task_status(&id) == "STOPPED"
    });
    containerd.finish();
    assert_eq!((paused.as_str(), resumed.as_str()), ("PAUSED", "RUNNING"));
    // The guest's pids: sleep is the container's init, pid 1 inside.
    assert!(pids.lines().count() >= 2, "ctr task ps: {pids}");
    // The guest cgroup's figures, as cgroup v2 metrics.
    assert!(
        metrics.contains("pids.current") && metrics.contains("memory.usage"),
        "ctr task metrics: {metrics}"
    );
}

#[test]
fn terminal_and_resize() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let (id, mut cmd) = containerd.run_command(&["--rm", "--tty"], &["sh", "-c", STTY_LOOP]);
    let code = tty_sizes(&mut TtySession::start(&mut cmd, 24, 80));
    containerd.finish();
    assert_eq!(code, Some(0));
    assert!(!pod_dir(&id).exists(), "the pod directory is left");
}

#[test]
fn a_failed_create_leaves_nothing() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let (id, mut cmd) = containerd.run_command(&["--rm"], &["/no/such/program"]);
    let out = run(&mut cmd, None);
    std::thread::sleep(Duration::from_millis(200));
    containerd.finish();
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("/no/such/program"),
        "the error does not name the program: {out:?}"
    );
    assert!(!pod_dir(&id).exists(), "the pod directory is left");
}
