//! kata-rs-engine: the one container engine of kata-rs. It turns an OCI
//! bundle into a running container per the OCI runtime spec for Linux and
//! serves the life cycle after that. The agent uses it inside the guest; the
//! runtime uses it on the host in namespace mode.
//!
//! youki's libcontainer does the work underneath (docs/engine.md says why);
//! this crate adds what callers of a runc-compatible runtime rely on and
//! libcontainer leaves to its own CLI:
//!
//! - [`lock`]: one container's commands run one at a time;
//! - [`engine`]: create (undone whole on failure), load, list;
//! - [`console`]: receiving a pty master over a console socket;
//! - [`copyup`]: runc's tmpcopyup mount option;
//! - [`private_bundle`]: the changed copy of config.json libcontainer gets
//!   where it would refuse or misread the user's (tmpcopyup, recursive
//!   rootfs propagation);
//! - [`container`]: start, state, kill, pause, resume, delete, exec, pids,
//!   update, stats;
//! - [`status`]: a container's status and what it allows;
//! - [`stats`]: cgroup statistics in the JSON shape of `runc events`;
//! - [`oom`]: the OOM killer's kills in a container's memory cgroup;
//! - [`hooks`]: OCI hooks run outside create/start (for VM containers);
//! - [`sealed`]: the binary of a process that starts containers, as a
//!   sealed copy a container cannot write (CVE-2019-5736);
//! - [`error`]: errors that name the container and the step;
//! - [`init_cause`]: why a container's init failed, which libcontainer
//!   logs but does not pass on;
//! - `exec_process`: an exec gets the container's seccomp filter and, where
//!   its process leaves them out, its capabilities, rlimits and LSM label;
//! - `executor`: the container's program starts with default signal
//!   dispositions and an empty signal mask, whatever its caller had.

pub mod console;
pub mod container;
pub mod copyup;
pub mod engine;
pub mod error;
mod exec_process;
mod executor;
pub mod hooks;
pub mod init_cause;
pub mod lock;
pub mod oom;
pub mod private_bundle;
pub mod sealed;
pub mod stats;
pub mod status;

pub use container::{Container, ExecOptions, OciState};
pub use engine::{load_bundle_spec, validate_id, CreateOptions, Engine};
pub use error::{EngineError, Result};
pub use oci_spec::runtime::{LinuxResources, Process, Spec};
pub use oom::OomKills;
pub use status::ContainerStatus;
