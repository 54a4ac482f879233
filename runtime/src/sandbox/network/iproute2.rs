//! Running iproute2's `ip` and `tc` in the calling thread's network
//! namespace.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// What `program` (ip or tc, with -j) prints, as JSON.
pub fn json_of(program: &str, args: &[&str]) -> Result<Value> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program} (iproute2)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{program} {}: not JSON", args.join(" ")))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let what = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
