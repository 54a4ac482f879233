//! What the runtime remembers of a VM container between commands:
//! `<root>/<id>/vm.json`, in the directory of its sandbox (whose own record
//! names the VMM, virtiofsd and the host cgroup).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kata_rs_engine::ContainerStatus;
use serde::{Deserialize, Serialize};

use crate::sandbox::process::ProcRef;

pub const STATE_FILE: &str = "vm.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub id: String,
    pub bundle: PathBuf,
    /// created, running or paused as last set by a command; the agent and
    /// the monitor have the final say (see `status`).
    pub status: ContainerStatus,
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The process that stands for the container on the host (--pid-file).
    pub monitor: ProcRef,
}

/// The sandbox directory of container `id`.
pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

pub fn is_vm(root: &Path, id: &str) -> bool {
    dir(root, id).join(STATE_FILE).is_file()
}

impl VmState {
    pub fn load(root: &Path, id: &str) -> Result<Self> {
        let path = dir(root, id).join(STATE_FILE);
        let text = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// Replaces the state file atomically: a reader never sees half of it.
    pub fn save(&self, root: &Path) -> Result<()> {
        let dir = dir(root, &self.id);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(STATE_FILE)).context("replace the state file")
    }
}
