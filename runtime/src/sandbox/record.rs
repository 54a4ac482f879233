//! What a sandbox leaves in its directory for whoever ends it later: its
//! host processes by pid and start time, and its host cgroup. A later
//! command of the OCI command line reads it to stop a VM another command
//! started, and containerd's `shim delete` to clean up after a shim that
//! died.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{FileError, OnPath};
use super::process::ProcRef;
use crate::host_cgroup::HostCgroupRef;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("parse {}: {cause}", path.display())]
    Parse {
        path: PathBuf,
        cause: serde_json::Error,
    },
}

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
    pub fn load(dir: &Path) -> Result<Self, RecordError> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(text) => {
                serde_json::from_slice(&text).map_err(|cause| RecordError::Parse { path, cause })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).on_path("read", &path).map_err(RecordError::from),
        }
    }

    /// Replaces the record atomically: a reader never sees half of it.
    pub fn save(&self, dir: &Path) -> Result<(), RecordError> {
        let path = Self::path(dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("a record is plain data");
        std::fs::write(&tmp, text).on_path("write", &tmp)?;
        Ok(std::fs::rename(&tmp, &path).on_path("write", &path)?)
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
