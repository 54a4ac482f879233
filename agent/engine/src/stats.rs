//! Cgroup statistics as `runc events --stats` prints them: containerd's runc
//! shim decodes exactly this shape (github.com/opencontainers/runc/types).

use std::collections::HashMap;
use std::path::Path;

use libcgroups::stats::{BlkioDeviceStat, MemoryData, Stats};
use serde_json::{json, Value};

fn memory_entry(m: &MemoryData) -> Value {
    json!({"limit": m.limit, "usage": m.usage, "max": m.max_usage, "failcnt": m.fail_count})
}

fn blkio_entries(entries: &[BlkioDeviceStat]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                json!({"major": e.major, "minor": e.minor,
                       "op": e.op_type.clone().unwrap_or_default(), "value": e.value})
            })
            .collect(),
    )
}

pub fn runc_json(s: &Stats) -> Value {
    let hugetlb: serde_json::Map<String, Value> = s
        .hugetlb
        .iter()
        .map(|(size, h)| {
            (
                size.clone(),
                json!({"usage": h.usage, "max": h.max_usage, "failcnt": h.fail_count}),
            )
        })
        .collect();
    json!({
        "cpu": {
            "usage": {
                "total": s.cpu.usage.usage_total,
                "percpu": s.cpu.usage.per_core_usage_total,
                "kernel": s.cpu.usage.usage_kernel,
                "user": s.cpu.usage.usage_user,
            },
            "throttling": {
                "periods": s.cpu.throttling.periods,
                "throttledPeriods": s.cpu.throttling.throttled_periods,
                "throttledTime": s.cpu.throttling.throttled_time,
            },
        },
        "memory": {
            "cache": s.memory.cache,
            "usage": memory_entry(&s.memory.memory),
            "swap": memory_entry(&s.memory.memswap),
            "kernel": memory_entry(&s.memory.kernel),
            "kernelTCP": memory_entry(&s.memory.kernel_tcp),
            "raw": s.memory.stats,
        },
        "pids": {"current": s.pids.current, "limit": s.pids.limit},
        "blkio": {
            "ioServiceBytesRecursive": blkio_entries(&s.blkio.service_bytes),
            "ioServicedRecursive": blkio_entries(&s.blkio.serviced),
            "ioTimeRecursive": blkio_entries(&s.blkio.time),
            "sectorsRecursive": blkio_entries(&s.blkio.sectors),
        },
        "hugetlb": hugetlb,
    })
}

/// The statistics of the cgroup v2 directory `dir`, read from its files.
/// libcgroups reads the pressure (PSI) files too and fails where the kernel
/// has none, as the guest's has not; these figures do not need them.
pub fn read_v2(dir: &Path) -> std::io::Result<Stats> {
    if !dir.join("cgroup.procs").exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a cgroup v2 directory",
        ));
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    // A missing file is a missing controller: its figures stay zero.
    let keyed = |name: &str| -> HashMap<String, u64> {
        read(name)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect()
    };
    // "max" is no limit, which runc reports as the largest value.
    let single = |name: &str| -> u64 {
        match read(name) {
            Ok(text) if text.trim() == "max" => u64::MAX,
            Ok(text) => text.trim().parse().unwrap_or_default(),
            Err(_) => 0,
        }
    };
    let mut s = Stats::default();
    let cpu = keyed("cpu.stat");
    let us = |k: &str| cpu.get(k).copied().unwrap_or_default();
    s.cpu.usage.usage_total = us("usage_usec") * 1000;
    s.cpu.usage.usage_user = us("user_usec") * 1000;
    s.cpu.usage.usage_kernel = us("system_usec") * 1000;
    s.cpu.throttling.periods = us("nr_periods");
    s.cpu.throttling.throttled_periods = us("nr_throttled");
    s.cpu.throttling.throttled_time = us("throttled_usec") * 1000;
    s.memory.memory.usage = single("memory.current");
    s.memory.memory.limit = single("memory.max");
    s.memory.memory.max_usage = single("memory.peak");
    s.memory.memory.fail_count = keyed("memory.events")
        .get("max")
        .copied()
        .unwrap_or_default();
    s.memory.memswap.usage = single("memory.swap.current");
    s.memory.memswap.limit = single("memory.swap.max");
    s.memory.stats = keyed("memory.stat");
    s.memory.cache = s.memory.stats.get("file").copied().unwrap_or_default();
    s.pids.current = single("pids.current");
    s.pids.limit = single("pids.max");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v2_cgroup_directory_without_pressure_files_gives_its_figures() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        assert!(
            read_v2(dir.path()).is_err(),
            "an empty directory is no cgroup"
        );
        write("cgroup.procs", "");
        write(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 2\n",
        );
        write("memory.current", "4096\n");
        write("memory.max", "max\n");
        write("memory.stat", "anon 100\nfile 200\n");
        write("pids.current", "3\n");
        write("pids.max", "10\n");
        let v = runc_json(&read_v2(dir.path()).unwrap());
        assert_eq!(v["cpu"]["usage"]["total"], 1_500_000);
        assert_eq!(v["cpu"]["usage"]["kernel"], 500_000);
        assert_eq!(v["memory"]["usage"]["usage"], 4096);
        assert_eq!(v["memory"]["usage"]["limit"], u64::MAX);
        assert_eq!(v["memory"]["raw"]["anon"], 100);
        assert_eq!(v["memory"]["cache"], 200);
        assert_eq!(
            (v["pids"]["current"].as_u64(), v["pids"]["limit"].as_u64()),
            (Some(3), Some(10))
        );
    }

    #[test]
    fn memory_and_pids_land_where_runc_puts_them() {
        let mut s = Stats::default();
        s.memory.memory.usage = 4096;
        s.memory.memory.limit = 1 << 20;
        s.pids.current = 3;
        let v = runc_json(&s);
        assert_eq!(v["memory"]["usage"]["usage"], 4096);
        assert_eq!(v["memory"]["usage"]["limit"], 1 << 20);
        assert_eq!(v["pids"]["current"], 3);
        assert!(v["cpu"]["usage"]["percpu"].is_array());
    }
}
