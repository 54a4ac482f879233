//! `kata-rs`: the runtime's command line.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use kata_rs::check;
use kata_rs::config::Config;

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
    Check,
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
        Command::Check => {
            let report = check::inspect(&config, Path::new("/"));
            print!("{}", report.render(config_path.as_deref()));
        }
    }
    Ok(())
}
