//! containerd's `ctr run --runc-binary` (the default io.containerd.runc.v2
//! shim) driving the OCI runtime under test: each behaviour runs with runc
//! first, then with `KATA_RS_TEST_OCI_RUNTIME`, and both must observe the
//! same thing. Without that variable each test prints `SKIP:`. `ctr run`
//! has no options for users, pids limits or hooks: podman.rs covers those.

use std::time::Duration;

use kata_rs_tests::peers::{
    compare, counter, run, run_ok, tty_sizes, wait_until, Containerd, Outcome, Spawned, TtySession,
    COUNTER, IGNORE_TERM, OOM, STTY_LOOP, TIMEOUT, TRAP_TERM,
};

const TOOLS: &[&str] = &["containerd", "ctr", "containerd-shim-runc-v2"];

/// `ctr run --rm OPTS IMAGE ID CMD` in a containerd of its own, to its end.
fn ctr_run(
    runtime: &std::path::Path,
    opts: &[&str],
    cmd: &[&str],
    stdin: Option<&[u8]>,
) -> Outcome {
    let mut containerd = Containerd::start(runtime);
    let (_, mut command) = containerd.run_command(&[&["--rm"], opts].concat(), cmd);
    let out = run(&mut command, stdin);
    containerd.finish();
    out
}

/// `--mount` for a host directory at /data.
fn bind_data(dir: &std::path::Path) -> String {
    format!("type=bind,src={},dst=/data,options=rbind:rw", dir.display())
}

#[test]
fn exit_code_propagates() {
    compare(TOOLS, |rt| {
        let out = ctr_run(rt, &[], &["sh", "-c", "exit 42"], None);
        assert_eq!(out.code, Some(42), "{}: {out:?}", rt.display());
        out.code
    });
}

#[test]
fn stdout_and_stderr_kept_apart() {
    compare(TOOLS, |rt| {
        let out = ctr_run(rt, &[], &["sh", "-c", "echo to-out; echo to-err >&2"], None);
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (Some(0), "to-out\n", "to-err\n"),
            "{}",
            rt.display()
        );
        (out.stdout, out.stderr)
    });
}

#[test]
fn stdin_piped_in() {
    compare(TOOLS, |rt| {
        let input = b"line one\nline two\n";
        // ctr does not pass stdin's end-of-file on to the task, so the
        // container reads a known number of lines instead of to the end.
        let out = ctr_run(rt, &[], &["head", "-n", "2"], Some(input));
        assert_eq!(
            (out.code, out.stdout.as_bytes()),
            (Some(0), &input[..]),
            "{}: {out:?}",
            rt.display()
        );
        out.stdout
    });
}

#[test]
fn terminal_and_resize() {
    compare(TOOLS, |rt| {
        let mut containerd = Containerd::start(rt);
        let (_, mut cmd) = containerd.run_command(&["--rm", "--tty"], &["sh", "-c", STTY_LOOP]);
        let code = tty_sizes(&mut TtySession::start(&mut cmd, 24, 80));
        containerd.finish();
        assert_eq!(code, Some(0), "{}", rt.display());
        code
    });
}

#[test]
fn exec_into_running_container() {
    compare(TOOLS, |rt| {
        let mut containerd = Containerd::start(rt);
        let (id, mut cmd) = containerd.run_command(&["-d"], &["sleep", "1000"]);
        run_ok(&mut cmd);
        let out = run(
            &mut containerd.ctr(&[
                "task",
                "exec",
                "--exec-id",
                "probe",
                &id,
                "sh",
                "-c",
                "echo from-exec; tr '\\0' ' ' </proc/1/cmdline; exit 7",
            ]),
            None,
        );
        containerd.finish();
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(7), "from-exec\nsleep 1000 "),
            "{}: {out:?}",
            rt.display()
        );
        out.stdout
    });
}

#[test]
fn sigterm_handled_by_trap() {
    compare(TOOLS, |rt| {
        let mut containerd = Containerd::start(rt);
        let (id, mut cmd) = containerd.run_command(&["--rm"], &["sh", "-c", TRAP_TERM]);
        let task = Spawned::start(&mut cmd, None);
        task.wait_for_stdout("ready");
        run_ok(&mut containerd.ctr(&["task", "kill", &id]));
        let out = task.wait(TIMEOUT);
        containerd.finish();
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(3), "ready\ngot TERM\n"),
            "{}: {out:?}",
            rt.display()
        );
        out.stdout
    });
}

