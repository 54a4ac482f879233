//! The runc-compatible command line: the flags runc's callers (conmon,
//! containerd-shim-runc-v2, go-runc) actually pass.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Isolation;
use crate::log::LogFormat;

#[derive(Parser, Debug)]
#[command(
    name = "kata-rs",
    version,
    about = "A VM-isolated OCI container runtime, runc-compatible"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Configuration file (default: $KATA_RS_CONFIG, then /etc/kata-rs/configuration.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Where container state lives.
    #[arg(long, global = true, default_value = "/run/kata-rs")]
    pub root: PathBuf,
    /// Write the runtime's log here instead of stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text, or json (one object per line: level, msg, time).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log at debug level.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Log level (overrides the configuration's log_level).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Manage cgroups through systemd (cgroupsPath is slice:prefix:name).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// true, false or auto; accepted for runc compatibility, and with `spec`
    /// asks for a rootless template.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Report whether this host can run VM mode and what that means.
    Check {
        /// Also boot a microVM, ask its agent for its health, version and
        /// guest details, and shut it down.
        #[arg(long)]
        boot: bool,
        /// How long the agent may take to answer, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Create a container from a bundle; its process waits for `start`.
    Create(CreateArgs),
    /// Start the process of a created container.
    Start { id: String },
    /// Print a container's state as the OCI runtime spec's JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init.
    Kill {
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Remove a container and everything that was made for it.
    Delete {
        /// Kill it first if it still runs.
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, then wait for it (unless --detach).
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once it started, leaving it running.
        #[arg(short, long)]
        detach: bool,
        /// Accepted for runc compatibility (run always deletes a container
        /// it waited for).
        #[arg(long)]
        keep: bool,
    },
    /// Run another process in a running container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps {
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        id: String,
        /// Arguments for ps(1) in table format (default: -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    #[command(alias = "ls")]
    List {
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a template config.json into the bundle directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Print what this runtime supports, as the OCI features JSON.
    Features,
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a container's resource limits.
    Update {
        /// A LinuxResources JSON file, or - for stdin.
        #[arg(short, long)]
        resources: Option<PathBuf>,
        /// Memory limit in bytes.
        #[arg(long)]
        memory: Option<i64>,
        /// Maximum number of processes.
        #[arg(long)]
        pids_limit: Option<i64>,
        /// CPU quota per period, in microseconds.
        #[arg(long)]
        cpu_quota: Option<i64>,
        /// CPU period, in microseconds.
        #[arg(long)]
        cpu_period: Option<u64>,
        /// Relative CPU weight (cgroup v1 shares).
        #[arg(long)]
        cpu_shares: Option<u64>,
        id: String,
    },
    /// Internal: the host process that stands for a VM container's process
    /// (started by create and exec).
    #[command(hide = true, name = "vm-monitor")]
    VmMonitor {
        #[arg(long)]
        exec_id: Option<String>,
        #[arg(long)]
        tty: bool,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(long)]
        control_fd: i32,
        id: String,
    },
    /// Print a container's resource usage as JSON events.
    Events {
        /// One statistics event, then exit.
        #[arg(long)]
        stats: bool,
        /// Seconds between statistics events.
        #[arg(long, default_value_t = 5)]
        interval: u64,
        id: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// The bundle directory (config.json and the root filesystem).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// A Unix socket that receives the terminal's master fd.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Write the pid of the process that stands for the container here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Use chroot-style MS_MOVE instead of pivot_root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility: no session keyring is made.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass this many extra fds (3 and up) to the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// vm (own microVM) or namespace (on the host, as runc); default: the
    /// io.kata-rs.isolation annotation, then the configuration.
    #[arg(long)]
    pub isolation: Option<Isolation>,
    pub id: String,
}

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// A process.json with the whole process to run.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Return once it started.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// KEY=VALUE, repeatable.
    #[arg(short, long)]
    pub env: Vec<String>,
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// uid[:gid]
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional group ids, repeatable.
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// Add a capability, repeatable.
    #[arg(short, long)]
    pub cap: Vec<String>,
    #[arg(long)]
    pub no_new_privs: bool,
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub apparmor: Option<String>,
    pub id: String,
    /// The command and its arguments (unless --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    Table,
    Json,
}
