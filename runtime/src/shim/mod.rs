//! `containerd-shim-kata-rs-v2`: containerd's shim v2 for runtime type
//! `io.containerd.kata-rs.v2`. One shim process serves one pod: the
//! pod's first container boots its microVM, the containers containerd
//! groups with it (by the CRI sandbox-id annotations) run in the same VM.
//!
//! - [`pod`]: the pod's containers and processes, and the task operations
//!   on them;
//! - [`backend`]: where they run: the pod's sandbox, or an agent on the
//!   host ([`host`]) in namespace isolation;
//! - [`process`]: a process's stdio, start and exit;
//! - [`spec`]: the spec the agent gets, rewritten from the bundle's;
//! - [`rootfs`]: containerd's rootfs mounts;
//! - [`hooks`]: a VM container's OCI hooks, run on the host;
//! - [`io`]: containerd's stdio FIFOs relayed to the agent's streams;
//! - [`options`]: the configuration file named by containerd's options;
//! - [`service`]: the task API over a pod, and its events;
//! - [`error`]: the shim's errors, and the ttrpc code of each;
//! - [`socket`]: the shim's socket, removed whatever order containerd
//!   cleans up in;
//! - [`stats`]: the agent's statistics as containerd's cgroup metrics.

pub mod backend;
pub mod error;
pub mod hooks;
pub mod host;
pub mod io;
pub mod options;
pub mod pod;
pub mod process;
pub mod rootfs;
pub mod service;
pub mod socket;
pub mod spec;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api::DeleteResponse, ExitSignal, Flags, StartOpts};

use crate::config::Config;
use pod::Pod;
use service::Service;
use socket::ShimSocket;

/// The runtime type containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.kata-rs.v2";
/// Where the shims keep their pods.
const PODS_DIR: &str = "/run/kata-rs/pods";

/// The annotations by which CRI (containerd's, CRI-O's) names the pod
/// sandbox a container belongs to.
const SANDBOX_ID_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.SandboxID",
];

/// The pod a bundle's container belongs to: its sandbox's id, or its own
/// id for a container outside any pod.
pub fn pod_id(bundle: &Path, id: &str) -> String {
    let spec = crate::bundle::read_spec(bundle).ok();
    SANDBOX_ID_ANNOTATIONS
        .iter()
        .find_map(|a| crate::bundle::annotation(spec.as_ref()?, a))
        .unwrap_or(id)
        .to_owned()
}

fn pod_dir(pod_id: &str) -> PathBuf {
    Path::new(PODS_DIR).join(pod_id)
}

/// Logging of the serving shim: to the `log` FIFO containerd reads in the
/// bundle directory (the shim's working directory), at debug level with
/// `-debug`. `start` and `delete` answer on stdout and log nothing there.
pub fn init_logging() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "start" || a == "delete") {
        return;
    }
    let level = if args.iter().any(|a| a == "-debug") {
        "debug"
    } else {
        "info"
    };
    let level = format!("{level},libcontainer=off,libcgroups=off");
    let _ = crate::log::init(Some(Path::new("log")), crate::log::LogFormat::Text, &level);
}

/// How the shim runs under containerd_shim: it waits for its own children
/// (VMM, virtiofsd; the containers' processes live in the guest), so the
/// crate must not reap them, and it logs through `tracing`.
pub fn shim_config() -> containerd_shim::Config {
    containerd_shim::Config {
        no_reaper: true,
        no_sub_reaper: true,
        no_setup_logger: true,
        ..Default::default()
    }
}

pub struct Shim {
    id: String,
    namespace: String,
    /// containerd's own address, of which the shim's socket is derived.
    containerd_address: String,
    /// The socket a serving shim listens on.
    socket: ShimSocket,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Shim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        Shim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            containerd_address: args.address.clone(),
            socket: ShimSocket::from_address(&args.socket),
            exit: Arc::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd runs `start` in the container's bundle directory.
        let grouping = pod_id(Path::new("."), &opts.id);
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let rootfs = bundle.join("rootfs");
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        // Only the pod's sandbox container (whose id the pod carries, as
        // CRI names them) takes the pod's leftovers with it.
        let pod = pod_id(&bundle, &self.id);
        if pod == self.id {
            pod::clean_up_after(&pod_dir(&pod));
        }
        ShimSocket::of(&self.containerd_address, &self.namespace, &pod).remove_if_stale();
        Ok(DeleteResponse {
            exit_status: 128 + 9,
            exited_at: service::timestamp(std::time::SystemTime::now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        // The socket went before Shutdown answered; removing the path again
        // now could take a newer shim's for the same pod.
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        let config = match Config::load(None) {
            Ok((config, _)) => config,
            Err(e) => {
                tracing::error!(error = %e, "load the configuration; using the defaults");
                Config::default()
            }
        };
        // The serving shim runs in its first container's bundle directory,
        // whose annotations name the pod.
        let pod = Pod::new(pod_dir(&pod_id(Path::new("."), &self.id)), config);
        Service::new(
            pod,
            publisher,
            &self.namespace,
            Arc::clone(&self.exit),
            self.socket.clone(),
        )
    }
}
