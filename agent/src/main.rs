//! `kata-rs-agent`: the guest's /init, serving the runtime over vsock.
//!
//! As PID 1 it mounts the pseudo filesystems, reaps orphans and serves
//! ttrpc on vsock port 1024. With `--no-init` it only serves (on any
//! address), which is how host tests run it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kata_rs_agent::cmdline::KernelParams;
use kata_rs_agent::init;
use kata_rs_agent::reaper::Reaper;
use kata_rs_agent::service::{self, Teardown, AGENT_VERSION};
use nix::sys::signal::{SigSet, Signal};
use tracing_subscriber::filter::LevelFilter;

#[derive(Debug, Parser)]
#[command(name = "kata-rs-agent", version, about)]
struct Args {
    /// Address to serve ttrpc on: vsock://CID:PORT (CID -1 = any) or
    /// unix:///path/to/socket.
    #[arg(long, default_value_t = format!("vsock://-1:{}", kata_rs_protocol::AGENT_VSOCK_PORT))]
    listen: String,

    /// Serve only: no mounts, no reaping, no reboot; DestroySandbox exits
    /// the process. For running the agent on a host.
    #[arg(long)]
    no_init: bool,

    /// Log level (off, error, warn, info, debug, trace). As init, the kernel
    /// command line's agent.log=LEVEL takes precedence.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = parse_args();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // eprintln, not tracing: logging may not be set up yet, and the
            // level must not hide this line. As PID 1, stderr is the console
            // and the exit that follows panics the kernel right after it.
            eprintln!("kata-rs-agent: fatal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The kernel hands init the command-line words it does not know as
/// arguments; as PID 1 those must not stop the guest, so they are reported
/// and ignored.
fn parse_args() -> Args {
    match Args::try_parse() {
        Ok(args) => args,
        Err(e) if nix::unistd::getpid().as_raw() == 1 && e.use_stderr() => {
            eprintln!("kata-rs-agent: ignoring arguments from the kernel: {e}");
            Args::parse_from(["kata-rs-agent"])
        }
        Err(e) => e.exit(),
    }
}

fn run(args: Args) -> Result<()> {
    if args.no_init {
        init_logging(&args.log_level)?;
        let stop = termination_signals();
        // Blocked before the server starts its threads, so only sigwait
        // below receives them.
        stop.thread_block().context("blocking SIGINT/SIGTERM")?;
        let (_server, socket) = serve(&args.listen, Teardown::Exit)?;
        let signal = stop.wait().context("waiting for SIGINT/SIGTERM")?;
        tracing::info!(%signal, "stopping");
        if let Some(path) = socket {
            let _ = std::fs::remove_file(path);
        }
        return Ok(());
    }

    init::ensure_pid1()?;
    // Before any thread exists; see Reaper::block_sigchld.
    Reaper::block_sigchld().context("blocking SIGCHLD")?;
    init::early_setup()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let params = KernelParams::parse(&cmdline);
    init_logging(params.log.as_deref().unwrap_or(&args.log_level))?;
    tracing::info!(
        version = AGENT_VERSION,
        cmdline = cmdline.trim_end(),
        "kata-rs-agent starting as init"
    );
    init::late_setup()?;
    Reaper::new()
        .start()
        .context("starting the reaper thread")?;
    let _server = serve(&args.listen, Teardown::Reboot)?;
    // The server and the reaper run on their own threads; PID 1 must never
    // return (and the server stops when dropped).
    loop {
        std::thread::park();
    }
}

/// Starts the ttrpc server on `listen`. Returns the server, which serves
/// until dropped, and the Unix socket path it created, if any, for removal
/// at exit.
fn serve(listen: &str, teardown: Teardown) -> Result<(ttrpc::Server, Option<PathBuf>)> {
    let socket = listen.strip_prefix("unix://").map(PathBuf::from);
    if let Some(path) = &socket {
        remove_stale_socket(path)?;
    }
    let mut server = ttrpc::Server::new()
        .bind(listen)
        .with_context(|| format!("binding {listen}"))?
        .register_service(service::methods(teardown));
    server
        .start()
        .with_context(|| format!("serving on {listen}"))?;
    tracing::info!(version = AGENT_VERSION, %listen, "serving");
    Ok((server, socket))
}

/// A socket file left by an earlier run makes bind fail; remove it, but
/// never anything that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display())),
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
    }
}

/// Logs to stderr, which as init is the console. An unknown level is not
/// fatal: the agent logs at info and says so.
fn init_logging(level: &str) -> Result<()> {
    let (filter, bad) = match LevelFilter::from_str(level) {
        Ok(filter) => (filter, None),
        Err(_) => (LevelFilter::INFO, Some(level)),
    };
    tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .try_init()
        .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))?;
    if let Some(bad) = bad {
        tracing::warn!(level = bad, "unknown log level; logging at info");
    }
    Ok(())
}

fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}
