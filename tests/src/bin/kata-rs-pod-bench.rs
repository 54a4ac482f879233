//! Pod benchmark through containerd's CRI plugin, the runtime handlers
//! `kata-rs` and `runc` side by side in one containerd, kata-rs's pods in
//! VM isolation and (by the pod annotation io.kata-rs.isolation) in
//! namespace isolation, each against runc's:
//!
//! - pod start: RunPodSandbox, then CreateContainer and StartContainer of
//!   one container, until CRI reports it running (median of --runs);
//! - host memory per running pod: the PSS of its host processes (kata-rs
//!   in a VM: the shim, the VMM and virtiofsd; otherwise the shim, the host
//!   agent if any, and the processes in the pod's cgroups);
//! - pods per minute with --concurrency pods started and removed at once.
//!
//! Run it through tests/bench/pods.sh (KATA_RS_CONFIG names the kata-rs
//! configuration, --shim-dir where containerd-shim-kata-rs-v2 is).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kata_rs_tests::cri::{self, v1::ContainerState, Cri};
use kata_rs_tests::oci::processes_mentioning;
use kata_rs_tests::peers::{Containerd, IMAGE};

/// One column of the table: a runtime handler, and the isolation kata-rs's
/// pods ask for.
struct Column {
    title: &'static str,
    handler: &'static str,
    isolation: Option<&'static str>,
}

/// runc's, the reference, comes last.
const COLUMNS: [Column; 3] = [
    Column {
        title: "kata-rs (VM)",
        handler: "kata-rs",
        isolation: Some("vm"),
    },
    Column {
        title: "kata-rs (namespace)",
        handler: "kata-rs",
        isolation: Some("namespace"),
    },
    Column {
        title: "runc",
        handler: "runc",
        isolation: None,
    },
];

struct Args {
    shim_dir: PathBuf,
    runs: usize,
    concurrency: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        shim_dir: PathBuf::new(),
        runs: 5,
        concurrency: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            // containerd runs elsewhere: it needs the absolute path.
            "--shim-dir" => {
                args.shim_dir =
                    std::fs::canonicalize(&value).with_context(|| format!("--shim-dir {value}"))?
            }
            "--runs" => args.runs = value.parse().context("--runs")?,
            "--concurrency" => args.concurrency = value.parse().context("--concurrency")?,
            other => bail!("unknown option {other}"),
        }
    }
    if !args.shim_dir.join("containerd-shim-kata-rs-v2").exists() {
        bail!("--shim-dir must name the directory of containerd-shim-kata-rs-v2");
    }
    if args.runs == 0 || args.concurrency == 0 {
        bail!("--runs and --concurrency must be at least 1");
    }
    Ok(args)
}

/// A running pod of one sleeping container.
struct Pod {
    id: String,
    container: String,
}

