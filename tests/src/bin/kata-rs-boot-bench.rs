//! Boot benchmark: kata-rs-vmm side by side with QEMU `-M microvm` booting
//! the same guest kernel, initrd and command line on the same KVM, for 1
//! and 2 vCPUs (or those given with --vcpus). Prints medians and kata-rs/QEMU ratios of:
//!
//! - exec to the first byte on the serial console (the kernel's
//!   earlyprintk: the guest is running);
//! - exec to the agent answering a health check over vsock (kata-rs: the
//!   hybrid Unix socket; QEMU: vhost-vsock and AF_VSOCK);
//! - the VMM's resident memory once the agent answered, without the
//!   mapping of guest RAM.
//!
//! Run it through tests/bench/boot.sh, which builds release artefacts and
//! picks hardware KVM or the emulated KVM host.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kata_rs_protocol::{agent, health, AgentClient, AGENT_VSOCK_PORT};
use kata_rs_vmm::config::DEFAULT_CMDLINE;

const READY_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(10);
/// Added to kata-rs-vmm's default kernel arguments, for both VMMs: an early
/// console, so that "guest running" is visible at once.
const CMDLINE_EXTRA: &str = "earlyprintk=ttyS0 quiet";

struct Args {
    vmm: PathBuf,
    qemu: PathBuf,
    kernel: PathBuf,
    bzimage: PathBuf,
    initrd: PathBuf,
    runs: usize,
    memory_mib: u64,
    /// Kernel arguments added for both VMMs (the environment's needs).
    append: String,
    /// The vCPU counts to measure.
    vcpus: Vec<u8>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        vmm: PathBuf::new(),
        qemu: PathBuf::from("qemu-system-x86_64"),
        kernel: PathBuf::new(),
        bzimage: PathBuf::new(),
        initrd: PathBuf::new(),
        runs: 5,
        memory_mib: 256,
        append: String::new(),
        vcpus: vec![1, 2],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--vmm" => args.vmm = value.into(),
            "--qemu" => args.qemu = value.into(),
            "--kernel" => args.kernel = value.into(),
            "--bzimage" => args.bzimage = value.into(),
            "--initrd" => args.initrd = value.into(),
            "--runs" => args.runs = value.parse().context("--runs")?,
            "--memory-mib" => args.memory_mib = value.parse().context("--memory-mib")?,
            "--append" => args.append = value,
            "--vcpus" => {
                args.vcpus = value
                    .split(',')
                    .map(|n| {
                        n.parse()
                            .context("--vcpus: a comma-separated list of counts")
                    })
                    .collect::<Result<_>>()?
            }
            _ => bail!("unknown option {flag}"),
        }
    }
    for (name, path) in [
        ("--vmm", &args.vmm),
        ("--kernel", &args.kernel),
        ("--bzimage", &args.bzimage),
        ("--initrd", &args.initrd),
    ] {
        if !path.is_file() {
            bail!("{name} {} is not a file", path.display());
        }
    }
    Ok(args)
}

/// A printed metric: its name, how to read it from a sample, its unit.
type Row = (&'static str, fn(&Sample) -> f64, &'static str);

#[derive(Clone, Copy)]
struct Sample {
    first_output: Duration,
    agent_ready: Duration,
    rss_kib: u64,
}

/// Starts `cmd` with stdout piped and reports when its first byte arrives.
fn spawn_watched(cmd: &mut Command) -> Result<(Child, Instant, mpsc::Receiver<Instant>)> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut first = true;
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if first {
                let _ = tx.send(Instant::now());
                first = false;
            }
        }
    });
    Ok((child, start, rx))
}

/// Resident memory of `pid` in KiB, leaving out mappings at least as large
/// as guest RAM (that is guest memory, which both VMMs map whole).
fn rss_without_guest_ram(pid: u32, guest_kib: u64) -> Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut total = 0;
    let mut size = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(v)) => size = v.parse()?,
            (Some("Rss:"), Some(v)) if size < guest_kib => total += v.parse::<u64>()?,
            _ => {}
        }
    }
    Ok(total)
}

