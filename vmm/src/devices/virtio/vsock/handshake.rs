//! The hybrid-vsock handshake a host process sends after connecting to the
//! VMM's Unix socket: `CONNECT <port>\n`.
//!
//! The line is fed one byte at a time so that nothing after the newline is
//! consumed: those bytes are stream data for the guest.

/// The longest accepted handshake line, newline included. `CONNECT
/// 4294967295\n` is 19 bytes; the slack tolerates extra spaces.
pub const MAX_LINE: usize = 32;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("no newline within {MAX_LINE} bytes")]
    TooLong,
    #[error("expected `CONNECT <port>`, got {0:?}")]
    Malformed(String),
    #[error("invalid vsock port {0:?}")]
    BadPort(String),
}

/// Accumulates the handshake line until its newline.
#[derive(Debug, Default)]
pub struct LineParser {
    line: Vec<u8>,
}

impl LineParser {
    /// Feeds one byte; returns the port once the line is complete.
    pub fn push(&mut self, byte: u8) -> Result<Option<u32>, HandshakeError> {
        if byte == b'\n' {
            return parse_connect(&self.line).map(Some);
        }
        // One byte is kept for the newline itself.
        if self.line.len() + 1 >= MAX_LINE {
            return Err(HandshakeError::TooLong);
        }
        self.line.push(byte);
        Ok(None)
    }
}

/// Parses `CONNECT <port>` (without the newline).
pub fn parse_connect(line: &[u8]) -> Result<u32, HandshakeError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| HandshakeError::Malformed(String::from_utf8_lossy(line).into_owned()))?;
    let mut words = text.split_ascii_whitespace();
    let (Some("CONNECT"), Some(port), None) = (words.next(), words.next(), words.next()) else {
        return Err(HandshakeError::Malformed(text.to_owned()));
    };
    let bad_port = || HandshakeError::BadPort(port.to_owned());
    // Only plain decimal digits: `u32::from_str` would also accept a `+`.
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_port());
    }
    let port: u32 = port.parse().map_err(|_| bad_port())?;
    // u32::MAX is VMADDR_PORT_ANY, not a port one can connect to.
    if port == u32::MAX {
        return Err(bad_port());
    }
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(input: &[u8]) -> Result<Option<u32>, HandshakeError> {
        let mut parser = LineParser::default();
        for &b in input {
            if let Some(port) = parser.push(b)? {
                return Ok(Some(port));
            }
        }
        Ok(None)
    }

    #[test]
    fn accepts_valid_lines() {
        assert_eq!(feed(b"CONNECT 1024\n"), Ok(Some(1024)));
        assert_eq!(feed(b"CONNECT 0\n"), Ok(Some(0)));
        assert_eq!(feed(b"CONNECT 4294967294\n"), Ok(Some(u32::MAX - 1)));
        assert_eq!(feed(b"CONNECT  52 \r\n"), Ok(Some(52)));
    }

    #[test]
    fn waits_for_the_newline() {
        assert_eq!(feed(b"CONNECT 1024"), Ok(None));
    }

    #[test]
    fn stops_at_the_newline() {
        let mut parser = LineParser::default();
        let mut result = None;
        for &b in b"CONNECT 7\nDATA" {
            if let Some(port) = parser.push(b).unwrap() {
                result = Some(port);
                break;
            }
        }
        assert_eq!(result, Some(7));
    }

    #[test]
    fn rejects_oversized_lines() {
        assert_eq!(feed(&[b' '; 64]), Err(HandshakeError::TooLong));
        let long = format!("CONNECT {}\n", "0".repeat(40));
        assert_eq!(feed(long.as_bytes()), Err(HandshakeError::TooLong));
    }

    #[test]
    fn rejects_garbage() {
        for line in [
            &b"\n"[..],
            b"connect 1024\n",
            b"CONNECT\n",
            b"LISTEN 1024\n",
            b"CONNECT 1 2\n",
            b"\xff\xfe 1\n",
        ] {
            assert!(
                matches!(feed(line), Err(HandshakeError::Malformed(_))),
                "{line:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_ports() {
        for line in [
            &b"CONNECT 4294967295\n"[..],
            b"CONNECT 4294967296\n",
            b"CONNECT -1\n",
            b"CONNECT +5\n",
            b"CONNECT 0x10\n",
            b"CONNECT port\n",
        ] {
            assert!(
                matches!(feed(line), Err(HandshakeError::BadPort(_))),
                "{line:?}"
            );
        }
    }
}
