//! What a sandbox leaves in its directory for whoever ends it later: its
//! host processes by pid and start time, and its host cgroup. A later
//! command of the OCI command line reads it to stop a VM another command
//! started, and containerd's `shim delete` to clean up after a shim that
//! died.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::process::ProcRef;
use crate::host_cgroup::HostCgroupRef;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub vmm: Option<ProcRef>,
    pub virtiofsd: Option<ProcRef>,
    /// The agent of a pod in namespace isolation, run on the host.
    #[serde(default)]
    pub agent: Option<ProcRef>,
    #[serde(default)]
    pub host_cgroup: Option<HostCgroupRef>,
}

impl Record {
    fn path(dir: &Path) -> PathBuf {
        dir.join("sandbox.json")
    }

    /// The record in `dir`; an empty one where there is none.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(text) => {
                serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Replaces the record atomically: a reader never sees half of it.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
    }

    pub fn remove(dir: &Path) {
        let path = Self::path(dir);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "remove the sandbox record");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_its_absence_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Record::load(dir.path()).unwrap().vmm.is_none());
        let me = ProcRef::of(std::process::id() as i32).unwrap();
        let record = Record {
            vmm: Some(me),
            ..Record::default()
        };
        record.save(dir.path()).unwrap();
        assert_eq!(Record::load(dir.path()).unwrap().vmm, Some(me));
        Record::remove(dir.path());
        assert!(Record::load(dir.path()).unwrap().vmm.is_none());
    }
}
