//! A container's OCI hooks in a pod's VM. The shim runs the host's share
//! on the host, as `kata-rs run` does: prestart and createRuntime once the
//! guest has created the container, poststart after it starts, poststop
//! after it is removed, each with the VMM as the state's pid.
//! createContainer and startContainer would have to run inside the guest,
//! so a spec with them is refused. In namespace isolation the host agent's
//! engine runs every hook itself, as runc does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kata_rs_engine::hooks::HostHook;
use oci_spec::runtime::{Hooks, Spec};

pub struct HostHooks {
    hooks: Hooks,
    bundle: PathBuf,
    annotations: HashMap<String, String>,
}

impl HostHooks {
    /// The hooks of the bundle's `spec`, if it has any.
    pub fn of(bundle: &Path, spec: &Spec) -> Option<Self> {
        Some(Self {
            hooks: spec.hooks().clone()?,
            bundle: bundle.to_owned(),
            annotations: spec.annotations().clone().unwrap_or_default(),
        })
    }

    /// Runs the `kind` hooks of container `id`; the first failure is
    /// returned.
    pub fn run(&self, id: &str, kind: HostHook, vmm_pid: u32) -> Result<()> {
        let pid = i32::try_from(vmm_pid).unwrap_or_default();
        kata_rs_engine::hooks::run(
            kind,
            Some(&self.hooks),
            id,
            pid,
            &self.bundle,
            &self.annotations,
        )
        .with_context(|| format!("container {id}: {} hook", kind.name()))
    }

    /// Runs hooks whose failure the runtime spec has the runtime log and
    /// go on from: poststart and poststop.
    pub fn run_logged(&self, id: &str, kind: HostHook, vmm_pid: u32) {
        if let Err(e) = self.run(id, kind, vmm_pid) {
            tracing::warn!(
                id,
                hook = kind.name(),
                error = format!("{e:#}"),
                "hook failed"
            );
        }
    }
}
