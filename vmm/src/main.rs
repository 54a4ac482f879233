//! `kata-rs-vmm`: boots one microVM and exits when the guest stops.
//!
//! Exit status: 0 when the guest shut down cleanly (reset), 1 when the
//! guest panicked, the VM failed or the input was bad (with one error line
//! on stderr), 128+N when stopped by signal N.

use std::path::PathBuf;

use clap::Parser;
use kata_rs_vmm::builder;
use kata_rs_vmm::config::{
    Console, DiskConfig, FsConfig, NetConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE,
};
use kata_rs_vmm::seccomp::SeccompMode;

/// The first CID a guest may have (0-2 are reserved by vsock).
const DEFAULT_GUEST_CID: u64 = 3;

#[derive(Parser, Debug)]
#[command(name = "kata-rs-vmm", version, about = "Boot a Linux microVM on KVM")]
struct Args {
    /// Guest kernel: an ELF vmlinux or a bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk (cpio) handed to the kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line; replaces the default, which the VM's own
    /// devices are appended to either way.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Arguments added after the command line (default or --cmdline).
    /// Repeatable.
    #[arg(long)]
    cmdline_append: Vec<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Hybrid vsock Unix socket: `CONNECT <port>` reaches guest ports,
    /// guest connections to port P go to `<PATH>_<P>`.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID.
    #[arg(long, default_value_t = DEFAULT_GUEST_CID, value_parser = clap::value_parser!(u64).range(3..u64::from(u32::MAX)))]
    vsock_cid: u64,
    /// Where the serial console goes: `stdout`, `off`, or a file path.
    #[arg(long, default_value = "stdout")]
    console: Console,
    /// A raw disk image, optionally read-only: `PATH[,ro]`. Repeatable.
    #[arg(long = "disk")]
    disks: Vec<DiskConfig>,
    /// A virtio-fs share served by virtiofsd on a vhost-user socket:
    /// `TAG=SOCKET`; the guest mounts it with `mount -t virtiofs TAG DIR`.
    /// virtiofsd must be listening when the VMM starts. Repeatable.
    #[arg(long = "fs")]
    filesystems: Vec<FsConfig>,
    /// A network card on a tap: `tap=NAME,mac=MAC` attaches to (or creates)
    /// the tap NAME in the VMM's network namespace; `fd=N,mac=MAC` takes
    /// over the inherited, already attached tap fd N. MAC is six
    /// colon-separated hex octets. Repeatable.
    #[arg(long = "net")]
    nets: Vec<NetConfig>,
    /// What a system call outside a VMM thread's seccomp filter does:
    /// `enforce` kills the VMM (SIGSYS), `log` has the kernel log it and
    /// lets it run, `off` installs no filters.
    #[arg(long, default_value = "enforce")]
    seccomp: SeccompMode,
    /// Log filter for the VMM's own messages (stderr).
    #[arg(long, default_value = "warn", env = "KATA_RS_VMM_LOG")]
    log_level: String,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .with_writer(std::io::stderr)
        // The runtime sends stderr to a log file and quotes it in errors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: std::iter::once(args.cmdline)
            .chain(args.cmdline_append)
            .collect::<Vec<_>>()
            .join(" "),
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        console: args.console,
        vsock: args.vsock_uds.map(|uds_path| VsockConfig {
            guest_cid: args.vsock_cid,
            uds_path,
        }),
        disks: args.disks,
        filesystems: args.filesystems,
        nets: args.nets,
        seccomp: args.seccomp,
    };
    let outcome = builder::build(&cfg).and_then(|vmm| vmm.run());
    let code = match outcome {
        Ok(outcome) => {
            match &outcome {
                builder::Outcome::Stopped => {}
                builder::Outcome::Panicked => eprintln!("kata-rs-vmm: the guest kernel panicked"),
                builder::Outcome::Failed(msg) => eprintln!("kata-rs-vmm: {msg}"),
                builder::Outcome::Signalled(sig) => {
                    tracing::info!(signal = sig, "stopped by signal")
                }
            }
            outcome.exit_code()
        }
        Err(e) => {
            eprintln!("kata-rs-vmm: {e}");
            1
        }
    };
    std::process::exit(code);
}
