//! OCI hooks run by a caller outside the engine's create and start: the
//! runtime runs them on the host for a container that lives in a VM.

use std::collections::HashMap;
use std::path::Path;

use libcontainer::container::{ContainerStatus, State};
use oci_spec::runtime::Hook;

use crate::error::{chain, EngineError, Result};

/// Runs `hooks` in order with the container's OCI state on their stdin;
/// the first failure (or timeout) stops and is returned.
pub fn run(
    kind: &'static str,
    hooks: &[Hook],
    id: &str,
    status: &str,
    pid: i32,
    bundle: &Path,
    annotations: &HashMap<String, String>,
) -> Result<()> {
    if hooks.is_empty() {
        return Ok(());
    }
    let status = match status {
        "creating" => ContainerStatus::Creating,
        "created" => ContainerStatus::Created,
        "running" => ContainerStatus::Running,
        "paused" => ContainerStatus::Paused,
        _ => ContainerStatus::Stopped,
    };
    let mut state = State::new(id, status, Some(pid), bundle.to_owned());
    state.annotations = Some(annotations.clone());
    let hooks = hooks.to_vec();
    libcontainer::hooks::run_hooks(Some(&hooks), Some(&state), Some(bundle), None, None).map_err(
        |e| EngineError::Engine {
            id: id.to_owned(),
            step: kind,
            message: chain(&e),
        },
    )
}
