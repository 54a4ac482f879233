//! A bundle's config.json as the runtime reads it: an OCI runtime spec,
//! typed. The engine validates a spec for running; the runtime reads one
//! for what it decides before that (the isolation, the pod, the VM's size,
//! the share).

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::sandbox::error::{FileError, OnPath};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Read(#[from] FileError),
    #[error("{} is not a valid OCI config: {cause}", path.display())]
    Invalid {
        path: PathBuf,
        cause: serde_json::Error,
    },
}

/// The spec of `bundle`, or why it has none.
pub fn read_spec(bundle: &Path) -> Result<Spec, BundleError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).on_path("read", &path)?;
    serde_json::from_slice(&text).map_err(|cause| BundleError::Invalid { path, cause })
}

/// The annotation `key` of `spec`, if it has it.
pub fn annotation<'s>(spec: &'s Spec, key: &str) -> Option<&'s str> {
    spec.annotations().as_ref()?.get(key).map(String::as_str)
}

/// A spec from its JSON form, for tests.
#[cfg(test)]
pub fn spec_of(json: serde_json::Value) -> Spec {
    serde_json::from_value(json).expect("a valid OCI spec")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_that_is_not_one_is_named() {
        let bundle = tempfile::tempdir().unwrap();
        std::fs::write(bundle.path().join("config.json"), r#"{"process": 7}"#).unwrap();
        let err = read_spec(bundle.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains("config.json is not a valid OCI config"),
            "{err:#}"
        );
    }

    #[test]
    fn annotations_are_read_by_key() {
        let spec = spec_of(serde_json::json!({"annotations": {"a": "1"}}));
        assert_eq!(annotation(&spec, "a"), Some("1"));
        assert_eq!(annotation(&spec, "b"), None);
        assert_eq!(annotation(&spec_of(serde_json::json!({})), "a"), None);
    }
}
