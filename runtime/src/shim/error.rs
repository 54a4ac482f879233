//! The shim's errors, and the one place they become ttrpc statuses:
//! containerd acts on the code (NOT_FOUND, for one, is "already gone"
//! to it), so each error's code follows from its type, and the message is
//! the error with its causes.

use containerd_shim::protos::ttrpc;
use kata_rs_engine::ContainerStatus;

use crate::bundle::BundleError;
use crate::cgroup_driver::DriverError;
use crate::config::ConfigError;
use crate::sandbox::agent::AgentError;
use crate::sandbox::share::ShareError;
use crate::sandbox::stdio::StdioError;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("container {0} does not exist")]
    NoContainer(String),
    #[error("process {0} does not exist")]
    NoProcess(String),
    #[error("process {process} of container {id} already finished")]
    Finished { id: String, process: String },
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("process {exec_id} already exists in container {id}")]
    ProcessExists { id: String, exec_id: String },
    #[error("process {process} of container {id} was already started")]
    Started { id: String, process: String },
    #[error("container {0} is not running: cannot exec in it")]
    NotRunning(String),
    #[error("container {id} is {status}: cannot delete it")]
    NotDeletable { id: String, status: ContainerStatus },
    /// A request containerd should not have sent as it is.
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Agent(Box<AgentError>),
    /// The agent failed a request, and its sandbox tells why.
    #[error("{inner}; {post_mortem}")]
    PostMortem {
        inner: Box<AgentError>,
        post_mortem: String,
    },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    /// What else failed in the sandbox or on the host around it.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        inner: Box<TaskError>,
    },
}

impl From<AgentError> for TaskError {
    fn from(e: AgentError) -> Self {
        TaskError::Agent(Box::new(e))
    }
}

impl TaskError {
    /// `self`, said to have happened while doing `context`.
    pub fn context(self, context: impl Into<String>) -> Self {
        TaskError::Context {
            context: context.into(),
            inner: Box::new(self),
        }
    }

    fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            TaskError::NoContainer(_) | TaskError::NoProcess(_) | TaskError::Finished { .. } => {
                Code::NOT_FOUND
            }
            TaskError::ContainerExists(_) | TaskError::ProcessExists { .. } => Code::ALREADY_EXISTS,
            TaskError::Started { .. }
            | TaskError::NotRunning(_)
            | TaskError::NotDeletable { .. }
            | TaskError::Driver(_) => Code::FAILED_PRECONDITION,
            TaskError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            TaskError::Agent(e) | TaskError::PostMortem { inner: e, .. } => agent_code(e),
            TaskError::Bundle(_)
            | TaskError::Config(_)
            | TaskError::Share(_)
            | TaskError::Stdio(_)
            | TaskError::Failed(_) => Code::UNKNOWN,
            TaskError::Context { inner, .. } => inner.code(),
        }
    }
}

/// The code of the agent's refusal where containerd reads it as the
/// shim's own; the rest (its time-outs, say) would mislead containerd
/// about its own request, and are UNKNOWN.
fn agent_code(e: &AgentError) -> ttrpc::Code {
    // The agent's ttrpc is not the one containerd-shim speaks in.
    use ::ttrpc::Code as Agent;
    use ttrpc::Code;
    match e.code() {
        Some(Agent::NOT_FOUND) => Code::NOT_FOUND,
        Some(Agent::ALREADY_EXISTS) => Code::ALREADY_EXISTS,
        Some(Agent::FAILED_PRECONDITION) => Code::FAILED_PRECONDITION,
        Some(Agent::INVALID_ARGUMENT) => Code::INVALID_ARGUMENT,
        _ => Code::UNKNOWN,
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> Self {
        let message = kata_rs_engine::error::chain(&e);
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: TaskError) -> (ttrpc::Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_code_survives_context_and_the_message_stays_whole() {
        let e = TaskError::Finished {
            id: "c".into(),
            process: "p".into(),
        }
        .context("kill");
        assert_eq!(
            status(e),
            (
                ttrpc::Code::NOT_FOUND,
                "kill: process p of container c already finished".into()
            )
        );
        let failed = TaskError::from(anyhow::anyhow!("boot").context("create"));
        assert_eq!(
            status(failed),
            (ttrpc::Code::UNKNOWN, "create: boot".into())
        );
    }

    #[test]
    fn an_agents_refusal_keeps_its_code_where_containerd_reads_it() {
        let refused = |code: ::ttrpc::Code| AgentError::Refused {
            request: "state",
            id: "c".into(),
            code,
            message: "no".into(),
        };
        assert_eq!(
            status(refused(::ttrpc::Code::NOT_FOUND).into()),
            (ttrpc::Code::NOT_FOUND, "container c: state: no".into())
        );
        assert_eq!(
            status(refused(::ttrpc::Code::DEADLINE_EXCEEDED).into()).0,
            ttrpc::Code::UNKNOWN
        );
    }
}
