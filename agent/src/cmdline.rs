//! The agent's keys on the kernel command line.
//!
//! The VMM configures the agent through `/proc/cmdline`, because PID 1 gets
//! no other channel before its server is up.

/// Settings read from the kernel command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelParams {
    /// `agent.log=<level>`: `off`, `error`, `warn`, `info`, `debug` or
    /// `trace`; validated where logging is set up.
    pub log: Option<String>,
}

impl KernelParams {
    /// Parses a command line as the kernel exposes it in `/proc/cmdline`.
    /// Unknown keys belong to the kernel or to others and are ignored; when
    /// a key repeats the last one wins, as the kernel does for its own.
    pub fn parse(cmdline: &str) -> Self {
        let mut params = Self::default();
        for word in cmdline.split_ascii_whitespace() {
            if let Some(value) = word.strip_prefix("agent.log=") {
                params.log = Some(value.to_owned());
            }
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_log_among_kernel_keys() {
        let p = KernelParams::parse("console=ttyS0 reboot=k agent.log=debug panic=1\n");
        assert_eq!(p.log.as_deref(), Some("debug"));
    }

    #[test]
    fn absent_key_is_none() {
        assert_eq!(
            KernelParams::parse("console=ttyS0 quiet"),
            KernelParams::default()
        );
        assert_eq!(KernelParams::parse(""), KernelParams::default());
    }

    #[test]
    fn last_occurrence_wins_and_prefixes_do_not_match() {
        let p = KernelParams::parse("agent.log=info xagent.log=trace agent.log=warn");
        assert_eq!(p.log.as_deref(), Some("warn"));
        let p = KernelParams::parse("agent.logx=debug agent.log");
        assert_eq!(p.log, None);
    }
}
