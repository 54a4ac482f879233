//! Errors of the engine: each names the container and what was being done.

use libcontainer::error::LibcontainerError;

pub type Result<T> = std::result::Result<T, EngineError>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("container {id} does not exist")]
    NotFound { id: String },
    #[error("container {id} already exists")]
    Exists { id: String },
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("container {id} is {status}: cannot {action}")]
    WrongStatus {
        id: String,
        status: String,
        action: &'static str,
    },
    #[error("container {id}: {step}: {message}")]
    Engine {
        id: String,
        step: &'static str,
        message: String,
    },
    #[error("container {id}: {step}")]
    Io {
        id: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// Wraps a libcontainer error, flattening its chain of causes into one
    /// line: callers such as containerd show only the message.
    pub(crate) fn engine(id: &str, step: &'static str, err: LibcontainerError) -> Self {
        EngineError::Engine {
            id: id.to_owned(),
            step,
            message: chain(&err),
        }
    }

    /// [`EngineError::engine`] for a create or exec, adding the cause its
    /// init process reported (see `init_cause`).
    pub(crate) fn init(
        id: &str,
        step: &'static str,
        err: LibcontainerError,
        cause: Option<String>,
    ) -> Self {
        EngineError::Engine {
            id: id.to_owned(),
            step,
            message: crate::init_cause::with_cause(chain(&err), cause),
        }
    }

    pub(crate) fn io(id: &str, step: &'static str, source: std::io::Error) -> Self {
        EngineError::Io {
            id: id.to_owned(),
            step,
            source,
        }
    }
}

/// "outer: inner: innermost", skipping causes that repeat their parent.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_joins_causes() {
        let err = Outer(std::io::Error::other("disk gone"));
        assert_eq!(chain(&err), "outer: disk gone");
    }
}
