//! A process's memory cgroup on the host as the kernel reports it, and what
//! is in it: for tests of what a runtime's limits hold.

use std::path::{Path, PathBuf};

/// The directory of process `pid`'s memory cgroup: under the unified
/// hierarchy on cgroup v2, under the memory controller's on v1.
pub fn memory_cgroup_of(pid: u32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/cgroup: {e}"));
    let path = if v2() {
        text.lines().find_map(|l| l.strip_prefix("0::"))
    } else {
        text.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path)
        })
    }
    .unwrap_or_else(|| panic!("process {pid} has no memory cgroup:\n{text}"));
    memory_root().join(path.trim_start_matches('/'))
}

fn v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Where the memory controller's hierarchy is mounted.
pub fn memory_root() -> PathBuf {
    if v2() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    }
}

fn read(dir: &Path, v2_file: &str, v1_file: &str) -> Option<String> {
    let file = if v2() { v2_file } else { v1_file };
    std::fs::read_to_string(dir.join(file))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The cgroup's own memory limit in bytes; None where it has none.
pub fn memory_limit(dir: &Path) -> Option<u64> {
    read(dir, "memory.max", "memory.limit_in_bytes")?
        .parse()
        .ok()
        .filter(|bytes| *bytes < 1 << 62)
}

/// Sets the cgroup's memory limit, making the cgroup (and, on v2, turning
/// the memory controller on above it) as the kubelet does for a pod.
pub fn make_with_memory_limit(dir: &Path, bytes: u64) {
    if v2() {
        let mut above = dir.parent();
        let mut parents = Vec::new();
        while let Some(p) = above.filter(|p| p.starts_with(memory_root())) {
            parents.push(p.to_owned());
            above = p.parent();
        }
        for parent in parents.iter().rev() {
            std::fs::create_dir_all(parent).unwrap();
            std::fs::write(parent.join("cgroup.subtree_control"), "+memory").unwrap();
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    limit_memory(dir, bytes);
}

/// Sets the cgroup's memory limit. On cgroup v2 a limit below what the
/// cgroup uses has the OOM killer make room at once.
pub fn limit_memory(dir: &Path, bytes: u64) {
    let file = if v2() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    std::fs::write(dir.join(file), bytes.to_string())
        .unwrap_or_else(|e| panic!("limit {} to {bytes}: {e}", dir.display()));
}

/// Whether the host runs cgroup v2 (unified).
pub fn unified() -> bool {
    v2()
}

/// The memory charged to the cgroup, in bytes.
pub fn memory_usage(dir: &Path) -> u64 {
    read(dir, "memory.current", "memory.usage_in_bytes")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The processes in the cgroup itself: pid and command line.
pub fn members(dir: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .map(|pid: u32| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            (pid, cmdline)
        })
        .collect()
}

/// Process `pid`'s anonymous resident memory in bytes: pages it touched
/// itself, charged to the cgroup it was in when it touched them.
pub fn rss_anon(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// The OOM killer's kills in the cgroup and below it.
pub fn oom_kills(dir: &Path) -> u64 {
    read(dir, "memory.events", "memory.oom_control")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
