//! Running iproute2's `ip` and `tc` in the calling thread's network
//! namespace.

use std::process::Command;

use serde_json::Value;

use super::error::{NetworkError, Result};

/// What `program` (ip or tc, with -j) prints, as JSON.
pub fn json_of(program: &str, args: &[&str]) -> Result<Value> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|cause| NetworkError::Spawn {
            what: format!("{program} (iproute2)"),
            cause,
        })?;
    let what = || format!("{program} {}", args.join(" "));
    if !out.status.success() {
        return Err(refused(what(), &out.stderr));
    }
    serde_json::from_slice(&out.stdout).map_err(|cause| NetworkError::NotJson {
        what: what(),
        cause,
    })
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let what = format!("{cmd:?}").replace('"', "");
    let out = match cmd.output() {
        Ok(out) => out,
        Err(cause) => return Err(NetworkError::Spawn { what, cause }),
    };
    if !out.status.success() {
        return Err(refused(what, &out.stderr));
    }
    Ok(())
}

fn refused(what: String, stderr: &[u8]) -> NetworkError {
    NetworkError::Refused {
        what,
        stderr: String::from_utf8_lossy(stderr).trim().to_owned(),
    }
}
