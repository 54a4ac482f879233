//! Cgroup statistics as `runc events --stats` prints them: containerd's runc
//! shim decodes exactly this shape (github.com/opencontainers/runc/types).

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

#[cfg(test)]
mod tests {
    use super::*;

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
