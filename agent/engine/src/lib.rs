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
//! - [`container`]: start, state, kill, pause, resume, delete, exec, pids,
//!   update, stats;
//! - [`stats`]: cgroup statistics in the JSON shape of `runc events`;
//! - [`error`]: errors that name the container and the step;
//! - `executor`: the container's program starts with default signal
//!   dispositions and an empty signal mask, whatever its caller had.

pub mod container;
pub mod engine;
pub mod error;
mod executor;
pub mod lock;
pub mod stats;

pub use container::{Container, ExecOptions, OciState};
pub use engine::{CreateOptions, Engine};
pub use error::{EngineError, Result};
pub use libcontainer::signal::Signal;
pub use oci_spec::runtime::{LinuxResources, Process, Spec};
