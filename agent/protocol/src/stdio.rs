//! The header line that opens a stdio stream connection (vsock port
//! [`crate::STDIO_VSOCK_PORT`]), as protos/agent.proto describes:
//!
//! ```text
//! <container_id> <exec_id or -> <stdin|stdout|stderr|tty>\n
//! ```
//!
//! The host writes it right after connecting; everything after the newline
//! is the stream's raw bytes.

use std::fmt;
use std::str::FromStr;

/// The longest header line the agent accepts, newline included; a longer
/// one gets the connection closed.
pub const MAX_HEADER_LEN: usize = 512;

/// Which of a process's streams a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// The process's terminal, both directions (process.terminal is true).
    Tty,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
            StreamKind::Tty => "tty",
        }
    }
}

impl FromStr for StreamKind {
    type Err = HeaderError;

    fn from_str(s: &str) -> Result<Self, HeaderError> {
        match s {
            "stdin" => Ok(StreamKind::Stdin),
            "stdout" => Ok(StreamKind::Stdout),
            "stderr" => Ok(StreamKind::Stderr),
            "tty" => Ok(StreamKind::Tty),
            other => Err(HeaderError::Kind(other.to_owned())),
        }
    }
}

/// Why a header line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("stream header is not 3 space-separated fields")]
    Fields,
    #[error("unknown stream kind {0:?} (stdin, stdout, stderr or tty)")]
    Kind(String),
    #[error("stream header is longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
}

/// The parsed header: which process and which of its streams.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamHeader {
    pub container_id: String,
    /// "" for the container's init (written as `-`).
    pub exec_id: String,
    pub kind: StreamKind,
}

impl StreamHeader {
    pub fn new(container_id: &str, exec_id: &str, kind: StreamKind) -> Self {
        StreamHeader {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            kind,
        }
    }

    /// Parses one line, without or with its trailing newline. Ids are only
    /// split here; the agent validates them as container ids.
    pub fn parse(line: &str) -> Result<Self, HeaderError> {
        if line.len() > MAX_HEADER_LEN {
            return Err(HeaderError::TooLong);
        }
        let line = line.strip_suffix('\n').unwrap_or(line);
        let fields: Vec<&str> = line.split(' ').collect();
        let [container_id, exec_id, kind] = fields[..] else {
            return Err(HeaderError::Fields);
        };
        if container_id.is_empty() || exec_id.is_empty() {
            return Err(HeaderError::Fields);
        }
        Ok(StreamHeader {
            container_id: container_id.to_owned(),
            exec_id: if exec_id == "-" { "" } else { exec_id }.to_owned(),
            kind: kind.parse()?,
        })
    }
}

/// The header line, newline included, as the host writes it.
impl fmt::Display for StreamHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exec_id = if self.exec_id.is_empty() {
            "-"
        } else {
            &self.exec_id
        };
        writeln!(
            f,
            "{} {} {}",
            self.container_id,
            exec_id,
            self.kind.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for header in [
            StreamHeader::new("c1", "", StreamKind::Stdout),
            StreamHeader::new("c1", "e-2", StreamKind::Tty),
        ] {
            let line = header.to_string();
            assert!(line.ends_with('\n'));
            assert_eq!(StreamHeader::parse(&line), Ok(header));
        }
        assert_eq!(
            StreamHeader::parse("c - stdin"),
            Ok(StreamHeader::new("c", "", StreamKind::Stdin))
        );
    }

    #[test]
    fn refuses_malformed_lines() {
        assert_eq!(StreamHeader::parse("c -\n"), Err(HeaderError::Fields));
        assert_eq!(StreamHeader::parse("c  stdin\n"), Err(HeaderError::Fields));
        assert_eq!(
            StreamHeader::parse("c - stdin extra\n"),
            Err(HeaderError::Fields)
        );
        assert_eq!(
            StreamHeader::parse("c - stdio\n"),
            Err(HeaderError::Kind("stdio".into()))
        );
        let long = format!("{} - stdin\n", "c".repeat(MAX_HEADER_LEN));
        assert_eq!(StreamHeader::parse(&long), Err(HeaderError::TooLong));
    }
}
