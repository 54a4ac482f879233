//! `containerd-shim-kata-rs-v2` under a real containerd, driven by
//! `ctr run --runtime io.containerd.kata-rs.v2`: each container in a
//! microVM, its life cycle, streams, exec, signals, pause and terminal,
//! and nothing left of the VM, virtiofsd or the pod directory afterwards.
//!
//! The shim serves VM mode: these tests run where tests/run.sh runs VM
//! tests (KATA_RS_TEST_ISOLATION=vm, with KATA_RS_CONFIG naming this
//! build's kernel, initrd and VMM); elsewhere each prints `SKIP:`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use kata_rs_tests::oci::{isolation, processes_mentioning, runtime_binary, write_script, Bundle};
use kata_rs_tests::peers::{
    run, run_ok, tty_sizes, wait_until, Containerd, Spawned, TtySession, STTY_LOOP, TIMEOUT,
    TRAP_TERM,
};
use kata_rs_tests::pod::{
    assert_no_container_left, assert_pod_dir_private, kill_the_one, pod_backend, pod_dir,
    pod_processes,
};

/// A containerd whose `ctr run` uses the shim built next to `kata-rs`, or
/// why these tests cannot run here.
fn containerd() -> Option<Containerd> {
    let shim_dir = runtime_binary().parent().map(Path::to_path_buf)?;
    assert!(
        shim_dir.join("containerd-shim-kata-rs-v2").exists(),
        "containerd-shim-kata-rs-v2 is not built in {}",
        shim_dir.display()
    );
    Some(Containerd::start_with_shim(&shim_dir))
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

/// A kill of a task that already finished is "not found", as runc's shim
/// answers: containerd takes that for "already gone" (and goes on stopping
/// a pod), where any other error fails StopPodSandbox.
#[test]
fn killing_a_finished_task_is_not_found() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let (id, mut cmd) = containerd.run_command(&["-d"], &["sh", "-c", "exit 3"]);
    run_ok(&mut cmd);
    wait_until(TIMEOUT, "the task to stop", || {
        containerd.task_status(&id) == "STOPPED"
    });
    for args in [&["task", "kill", &id][..], &["task", "kill", "--all", &id]] {
        let kill = run(&mut containerd.ctr(args), None);
        assert!(
            kill.code != Some(0)
                && kill.stderr.contains("already finished")
                && kill.stderr.contains("not found"),
            "ctr {args:?}: {kill:?}"
        );
    }
    let delete = run(&mut containerd.ctr(&["task", "delete", &id]), None);
    assert!(
        delete.code == Some(0) && delete.stderr.contains("exit code 3"),
        "{delete:?}"
    );
    containerd.finish();
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

/// `ctr run` options that put a container into pod `pod`, as containerd's
/// CRI plugin annotates it.
fn in_pod(pod: &str) -> String {
    format!("--annotation=io.kubernetes.cri.sandbox-id={pod}")
}

/// The guest's boot id as a container of `id` reads it.
fn boot_id(containerd: &Containerd, id: &str) -> String {
    run_ok(&mut containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "boot-id",
        id,
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]))
}

/// Two running containers (`sleep`) of one pod: the sandbox container,
/// which names its own pod as CRI's does, and a second one.
fn pod_of_two(containerd: &mut Containerd) -> (String, String) {
    let pod = containerd.id();
    run_ok(&mut containerd.run_command_as(&pod, &["-d", &in_pod(&pod)], &["sleep", "1000"]));
    let (second, mut cmd) = containerd.run_command(&["-d", &in_pod(&pod)], &["sleep", "1000"]);
    run_ok(&mut cmd);
    (pod, second)
}

#[test]
fn containers_of_one_pod_share_one_vm_or_host_agent() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let (pod, second) = pod_of_two(&mut containerd);
    let ids = (boot_id(&containerd, &pod), boot_id(&containerd, &second));
    assert_pod_dir_private(&pod);
    let backend = pod_backend(&pod, isolation() == "vm");
    // The host agent starts the pod's containers in their namespaces: it
    // runs from a sealed copy of itself (CVE-2019-5736), as `kata-rs`
    // does for its own.
    let sealed: Vec<_> = backend
        .iter()
        .filter(|_| isolation() == "namespace")
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .map(kata_rs_tests::runs_sealed)
        .collect();
    let listed = run_ok(&mut containerd.ctr(&["task", "ls"]));
    containerd.finish();
    assert_eq!(ids.0, ids.1, "the two containers run in different guests");
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(
        ids.0 == host,
        isolation() == "namespace",
        "on the host's kernel"
    );
    assert_eq!(backend.len(), 1, "one VMM or host agent for the pod");
    for result in sealed {
        result.unwrap_or_else(|e| panic!("the pod's host agent: {e}"));
    }
    assert!(listed.contains(&second), "ctr task ls: {listed}");
    assert!(!pod_dir(&pod).exists(), "the pod directory is left");
    assert_eq!(pod_processes(&pod), Vec::<String>::new());
    assert_no_container_left(&[&pod, &second]);
}

