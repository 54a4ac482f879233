//! The agent's container statistics (the JSON of `runc events --stats`)
//! as containerd wants them from a shim: cgroup v2 metrics, the guest's
//! cgroup hierarchy, in a protobuf Any.

use anyhow::Result;
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use serde_json::Value;

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_default()
}

pub fn metrics(stats: &Value) -> Metrics {
    let cpu = &stats["cpu"];
    let memory = &stats["memory"];
    let raw = &memory["raw"];
    Metrics {
        pids: MessageField::some(PidsStat {
            current: n(&stats["pids"]["current"]),
            limit: n(&stats["pids"]["limit"]),
            ..Default::default()
        }),
        // runc's figures are in nanoseconds; cgroup v2's in microseconds.
        cpu: MessageField::some(CPUStat {
            usage_usec: n(&cpu["usage"]["total"]) / 1000,
            user_usec: n(&cpu["usage"]["user"]) / 1000,
            system_usec: n(&cpu["usage"]["kernel"]) / 1000,
            nr_periods: n(&cpu["throttling"]["periods"]),
            nr_throttled: n(&cpu["throttling"]["throttledPeriods"]),
            throttled_usec: n(&cpu["throttling"]["throttledTime"]) / 1000,
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: n(&memory["usage"]["usage"]),
            usage_limit: n(&memory["usage"]["limit"]),
            max_usage: n(&memory["usage"]["max"]),
            swap_usage: n(&memory["swap"]["usage"]),
            swap_limit: n(&memory["swap"]["limit"]),
            anon: n(&raw["anon"]),
            file: n(&raw["file"]),
            kernel_stack: n(&raw["kernel_stack"]),
            slab: n(&raw["slab"]),
            sock: n(&raw["sock"]),
            shmem: n(&raw["shmem"]),
            file_mapped: n(&raw["file_mapped"]),
            inactive_anon: n(&raw["inactive_anon"]),
            active_anon: n(&raw["active_anon"]),
            inactive_file: n(&raw["inactive_file"]),
            active_file: n(&raw["active_file"]),
            pgfault: n(&raw["pgfault"]),
            pgmajfault: n(&raw["pgmajfault"]),
            ..Default::default()
        }),
        // The engine's count of the OOM killer's kills in the cgroup.
        memory_events: MessageField::some(MemoryEvents {
            oom_kill: n(&raw["oom_kill"]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn to_metrics_any(stats: &Value) -> Result<Any> {
    let m = metrics(stats);
    Ok(containerd_shim::util::convert_to_any(Box::new(m))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runc_figures_become_cgroup_v2_metrics() {
        let stats = json!({
            "cpu": {"usage": {"total": 5_000_000, "user": 3_000_000, "kernel": 2_000_000},
                    "throttling": {"periods": 4, "throttledPeriods": 1, "throttledTime": 7000}},
            "memory": {"usage": {"usage": 4096, "limit": 1 << 20, "max": 8192},
                       "raw": {"anon": 100, "file": 200, "oom_kill": 2}},
            "pids": {"current": 3, "limit": 10},
        });
        let m = metrics(&stats);
        assert_eq!(
            (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec),
            (5000, 3000, 2000)
        );
        assert_eq!(m.cpu.throttled_usec, 7);
        assert_eq!(
            (m.memory.usage, m.memory.usage_limit, m.memory.anon),
            (4096, 1 << 20, 100)
        );
        assert_eq!((m.pids.current, m.pids.limit), (3, 10));
        assert_eq!(m.memory_events.oom_kill, 2);
        let any = to_metrics_any(&stats).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    }
}
