//! `kata-rs`: the runtime's command line (runc-compatible OCI commands and
//! `check`).

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser as _;
use kata_rs::check;
use kata_rs::config::Config;
use kata_rs::log::{self, LogFormat};
use kata_rs::oci;
use kata_rs::oci::cli::{Cli, Command};
use kata_rs::sandbox::size::Size;
use kata_rs::sandbox::{Network, Plan, Sandbox, POWER_OFF_GRACE};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line, as for every other error: the callers of an OCI
            // runtime show its stderr or log as the reason.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            report(None, LogFormat::Text, first.trim_start_matches("error: "));
            std::process::exit(2);
        }
    };
    let global = cli.global.clone();
    // The monitor's stderr may be the container's: its errors go to its
    // log and to create through the control socket.
    let monitor = matches!(cli.command, Command::VmMonitor { .. });
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            if monitor {
                tracing::error!("{msg}");
            } else {
                report(global.log.as_deref(), global.log_format, &msg);
            }
            1
        }
    };
    std::process::exit(code);
}

/// Says why a command failed as runc does: one error line in the log's
/// format on stderr, or, with --log, the line in the log (containerd and
/// conmon read the last error line's msg) and the bare message on stderr.
fn report(log_file: Option<&Path>, format: LogFormat, msg: &str) {
    match log_file {
        Some(_) => {
            tracing::error!("{msg}");
            eprintln!("{msg}");
        }
        None => eprintln!("{}", log::line(format, "error", msg, &[])),
    }
}

fn run(cli: Cli) -> Result<i32> {
    let (config, config_path) = Config::load(cli.global.config.as_deref())?;
    // libcontainer and libcgroups log what they skip (absent cgroup
    // controllers) and each failure as they see it; a container's stderr is
    // the runtime's, and callers take the runtime's output as the reason of
    // a failure (podman even classifies it by words like "not found"), so
    // they speak only when debugging: the engine's error says it all.
    let level = if cli.global.debug {
        "debug".to_owned()
    } else {
        let configured = cli
            .global
            .log_level
            .as_deref()
            .unwrap_or(&config.runtime.log_level);
        // Without --log, stderr is often the container's too (run, exec):
        // only warnings and errors may go there.
        let ours = if cli.global.log.is_none() && cli.global.log_level.is_none() {
            "warn"
        } else {
            configured
        };
        format!("{ours},libcontainer=off,libcgroups=off")
    };
    log::init(cli.global.log.as_deref(), cli.global.log_format, &level).context("open the log")?;
    if let Command::Check { boot, timeout } = cli.command {
        let report = check::inspect(&config, Path::new("/"));
        print!("{}", report.render(config_path.as_deref()));
        if boot {
            boot_check(&config, Duration::from_secs(timeout))?;
        }
        return Ok(0);
    }
    oci::dispatch(cli, &config)
}

/// Boots one sandbox as a container's would be (its host cgroup, virtiofsd,
/// the VMM with the configured kernel and initrd) and talks to its agent:
/// the end-to-end proof that VM mode works here.
fn boot_check(config: &Config, timeout: Duration) -> Result<()> {
    let id = format!("kata-rs-check-{}", std::process::id());
    let plan = Plan {
        id: id.clone(),
        dir: std::env::temp_dir().join(&id),
        cgroups_path: format!("/kata-rs/{id}"),
        systemd: kata_rs::cgroup_driver::systemd(false, config)?,
        size: Size::configured(&config.hypervisor),
        limit_memory: false,
        network: Network::None,
    };
    let result = boot_check_in(config, timeout, &plan);
    let _ = std::fs::remove_dir_all(&plan.dir);
    result
}

fn boot_check_in(config: &Config, timeout: Duration, plan: &Plan) -> Result<()> {
    let started = Instant::now();
    let sandbox = Sandbox::boot_within(config, plan, timeout)?;
    println!(
        "boot: kata-rs-vmm (pid {}) with {} vCPU(s), {} MiB; the agent answered its health \
         check (SERVING) after {:.2} s",
        sandbox.vmm_pid(),
        plan.size.vcpus,
        plan.size.memory_mib,
        started.elapsed().as_secs_f64()
    );
    let client = sandbox.agent().client();
    let ctx = || ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
    let version = client
        .health
        .version(ctx(), &kata_rs_protocol::health::VersionRequest::new())
        .context("Version")?;
    println!(
        "boot: agent version {} (protocol {})",
        version.agent_version, version.protocol_version
    );
    let details = client
        .agent
        .get_guest_details(ctx(), &kata_rs_protocol::agent::GuestDetailsRequest::new())
        .context("GetGuestDetails")?;
    println!(
        "boot: guest has {} CPU(s), {} MiB of memory, kernel {}",
        details.online_cpus,
        details.mem_total_bytes >> 20,
        details.kernel_release
    );
    match sandbox.shutdown() {
        Some(status) if status.success() => {
            println!("boot: DestroySandbox: the VM powered off and the VMM exited cleanly")
        }
        Some(status) if status.signal() == Some(libc::SIGKILL) => println!(
            "boot: DestroySandbox: the VM did not power off within {} s; its VMM was killed",
            POWER_OFF_GRACE.as_secs()
        ),
        Some(status) => anyhow::bail!("the VMM exited with {status} after DestroySandbox"),
        None => anyhow::bail!("the VMM's exit could not be waited for"),
    }
    Ok(())
}