#[test]
fn a_killed_vmm_or_host_agent_ends_every_container_of_its_pod() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let (pod, second) = pod_of_two(&mut containerd);
    kill_the_one(
        &pod_backend(&pod, isolation() == "vm"),
        "VMM or host agent for the pod",
    );
    wait_until(TIMEOUT, "both tasks to stop", || {
        containerd.task_status(&pod) == "STOPPED" && containerd.task_status(&second) == "STOPPED"
    });
    // Stopped means gone, not only reported so (the shim's own command
    // line names the pod, so only the second container is looked for).
    assert_no_container_left(&[&second]);
    containerd.finish();
    assert!(!pod_dir(&pod).exists(), "the pod directory is left");
    assert_eq!(
        pod_processes(&pod),
        Vec::<String>::new(),
        "virtiofsd, the VMM or the host agent left"
    );
    assert_no_container_left(&[&pod, &second]);
}

#[test]
fn the_configuration_comes_from_the_runtime_options() {
    if isolation() != "vm" {
        println!("SKIP: vCPUs are a VM's setting; namespace isolation has none to choose");
        return;
    }
    let Some(mut containerd) = containerd() else {
        return;
    };
    // This build's configuration with two vCPUs instead of one.
    let base =
        std::env::var("KATA_RS_CONFIG").expect("KATA_RS_CONFIG names this build's configuration");
    let text = std::fs::read_to_string(&base).unwrap();
    assert!(!text.contains("vcpus"), "{base} sets vcpus already");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("two-vcpus.toml");
    std::fs::write(
        &config,
        text.replace("[hypervisor]\n", "[hypervisor]\nvcpus = 2\n"),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let (_, mut cmd) =
        containerd.run_command(&["--rm", "--runtime-config-path", &config], &["nproc"]);
    let out = run(&mut cmd, None);
    containerd.finish();
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "2\n"), "{out:?}");
}

#[test]
fn a_pods_later_containers_take_the_isolation_its_first_asked_for() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    // The configured default is vm; the pod's first container asks for
    // namespace isolation, the second asks for nothing.
    let base =
        std::env::var("KATA_RS_CONFIG").expect("KATA_RS_CONFIG names this build's configuration");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm-default.toml");
    let text = std::fs::read_to_string(&base).unwrap();
    std::fs::write(
        &config,
        text.replace("isolation = \"namespace\"", "isolation = \"vm\""),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let pod = containerd.id();
    let first = [
        "-d",
        "--runtime-config-path",
        &config,
        "--annotation",
        "io.kata-rs.isolation=namespace",
    ];
    let in_this_pod = in_pod(&pod);
    let mut opts = first.to_vec();
    opts.push(&in_this_pod);
    run_ok(&mut containerd.run_command_as(&pod, &opts, &["sleep", "1000"]));
    let (second, mut cmd) = containerd.run_command(
        &["-d", "--runtime-config-path", &config, &in_this_pod],
        &["sleep", "1000"],
    );
    run_ok(&mut cmd);
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let ids = [boot_id(&containerd, &pod), boot_id(&containerd, &second)];
    let agents = pod_backend(&pod, false).len();
    containerd.finish();
    assert_eq!(ids, [host.clone(), host], "not on the host's kernel");
    assert_eq!(agents, 1, "one host agent for the pod");
    assert_no_container_left(&[&pod, &second]);
}

#[test]
fn a_killed_shim_leaves_nothing_once_containerd_cleans_up() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let pod = containerd.id();
    run_ok(&mut containerd.run_command_as(&pod, &["-d", &in_pod(&pod)], &["sleep", "1000"]));
    let shims: Vec<String> = processes_mentioning(&format!("-id {pod} "))
        .into_iter()
        .filter(|p| p.contains("containerd-shim-kata-rs-v2"))
        .collect();
    kill_the_one(&shims, "shim for the pod");
    // containerd sees its shim gone, runs `shim delete` in the bundle, and
    // reports the task stopped.
    wait_until(TIMEOUT, "containerd to clean up after the shim", || {
        !pod_dir(&pod).exists() && pod_processes(&pod).is_empty()
    });
    containerd.finish();
    assert_no_container_left(&[&pod]);
}

/// A bundle for `ctr run --config` (the spec whole, with its root on the
/// host) whose hooks each append "KIND STATE" to the bundle's `trace`.
fn bundle_with_hooks(id: &str, args: &[&str], kinds: &[&str]) -> Bundle {
    let mut bundle = Bundle::new(id, args);
    let hook = bundle.path().join("hook.sh");
    let trace = bundle.path().join("trace");
    write_script(&hook, &format!("echo \"$1 $(cat)\" >> {}", trace.display()));
    let hooks: serde_json::Map<String, Value> = kinds
        .iter()
        .map(|kind| {
            let entry = json!([{"path": hook.to_str().unwrap(), "args": ["hook.sh", kind]}]);
            ((*kind).to_owned(), entry)
        })
        .collect();
    bundle.config["hooks"] = hooks.into();
    bundle.config["root"]["path"] = bundle.rootfs().to_string_lossy().into_owned().into();
    bundle.save();
    bundle
}

