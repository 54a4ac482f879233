//! `kata-rs`: the runtime's command line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kata_rs::check;
use kata_rs::config::Config;
use kata_rs::sandbox::{SandboxSpec, VmSandbox};

#[derive(Parser, Debug)]
#[command(
    name = "kata-rs",
    version,
    about = "A VM-isolated OCI container runtime"
)]
struct Cli {
    /// Configuration file (default: $KATA_RS_CONFIG, then /etc/kata-rs/configuration.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Report whether this host can run VM mode (KVM kind, guest kernel,
    /// initrd, VMM, virtiofsd) and what that means.
    Check {
        /// Also boot a microVM, ask its agent for its health, version and
        /// guest details, and shut it down.
        #[arg(long)]
        boot: bool,
        /// How long the agent may take to answer, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("kata-rs: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let (config, config_path) = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Check { boot, timeout } => {
            let report = check::inspect(&config, Path::new("/"));
            print!("{}", report.render(config_path.as_deref()));
            if boot {
                boot_check(&config, Duration::from_secs(timeout))?;
            }
        }
    }
    Ok(())
}

/// Boots one microVM with the configured kernel and initrd and talks to its
/// agent: the end-to-end proof that VM mode works here.
fn boot_check(config: &Config, timeout: Duration) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("kata-rs-check-{}", std::process::id()));
    let result = boot_check_in(config, timeout, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn boot_check_in(config: &Config, timeout: Duration, dir: &Path) -> Result<()> {
    let spec = SandboxSpec::from_config(&config.hypervisor);
    let started = Instant::now();
    let mut sandbox = VmSandbox::start(&config.hypervisor, &spec, dir)?;
    println!(
        "boot: started kata-rs-vmm (pid {}) with {} vCPU(s), {} MiB",
        sandbox.vmm_pid(),
        spec.vcpus,
        spec.memory_mib
    );
    let client = sandbox.wait_for_agent(timeout)?;
    println!(
        "boot: agent answered its health check (SERVING) after {:.2} s",
        started.elapsed().as_secs_f64()
    );
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
    let status = sandbox.destroy(&client)?;
    anyhow::ensure!(
        status.success(),
        "the VMM exited with {status} after DestroySandbox"
    );
    println!("boot: DestroySandbox: the VM shut down and the VMM exited cleanly");
    Ok(())
}
