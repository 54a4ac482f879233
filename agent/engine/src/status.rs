//! A container's status, as the OCI runtime spec names it (plus `paused`,
//! as runc has it), and what each status allows. The same values travel in
//! the agent's StateContainer answer and the OCI command line's state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl ContainerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        }
    }

    /// Only a created container starts.
    pub fn can_start(self) -> bool {
        self == Self::Created
    }

    /// A container whose init has exited has nothing left to signal.
    pub fn is_stopped(self) -> bool {
        self == Self::Stopped
    }

    /// What `delete` takes without --force: a container that does not run
    /// (as runc, a created one too: its init is only waiting).
    pub fn can_delete(self) -> bool {
        matches!(self, Self::Created | Self::Stopped)
    }

    pub fn can_exec(self) -> bool {
        self == Self::Running
    }
}

impl fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContainerStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::Creating,
            Self::Created,
            Self::Running,
            Self::Paused,
            Self::Stopped,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| format!("unknown container status {s:?}"))
    }
}

impl From<libcontainer::container::ContainerStatus> for ContainerStatus {
    fn from(status: libcontainer::container::ContainerStatus) -> Self {
        use libcontainer::container::ContainerStatus as Theirs;
        match status {
            Theirs::Creating => Self::Creating,
            Theirs::Created => Self::Created,
            Theirs::Running => Self::Running,
            Theirs::Paused => Self::Paused,
            Theirs::Stopped => Self::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_back_from_its_name_and_its_json() {
        for status in [
            ContainerStatus::Creating,
            ContainerStatus::Created,
            ContainerStatus::Running,
            ContainerStatus::Paused,
            ContainerStatus::Stopped,
        ] {
            assert_eq!(status.to_string().parse(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
            assert_eq!(
                serde_json::from_str::<ContainerStatus>(&json).unwrap(),
                status
            );
        }
        assert!("Running".parse::<ContainerStatus>().is_err());
    }

    #[test]
    fn each_status_allows_what_runc_allows() {
        use ContainerStatus::*;
        assert_eq!(
            [Creating, Created, Running, Paused, Stopped].map(|s| (
                s.can_start(),
                s.can_delete(),
                s.can_exec()
            )),
            [
                (false, false, false),
                (true, true, false),
                (false, false, true),
                (false, false, false),
                (false, true, false),
            ]
        );
    }
}
