//! OCI hooks run by a caller outside the engine's create and start: the
//! runtime runs them on the host for a container that lives in a VM.

use std::collections::HashMap;
use std::path::Path;

use libcontainer::container::{ContainerStatus, State};
use oci_spec::runtime::Hooks;

use crate::error::{chain, EngineError, Result};

/// The hooks that run on the host, outside the container's namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostHook {
    Prestart,
    CreateRuntime,
    Poststart,
    Poststop,
}

impl HostHook {
    pub fn name(self) -> &'static str {
        match self {
            HostHook::Prestart => "prestart",
            HostHook::CreateRuntime => "createRuntime",
            HostHook::Poststart => "poststart",
            HostHook::Poststop => "poststop",
        }
    }

    /// The container's status in the state these hooks read, as runc
    /// gives it: still "creating" before start.
    fn status(self) -> ContainerStatus {
        match self {
            HostHook::Prestart | HostHook::CreateRuntime => ContainerStatus::Creating,
            HostHook::Poststart => ContainerStatus::Running,
            HostHook::Poststop => ContainerStatus::Stopped,
        }
    }

    fn of(self, hooks: &Hooks) -> Option<&Vec<oci_spec::runtime::Hook>> {
        match self {
            // Deprecated by the runtime spec, still what most hook tools use.
            #[allow(deprecated)]
            HostHook::Prestart => hooks.prestart().as_ref(),
            HostHook::CreateRuntime => hooks.create_runtime().as_ref(),
            HostHook::Poststart => hooks.poststart().as_ref(),
            HostHook::Poststop => hooks.poststop().as_ref(),
        }
    }
}

/// Runs the `kind` hooks of `hooks` in order with the container's OCI state
/// on their stdin; the first failure (or timeout) stops and is returned.
pub fn run(
    kind: HostHook,
    hooks: Option<&Hooks>,
    id: &str,
    pid: i32,
    bundle: &Path,
    annotations: &HashMap<String, String>,
) -> Result<()> {
    let Some(list) = hooks.and_then(|h| kind.of(h)).filter(|l| !l.is_empty()) else {
        return Ok(());
    };
    let mut state = State::new(id, kind.status(), Some(pid), bundle.to_owned());
    state.annotations = Some(annotations.clone());
    libcontainer::hooks::run_hooks(Some(list), Some(&state), Some(bundle), None, None).map_err(
        |e| EngineError::Engine {
            id: id.to_owned(),
            step: kind.name(),
            message: chain(&e),
        },
    )
}