/// What the hooks of [`bundle_with_hooks`] saw: kind, status and pid.
fn hook_trace(bundle: &Bundle) -> Vec<(String, String, i64)> {
    std::fs::read_to_string(bundle.path().join("trace"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (kind, state) = line.split_once(' ').unwrap();
            let state: Value = serde_json::from_str(state).unwrap();
            let status = state["status"].as_str().unwrap_or_default().to_owned();
            (kind.to_owned(), status, state["pid"].as_i64().unwrap_or(0))
        })
        .collect()
}

#[test]
fn the_bundles_hooks_run_on_the_host_in_order() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let id = containerd.id();
    // Where the container's namespaces are the host's, the host agent's
    // engine runs createContainer too (in the container's mount namespace,
    // before pivot_root, so the trace is still in reach); a VM's guest
    // would have to, and refuses it (below).
    let mut kinds = vec!["prestart", "createRuntime", "poststart", "poststop"];
    if isolation() == "namespace" {
        kinds.insert(2, "createContainer");
    }
    let bundle = bundle_with_hooks(&id, &["sleep", "1000"], &kinds);
    let config = bundle.path().join("config.json");
    let mut cmd = containerd.ctr(&["run", "--runtime", "io.containerd.kata-rs.v2", "-d"]);
    run_ok(cmd.arg("--config").arg(&config).arg(&id));
    let pid: i64 = containerd.task_pid(&id).parse().unwrap();
    let before_stop = hook_trace(&bundle);
    containerd.finish();
    let trace = hook_trace(&bundle);
    assert_eq!(before_stop.len(), kinds.len() - 1, "{before_stop:?}");
    let ran: Vec<&str> = trace.iter().map(|(kind, ..)| kind.as_str()).collect();
    assert_eq!(ran, kinds, "{trace:?}");
    let statuses: Vec<&str> = trace.iter().map(|(_, s, _)| s.as_str()).collect();
    let mut want = vec!["creating"; kinds.len() - 2];
    want.extend(["running", "stopped"]);
    assert_eq!(statuses, want, "{trace:?}");
    // The pid containerd has for the task: the VMM's, or the container's
    // init on the host. (libcontainer gives createContainer hooks no pid.)
    assert!(
        trace[..kinds.len() - 1]
            .iter()
            .filter(|(kind, ..)| kind != "createContainer")
            .all(|(_, _, p)| *p == pid),
        "the task's pid is {pid}: {trace:?}"
    );
    assert!(!pod_dir(&id).exists(), "the pod directory is left");
}

#[test]
fn a_failing_or_guest_side_hook_stops_create_and_leaves_nothing() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let mut cases = vec![("failing prestart", "prestart", "hook")];
    if isolation() == "vm" {
        cases.push(("startContainer in a VM", "startContainer", "inside the VM"));
    }
    for (case, kind, says) in cases {
        let id = containerd.id();
        let mut bundle = bundle_with_hooks(&id, &["true"], &[]);
        let failing = bundle.path().join("fail.sh");
        write_script(&failing, "echo hook-says-no >&2; exit 5");
        bundle.config["hooks"] = json!({kind: [{"path": failing.to_str().unwrap()}]});
        bundle.save();
        let config = bundle.path().join("config.json");
        let mut cmd = containerd.ctr(&["run", "--runtime", "io.containerd.kata-rs.v2", "--rm"]);
        let out = run(cmd.arg("--config").arg(&config).arg(&id), None);
        assert_ne!(out.code, Some(0), "{case}: {out:?}");
        assert!(out.stderr.contains(says), "{case}: {out:?}");
        assert!(!pod_dir(&id).exists(), "{case}: the pod directory is left");
        assert_eq!(pod_processes(&id), Vec::<String>::new(), "{case}");
    }
    containerd.finish();
}

#[test]
fn failing_poststart_and_poststop_hooks_are_logged_and_the_container_goes_on() {
    let Some(mut containerd) = containerd() else {
        return;
    };
    let id = containerd.id();
    let mut bundle = bundle_with_hooks(&id, &["sh", "-c", "echo still-here"], &[]);
    let failing = bundle.path().join("fail.sh");
    write_script(&failing, "echo hook-says-no >&2; exit 5");
    let entry = json!([{"path": failing.to_str().unwrap()}]);
    bundle.config["hooks"] = json!({"poststart": entry, "poststop": entry});
    bundle.save();
    let config = bundle.path().join("config.json");
    let mut cmd = containerd.ctr(&["run", "--runtime", "io.containerd.kata-rs.v2", "--rm"]);
    let out = run(cmd.arg("--config").arg(&config).arg(&id), None);
    containerd.finish();
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "still-here\n"),
        "{out:?}"
    );
    assert!(!pod_dir(&id).exists(), "the pod directory is left");
    assert_eq!(pod_processes(&id), Vec::<String>::new());
    assert_no_container_left(&[&id]);
}
