//! The tc plumbing between a pod interface and its tap: an ingress qdisc
//! and a mirred redirect each way.

use std::process::Command;

use super::error::Result;
use super::iproute2::{json_of, run};

/// The preference of the redirect filters kata-rs adds, so that they come
/// off again without touching a CNI plugin's own filters.
const FILTER_PREF: &str = "19282";

/// Whether interface `name` has an ingress hook already: an ingress or a
/// clsact qdisc (as eBPF-based CNI plugins attach), which must not be
/// replaced.
pub fn has_ingress_hook(name: &str) -> Result<bool> {
    let qdiscs = json_of("tc", &["-j", "qdisc", "show", "dev", name])?;
    Ok(qdiscs
        .as_array()
        .into_iter()
        .flatten()
        .any(|q| q["kind"] == "ingress" || q["kind"] == "clsact"))
}

/// Everything arriving on `from` leaves through `to`; `add_qdisc` when
/// `from` has no ingress hook yet.
pub fn redirect(from: &str, to: &str, add_qdisc: bool) -> Result<()> {
    if add_qdisc {
        run(Command::new("tc").args(["qdisc", "add", "dev", from, "ingress"]))?;
    }
    run(Command::new("tc").args([
        "filter",
        "add",
        "dev",
        from,
        "ingress",
        "pref",
        FILTER_PREF,
        "protocol",
        "all",
        "u32",
        "match",
        "u8",
        "0",
        "0",
        "action",
        "mirred",
        "egress",
        "redirect",
        "dev",
        to,
    ]))
}

/// Takes the redirect off `name`, with its ingress qdisc when that is ours
/// (`own_qdisc`).
pub fn unredirect(name: &str, own_qdisc: bool) -> Result<()> {
    if own_qdisc {
        run(Command::new("tc").args(["qdisc", "del", "dev", name, "ingress"]))
    } else {
        run(Command::new("tc").args(["filter", "del", "dev", name, "ingress", "pref", FILTER_PREF]))
    }
}
