//! The kinds of failure callers act on, carried inside the runtime's
//! `anyhow` errors so that their codes come from what happened, never from
//! the wording of a message (containerd, for one, takes NOT_FOUND for
//! "already gone").

/// What kind of failure an error is, as the task API and the agent's RPCs
/// tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
}

/// An error of a known [`Kind`]; its message is all the user sees of it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct KindError {
    pub kind: Kind,
    message: String,
}

impl Kind {
    /// An error of this kind saying `message`.
    pub fn err(self, message: impl Into<String>) -> anyhow::Error {
        KindError {
            kind: self,
            message: message.into(),
        }
        .into()
    }

    /// The kind of an agent's answer's status code, where it has one.
    pub fn of_code(code: ttrpc::Code) -> Option<Self> {
        match code {
            ttrpc::Code::NOT_FOUND => Some(Kind::NotFound),
            ttrpc::Code::ALREADY_EXISTS => Some(Kind::AlreadyExists),
            ttrpc::Code::FAILED_PRECONDITION => Some(Kind::FailedPrecondition),
            ttrpc::Code::INVALID_ARGUMENT => Some(Kind::InvalidArgument),
            _ => None,
        }
    }
}

/// The kind of `e`: the first one anywhere in its chain of causes.
pub fn kind_of(e: &anyhow::Error) -> Option<Kind> {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<KindError>())
        .map(|k| k.kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_kind_survives_context_and_the_message_stays_whole() {
        let e = Err::<(), _>(Kind::NotFound.err("process p already finished"))
            .context("kill")
            .unwrap_err();
        assert_eq!(kind_of(&e), Some(Kind::NotFound));
        assert_eq!(format!("{e:#}"), "kill: process p already finished");
        assert_eq!(kind_of(&anyhow::anyhow!("plain")), None);
    }

    #[test]
    fn an_agents_status_code_gives_the_kind() {
        assert_eq!(Kind::of_code(ttrpc::Code::NOT_FOUND), Some(Kind::NotFound));
        assert_eq!(Kind::of_code(ttrpc::Code::INTERNAL), None);
    }
}
