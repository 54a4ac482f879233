//! The spec a pod's agent runs, rewritten from the bundle's: pure
//! functions of the spec.

use std::path::Path;

use serde_json::Value;

use crate::sandbox::share;

/// The spec as the host agent runs it: the bundle's, with the root and
/// relative bind mount sources made absolute (they are the bundle's, and
/// the agent's directory is not).
pub fn host_spec(bundle: &Path, spec: &Value) -> Value {
    let mut spec = spec.clone();
    let absolute = |path: &str| bundle.join(path).to_string_lossy().into_owned();
    let root = spec["root"]["path"].as_str().unwrap_or("rootfs").to_owned();
    if Path::new(&root).is_relative() {
        spec["root"]["path"] = absolute(&root).into();
    }
    for m in spec["mounts"].as_array_mut().into_iter().flatten() {
        if !share::is_bind(m) {
            continue;
        }
        if let Some(source) = m["source"].as_str().filter(|s| Path::new(s).is_relative()) {
            m["source"] = absolute(source).into();
        }
    }
    spec
}

/// The pod's containers live in the guest's own network namespace, which
/// the pod's network is set up in (the VM is the pod's network boundary):
/// the guest spec asks for no namespace of their own, whatever the host
/// spec says.
pub fn use_pod_network(guest: &mut Value) {
    if let Some(namespaces) = guest["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|ns| ns["type"] != "network");
    }
}

/// A pod's container shares the sandbox's IPC and UTS (and PID, where the
/// pod shares it) namespaces: CRI names them by host paths (in `spec`),
/// which mean nothing in the guest, so the `guest` spec names those of the
/// sandbox's init, `sandbox_pid` in the guest, instead.
pub fn join_sandbox_namespaces(spec: &Value, guest: &mut Value, sandbox_pid: i32) {
    let joined = |kind: &str| {
        spec["linux"]["namespaces"].as_array().is_some_and(|n| {
            n.iter()
                .any(|ns| ns["type"] == kind && ns.get("path").is_some())
        })
    };
    let Some(namespaces) = guest["linux"]["namespaces"].as_array_mut() else {
        return;
    };
    for ns in namespaces {
        let kind = ns["type"].as_str().unwrap_or_default().to_owned();
        if matches!(kind.as_str(), "ipc" | "uts" | "pid") && joined(&kind) {
            ns["path"] = format!("/proc/{sandbox_pid}/ns/{kind}").into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_containers_ask_for_no_network_namespace_of_their_own() {
        let mut guest = json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network"}, {"type": "ipc"}]}});
        use_pod_network(&mut guest);
        assert_eq!(
            guest["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc"}])
        );
    }

    #[test]
    fn the_sandboxs_namespaces_are_named_in_the_guest() {
        let spec = json!({"linux": {"namespaces": [
            {"type": "ipc", "path": "/proc/77/ns/ipc"},
            {"type": "uts", "path": "/proc/77/ns/uts"},
            {"type": "pid"}, {"type": "mount"}]}});
        let mut guest = json!({"linux": {"namespaces": [
            {"type": "ipc"}, {"type": "uts"}, {"type": "pid"}, {"type": "mount"}]}});
        join_sandbox_namespaces(&spec, &mut guest, 9);
        assert_eq!(
            guest["linux"]["namespaces"],
            json!([{"type": "ipc", "path": "/proc/9/ns/ipc"},
                   {"type": "uts", "path": "/proc/9/ns/uts"},
                   {"type": "pid"}, {"type": "mount"}])
        );
    }

    #[test]
    fn the_host_agent_gets_the_bundles_paths_made_absolute() {
        let spec = json!({"root": {"path": "rootfs"}, "mounts": [
            {"destination": "/data", "type": "bind", "source": "data"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts"},
            {"destination": "/proc", "type": "proc", "source": "proc"}]});
        let host = host_spec(Path::new("/b"), &spec);
        assert_eq!(host["root"]["path"], "/b/rootfs");
        assert_eq!(host["mounts"][0]["source"], "/b/data");
        assert_eq!(host["mounts"][1]["source"], "/etc/hosts");
        assert_eq!(host["mounts"][2]["source"], "proc");
    }
}
