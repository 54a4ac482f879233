//! `kata-rs-agent`: the guest's /init, serving the runtime over vsock.
//!
//! As PID 1 it mounts the pseudo filesystems, reaps orphans, serves ttrpc
//! on vsock port 1024 and takes stdio streams on port 1025. With
//! `--no-init` it serves (on any addresses) without init duties, which is
//! how host tests run it.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::sync::Arc;

use kata_rs_agent::cmdline::KernelParams;
use kata_rs_agent::containers::{self, Containers};
use kata_rs_agent::init;
use kata_rs_agent::reaper::Reaper;
use kata_rs_agent::service::{self, Teardown, AGENT_VERSION};
use kata_rs_agent::stdio::{StdioAddr, StreamRegistry};
use nix::sys::signal::{SigSet, Signal};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

#[derive(Debug, Parser)]
#[command(name = "kata-rs-agent", version, about)]
struct Args {
    /// Address to serve ttrpc on: vsock://CID:PORT (CID -1 = any) or
    /// unix:///path/to/socket.
    #[arg(long, default_value_t = format!("vsock://-1:{}", kata_rs_protocol::AGENT_VSOCK_PORT))]
    listen: String,

    /// Address to take stdio streams on: vsock://-1:PORT or unix:///path.
    #[arg(long, default_value_t = format!("vsock://-1:{}", kata_rs_protocol::STDIO_VSOCK_PORT))]
    stdio_listen: String,

    /// Where containers, bundles and console sockets live.
    #[arg(long, default_value = "/run/kata-rs")]
    state_dir: PathBuf,

    /// No init duties: no mounts (the virtio-fs share included), no
    /// reboot (DestroySandbox exits the process), pivot_root into
    /// containers. For running the agent on a host.
    #[arg(long)]
    no_init: bool,

    /// Make the containers' cgroups through systemd (cgroupsPath is then
    /// "slice:prefix:name"); only with --no-init, on a host running systemd.
    #[arg(long, requires = "no_init")]
    systemd_cgroup: bool,

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
        // On the host, the containers it starts must not reach its binary
        // (in a guest, the VM is the boundary and the binary the guest's).
        kata_rs_engine::sealed::run_sealed()?;
        init_logging(&args.log_level)?;
        let stop = termination_signals();
        // Blocked before any thread starts, so only the sigwaits (below and
        // the reaper's) receive them.
        stop.thread_block().context("blocking SIGINT/SIGTERM")?;
        Reaper::block_sigchld().context("blocking SIGCHLD")?;
        let reaper = Reaper::new();
        reaper.start().context("starting the reaper thread")?;
        let config = containers::Config {
            state_dir: args.state_dir.clone(),
            mount_share: false,
            no_pivot: false,
            run_hooks: true,
            systemd_cgroup: args.systemd_cgroup,
        };
        let (_server, sockets) = serve(&args, Teardown::Exit, config, reaper)?;
        let signal = stop.wait().context("waiting for SIGINT/SIGTERM")?;
        tracing::info!(%signal, "stopping");
        for path in sockets {
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
    init::enable_cgroup_controllers();
    let reaper = Reaper::new();
    reaper.start().context("starting the reaper thread")?;
    let config = containers::Config {
        state_dir: args.state_dir.clone(),
        mount_share: true,
        no_pivot: true,
        run_hooks: false,
        systemd_cgroup: false,
    };
    let _server = serve(&args, Teardown::Reboot, config, reaper)?;
    // The server and the reaper run on their own threads; PID 1 must never
    // return (and the server stops when dropped).
    loop {
        std::thread::park();
    }
}

/// Most requests one connection runs at once. WaitProcess blocks a worker
/// for the life of a process, and ttrpc's default (5) would let a few of
/// them starve every other request on the connection.
const MAX_REQUESTS_PER_CONNECTION: usize = 64;

/// Starts the stdio listener and the ttrpc server. Returns the server,
/// which serves until dropped, and the Unix socket paths it created, for
/// removal at exit.
fn serve(
    args: &Args,
    teardown: Teardown,
    config: containers::Config,
    reaper: Arc<Reaper>,
) -> Result<(ttrpc::Server, Vec<PathBuf>)> {
    let listen = args.listen.as_str();
    let stdio_addr: StdioAddr = args
        .stdio_listen
        .parse()
        .map_err(|e| anyhow::anyhow!("--stdio-listen: {e}"))?;
    let mut sockets = Vec::new();
    if let StdioAddr::Unix(path) = &stdio_addr {
        remove_stale_socket(path)?;
        sockets.push(path.clone());
    }
    let streams = StreamRegistry::bind(&stdio_addr)
        .with_context(|| format!("binding the stdio listener {}", args.stdio_listen))?;
    streams.start().context("starting the stdio listener")?;
    let containers = Arc::new(
        Containers::new(config, reaper, streams).context("setting up the container engine")?,
    );

    if let Some(path) = listen.strip_prefix("unix://").map(PathBuf::from) {
        remove_stale_socket(&path)?;
        sockets.push(path);
    }
    let mut server = ttrpc::Server::new()
        .bind(listen)
        .with_context(|| format!("binding {listen}"))?
        .set_thread_count_max(MAX_REQUESTS_PER_CONNECTION)
        .register_service(service::methods(teardown, containers));
    server
        .start()
        .with_context(|| format!("serving on {listen}"))?;
    tracing::info!(version = AGENT_VERSION, %listen, stdio = args.stdio_listen, "serving");
    Ok((server, sockets))
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
    // A close-on-exec copy of stderr, written without locks. libcontainer
    // logs from the container's init after it has made the container's
    // stdio fds 0-2, before exec: through fd 2 those lines would land in
    // the container's stderr, and through std's locked Stderr a clone taken
    // while another thread logs would deadlock on its first line.
    let log: &'static std::fs::File = Box::leak(Box::new(std::fs::File::from(
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stderr for the log")?,
    )));
    let console = tracing_subscriber::fmt::layer()
        .with_writer(move || log)
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(console)
        .with(kata_rs_engine::init_cause::layer())
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
