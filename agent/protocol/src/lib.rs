//! The agent protocol.