#[test]
fn sigterm_ignored_then_killed() {
    compare(TOOLS, |rt| {
        let mut containerd = Containerd::start(rt);
        let (id, mut cmd) = containerd.run_command(&["--rm"], &["sh", "-c", IGNORE_TERM]);
        let mut task = Spawned::start(&mut cmd, None);
        task.wait_for_stdout("ready");
        run_ok(&mut containerd.ctr(&["task", "kill", &id]));
        std::thread::sleep(Duration::from_secs(2));
        let survived = task.is_running() && containerd.task_status(&id) == "RUNNING";
        run_ok(&mut containerd.ctr(&["task", "kill", "--signal", "SIGKILL", &id]));
        let out = task.wait(TIMEOUT);
        containerd.finish();
        assert_eq!(
            (survived, out.code),
            (true, Some(137)),
            "{}: {out:?}",
            rt.display()
        );
        (survived, out.code)
    });
}

#[test]
fn pause_and_resume() {
    compare(TOOLS, |rt| {
        let dir = tempfile::tempdir().unwrap();
        let mut containerd = Containerd::start(rt);
        let (id, mut cmd) = containerd.run_command(
            &["-d", "--mount", &bind_data(dir.path())],
            &["sh", "-c", COUNTER],
        );
        run_ok(&mut cmd);
        wait_until(TIMEOUT, "the counter to start", || counter(dir.path()) > 0);
        run_ok(&mut containerd.ctr(&["task", "pause", &id]));
        let status = containerd.task_status(&id);
        let paused_at = counter(dir.path());
        std::thread::sleep(Duration::from_secs(1));
        let frozen = counter(dir.path()) == paused_at;
        run_ok(&mut containerd.ctr(&["task", "resume", &id]));
        wait_until(TIMEOUT, "the counter to move on", || {
            counter(dir.path()) > paused_at
        });
        containerd.finish();
        assert_eq!(
            (status.as_str(), frozen),
            ("PAUSED", true),
            "{}",
            rt.display()
        );
        (status, frozen)
    });
}

#[test]
fn memory_limit_oom_kill() {
    compare(TOOLS, |rt| {
        let limit = (32u64 << 20).to_string();
        let out = ctr_run(rt, &["--memory-limit", &limit], &["sh", "-c", OOM], None);
        // containerd's default spec mounts no cgroupfs: no OOM count inside.
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(137), "dd=137\n"),
            "{}: {out:?}",
            rt.display()
        );
        out.stdout
    });
}

#[test]
fn read_only_rootfs() {
    compare(TOOLS, |rt| {
        let out = ctr_run(
            rt,
            &["--read-only"],
            &[
                "sh",
                "-c",
                "for d in / /etc /tmp /dev/shm; do touch $d/x 2>/dev/null; echo $d=$?; done",
            ],
            None,
        );
        // containerd's default spec has a tmpfs on /dev/shm, none on /tmp.
        let expected = "/=1\n/etc=1\n/tmp=1\n/dev/shm=0\n";
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), expected),
            "{}: {out:?}",
            rt.display()
        );
        out.stdout
    });
}

#[test]
fn host_directory_bind_mounted() {
    compare(TOOLS, |rt| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in"), "from-host\n").unwrap();
        let out = ctr_run(
            rt,
            &["--mount", &bind_data(dir.path())],
            &["sh", "-c", "cat /data/in; echo from-container >/data/out"],
            None,
        );
        let written = std::fs::read_to_string(dir.path().join("out")).unwrap_or_default();
        assert_eq!(
            (out.code, out.stdout.as_str(), written.as_str()),
            (Some(0), "from-host\n", "from-container\n"),
            "{}: {out:?}",
            rt.display()
        );
        (out.stdout, written)
    });
}

#[test]
fn env_and_cwd() {
    compare(TOOLS, |rt| {
        let out = ctr_run(
            rt,
            &["--env", "FOO=bar", "--cwd", "/tmp"],
            &["sh", "-c", "echo $FOO; pwd; id"],
            None,
        );
        let expected = "bar\n/tmp\nuid=0(root) gid=0(root) groups=0(root)\n";
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), expected),
            "{}: {out:?}",
            rt.display()
        );
        out.stdout
    });
}