fn wait_ready(child: &mut Child, connect: impl Fn() -> Result<AgentClient>) -> Result<AgentClient> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the VMM exited with {status} before the agent answered");
        }
        if let Ok(client) = connect() {
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
            if client
                .health
                .check(ctx, &health::CheckRequest::new())
                .is_ok()
            {
                return Ok(client);
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not answer within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
}

fn finish(mut child: Child, client: &AgentClient) -> Result<()> {
    let ctx = ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
    client
        .agent
        .destroy_sandbox(ctx, &agent::DestroySandboxRequest::new())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the VMM did not exit after DestroySandbox");
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

fn measure(
    mut child: Child,
    start: Instant,
    first: mpsc::Receiver<Instant>,
    guest_kib: u64,
    connect: impl Fn() -> Result<AgentClient>,
) -> Result<Sample> {
    let client = wait_ready(&mut child, connect)?;
    let agent_ready = start.elapsed();
    let rss_kib = rss_without_guest_ram(child.id(), guest_kib)?;
    let first_output = first
        .recv_timeout(Duration::from_secs(1))
        .context("no console output")?
        - start;
    finish(child, &client)?;
    Ok(Sample {
        first_output,
        agent_ready,
        rss_kib,
    })
}

fn kata_rs(args: &Args, kernel: &Path, vcpus: u8, dir: &Path) -> Result<Sample> {
    let uds = dir.join("vsock.sock");
    let (child, start, first) = spawn_watched(
        Command::new(&args.vmm)
            .arg("--kernel")
            .arg(kernel)
            .arg("--initrd")
            .arg(&args.initrd)
            .args(["--cmdline-append", CMDLINE_EXTRA, "--console", "stdout"])
            .args(["--cmdline-append", &args.append])
            .args([
                "--vcpus",
                &vcpus.to_string(),
                "--memory-mib",
                &args.memory_mib.to_string(),
            ])
            .arg("--vsock-uds")
            .arg(&uds),
    )?;
    measure(child, start, first, args.memory_mib << 10, || {
        Ok(AgentClient::connect_hybrid(
            &uds,
            AGENT_VSOCK_PORT,
            Duration::from_secs(5),
        )?)
    })
}

fn qemu(args: &Args, vcpus: u8, cid: u32) -> Result<Sample> {
    let (child, start, first) = spawn_watched(
        Command::new(&args.qemu)
            .args([
                // Without ACPI (our guest kernel has none) microvm announces
                // its virtio-mmio devices on the kernel command line, as we do.
                "-M",
                "microvm,acpi=off",
                "-enable-kvm",
                "-cpu",
                "host",
                "-nodefaults",
                "-no-user-config",
            ])
            .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
            .args([
                "-smp",
                &vcpus.to_string(),
                "-m",
                &format!("{}M", args.memory_mib),
            ])
            .arg("-kernel")
            .arg(&args.bzimage)
            .arg("-initrd")
            .arg(&args.initrd)
            // microvm has no keyboard controller: the guest resets by
            // triple fault instead, which -no-reboot turns into an exit.
            .args([
                "-append",
                &format!("{DEFAULT_CMDLINE} {CMDLINE_EXTRA} {} reboot=t", args.append),
            ])
            .args(["-device", &format!("vhost-vsock-device,guest-cid={cid}")]),
    )?;
    measure(child, start, first, args.memory_mib << 10, || {
        let fd = kata_rs_protocol::vsock::connect(cid, AGENT_VSOCK_PORT)?;
        Ok(AgentClient::from_fd(fd)?)
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    println!(
        "boot benchmark: kata-rs-vmm vs QEMU -M microvm, same kernel/initrd/cmdline, {} MiB, median of {} runs",
        args.memory_mib, args.runs
    );
    println!("kata-rs boots the ELF vmlinux (its default) and the bzImage QEMU boots; ratios are against QEMU");
    println!(
        "{:<6} {:<30} {:>14} {:>14} {:>14} {:>9} {:>9}",
        "vCPUs", "metric", "kata-rs elf", "kata-rs bzImg", "qemu-microvm", "elf/qemu", "bz/qemu"
    );
    let mut cid = 3;
    for &vcpus in &args.vcpus {
        let (mut elf, mut bz, mut qemu_runs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let dir = tempfile::tempdir()?;
            elf.push(
                kata_rs(&args, &args.kernel, vcpus, dir.path())
                    .context("kata-rs-vmm run (vmlinux)")?,
            );
            bz.push(
                kata_rs(&args, &args.bzimage, vcpus, dir.path())
                    .context("kata-rs-vmm run (bzImage)")?,
            );
            qemu_runs.push(qemu(&args, vcpus, cid).context("QEMU run")?);
            cid += 1;
        }
        let rows: [Row; 3] = [
            (
                "exec -> first console byte",
                |s| s.first_output.as_secs_f64() * 1000.0,
                "ms",
            ),
            (
                "exec -> agent Check answered",
                |s| s.agent_ready.as_secs_f64() * 1000.0,
                "ms",
            ),
            (
                "VMM RSS without guest RAM",
                |s| s.rss_kib as f64 / 1024.0,
                "MiB",
            ),
        ];
        for (name, get, unit) in rows {
            let [e, b, q] =
                [&elf, &bz, &qemu_runs].map(|runs| median(runs.iter().map(get).collect()));
            println!(
                "{vcpus:<6} {name:<30} {e:>10.1} {unit:<3} {b:>10.1} {unit:<3} {q:>10.1} {unit:<3} {:>9.2} {:>9.2}",
                e / q,
                b / q
            );
        }
    }
    Ok(())
}