fn start_pod(cri: &Cri, column: &Column, name: &str, logs: &Path) -> Result<Pod> {
    let dir = logs.join(name);
    std::fs::create_dir_all(&dir)?;
    let mut config = cri::pod_config(name, &dir);
    if let Some(isolation) = column.isolation {
        config
            .annotations
            .insert("io.kata-rs.isolation".into(), isolation.into());
    }
    let id = cri
        .run_pod(&config, column.handler)
        .map_err(|e| anyhow::anyhow!("RunPodSandbox {name}: {e}"))?;
    let container = cri
        .create_container(
            &id,
            &cri::container_config("sleeper", IMAGE, &["sleep", "3600"]),
            &config,
        )
        .map_err(|e| anyhow::anyhow!("CreateContainer in {name}: {e}"))?;
    cri.start_container(&container)
        .map_err(|e| anyhow::anyhow!("StartContainer in {name}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while cri
        .container_status(&container)
        .map_or(true, |s| s.state != ContainerState::ContainerRunning as i32)
    {
        if Instant::now() > deadline {
            bail!("the container of {name} did not run");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Pod { id, container })
}

fn remove_pod(cri: &Cri, pod: &Pod) -> Result<()> {
    cri.stop_pod(&pod.id)
        .map_err(|e| anyhow::anyhow!("StopPodSandbox: {e}"))?;
    cri.remove_pod(&pod.id)
        .map_err(|e| anyhow::anyhow!("RemovePodSandbox: {e}"))?;
    Ok(())
}

fn pss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The host processes that stand for `pod`: pid and name.
fn pod_processes(column: &Column, pod: &Pod) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = processes_mentioning(&pod.id)
        .into_iter()
        .filter_map(|p| {
            let (pid, cmd) = p.split_once(':')?;
            Some((pid.to_owned(), cmd.split_whitespace().next()?.to_owned()))
        })
        .collect();
    if column.isolation != Some("vm") {
        // These containers run on the host: the processes in the pod's
        // cgroups (the pause container's and the sleeper's).
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            if cgroup.contains(&pod.id) || cgroup.contains(&pod.container) {
                let pid = e.file_name().to_string_lossy().into_owned();
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                if !found.iter().any(|(p, _)| *p == pid) {
                    found.push((pid, comm.trim().to_owned()));
                }
            }
        }
    }
    found
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let containerd = Containerd::start_with_cri(&args.shim_dir);
    let cri = containerd.cri();
    let logs = tempfile::Builder::new()
        .prefix("kata-rs-pod-bench-")
        .tempdir()?;

    let mut start_ms = Vec::new();
    let mut pss_mib = Vec::new();
    for column in &COLUMNS {
        // One warm-up pod: images unpacked, caches filled.
        let warm = start_pod(
            &cri,
            column,
            &format!("warm-{}", start_ms.len()),
            logs.path(),
        )?;
        remove_pod(&cri, &warm)?;
        let mut times = Vec::new();
        for run in 0..args.runs {
            let name = format!("pod-{}-{run}", start_ms.len());
            let t = Instant::now();
            // A failed start is reported and left out: in the emulated KVM
            // host a guest now and then stalls (tests/emulated-host/README.md).
            let pod = match start_pod(&cri, column, &name, logs.path()) {
                Ok(pod) => pod,
                Err(e) => {
                    println!("failed start, left out: {e:#}");
                    continue;
                }
            };
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if pss_mib.len() < start_ms.len() + 1 {
                let procs = pod_processes(column, &pod);
                let total: u64 = procs.iter().map(|(pid, _)| pss_kib(pid)).sum();
                println!("host PSS of one running pod, {}:", column.title);
                for (pid, name) in &procs {
                    println!(
                        "  {name} (pid {pid}): {:.1} MiB",
                        pss_kib(pid) as f64 / 1024.0
                    );
                }
                pss_mib.push(total as f64 / 1024.0);
            }
            remove_pod(&cri, &pod)?;
        }
        if times.is_empty() {
            bail!("no pod of {} started", column.title);
        }
        println!(
            "{}: {} of {} starts timed",
            column.title,
            times.len(),
            args.runs
        );
        start_ms.push(median(times));
    }

    println!();
    let titles: Vec<&str> = COLUMNS.iter().map(|c| c.title).collect();
    println!(
        "| metric | {} | {} / runc | {} / runc |",
        titles.join(" | "),
        titles[0],
        titles[1]
    );
    println!("|---|---|---|---|---|---|");
    let row = |metric: String, values: &[f64], unit: &str, decimals: usize| {
        let cells: Vec<String> = values
            .iter()
            .map(|v| format!("{v:.decimals$}{unit}"))
            .collect();
        let reference = values[2];
        println!(
            "| {metric} | {} | {:.2}x | {:.2}x |",
            cells.join(" | "),
            values[0] / reference,
            values[1] / reference
        );
    };
    // Printed now: the emulated KVM host may not live through the
    // pods started at once below.
    row(
        format!("pod start to container running (median of {})", args.runs),
        &start_ms,
        " ms",
        0,
    );
    row("host PSS per running pod".into(), &pss_mib, " MiB", 1);
    let mut per_minute = Vec::new();
    for (c, column) in COLUMNS.iter().enumerate() {
        let t = Instant::now();
        let rounds = args.runs.div_ceil(args.concurrency);
        let mut done = 0;
        for round in 0..rounds {
            std::thread::scope(|scope| {
                let threads: Vec<_> = (0..args.concurrency)
                    .map(|i| {
                        let (cri, logs) = (&cri, logs.path());
                        scope.spawn(move || -> Result<()> {
                            let name = format!("par-{c}-{round}-{i}");
                            let pod = start_pod(cri, column, &name, logs)?;
                            remove_pod(cri, &pod)
                        })
                    })
                    .collect();
                for t in threads {
                    match t.join() {
                        Ok(Ok(())) => done += 1,
                        Ok(Err(e)) => println!("failed pod, not counted: {e:#}"),
                        Err(_) => println!("a pod thread panicked"),
                    }
                }
            });
        }
        per_minute.push(done as f64 / t.elapsed().as_secs_f64() * 60.0);
    }

    row(
        format!("pods per minute, {} at once", args.concurrency),
        &per_minute,
        "",
        1,
    );
    containerd.finish();
    Ok(())
}
