//! The spec a pod's agent runs, rewritten from the bundle's: pure
//! functions of the spec.

use std::path::Path;

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Root, Spec};

use crate::sandbox::share;

/// The spec as the host agent runs it: the bundle's, with the root and
/// relative bind mount sources made absolute (they are the bundle's, and
/// the agent's directory is not).
pub fn host_spec(bundle: &Path, spec: &Spec) -> Spec {
    let mut spec = spec.clone();
    let root = spec.root_mut().get_or_insert_with(|| {
        let mut root = Root::default();
        root.set_readonly(None);
        root
    });
    if root.path().is_relative() {
        root.set_path(bundle.join(root.path()));
    }
    for m in spec.mounts_mut().iter_mut().flatten() {
        if !share::is_bind(m) {
            continue;
        }
        if let Some(source) = m.source().as_ref().filter(|s| s.is_relative()) {
            m.set_source(Some(bundle.join(source)));
        }
    }
    spec
}

/// The pod's containers live in the guest's own network namespace, which
/// the pod's network is set up in (the VM is the pod's network boundary):
/// the guest spec asks for no namespace of their own, whatever the host
/// spec says.
pub fn use_pod_network(guest: &mut Spec) {
    if let Some(namespaces) = namespaces_mut(guest) {
        namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
    }
}

/// A pod's container shares the sandbox's IPC and UTS (and PID, where the
/// pod shares it) namespaces: CRI names them by host paths (in `spec`),
/// which mean nothing in the guest, so the `guest` spec names those of the
/// sandbox's init, `sandbox_pid` in the guest, instead.
pub fn join_sandbox_namespaces(spec: &Spec, guest: &mut Spec, sandbox_pid: i32) {
    let joined = |kind: LinuxNamespaceType| {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|n| n.iter().any(|ns| ns.typ() == kind && ns.path().is_some()))
    };
    for ns in namespaces_mut(guest).into_iter().flatten() {
        let name = match ns.typ() {
            LinuxNamespaceType::Ipc => "ipc",
            LinuxNamespaceType::Uts => "uts",
            LinuxNamespaceType::Pid => "pid",
            _ => continue,
        };
        if joined(ns.typ()) {
            ns.set_path(Some(format!("/proc/{sandbox_pid}/ns/{name}").into()));
        }
    }
}

fn namespaces_mut(spec: &mut Spec) -> Option<&mut Vec<LinuxNamespace>> {
    spec.linux_mut().as_mut()?.namespaces_mut().as_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::spec_of;
    use serde_json::json;

    #[test]
    fn pod_containers_ask_for_no_network_namespace_of_their_own() {
        let mut guest = spec_of(json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network"}, {"type": "ipc"}]}}));
        use_pod_network(&mut guest);
        assert_eq!(
            serde_json::to_value(guest).unwrap()["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc"}])
        );
    }

    #[test]
    fn the_sandboxs_namespaces_are_named_in_the_guest() {
        let spec = spec_of(json!({"linux": {"namespaces": [
            {"type": "ipc", "path": "/proc/77/ns/ipc"},
            {"type": "uts", "path": "/proc/77/ns/uts"},
            {"type": "pid"}, {"type": "mount"}]}}));
        let mut guest = spec_of(json!({"linux": {"namespaces": [
            {"type": "ipc"}, {"type": "uts"}, {"type": "pid"}, {"type": "mount"}]}}));
        join_sandbox_namespaces(&spec, &mut guest, 9);
        assert_eq!(
            serde_json::to_value(guest).unwrap()["linux"]["namespaces"],
            json!([{"type": "ipc", "path": "/proc/9/ns/ipc"},
                   {"type": "uts", "path": "/proc/9/ns/uts"},
                   {"type": "pid"}, {"type": "mount"}])
        );
    }

    #[test]
    fn the_host_agent_gets_the_bundles_paths_made_absolute() {
        let spec = spec_of(json!({"root": {"path": "rootfs"}, "mounts": [
            {"destination": "/data", "type": "bind", "source": "data"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts"},
            {"destination": "/proc", "type": "proc", "source": "proc"}]}));
        let host = serde_json::to_value(host_spec(Path::new("/b"), &spec)).unwrap();
        assert_eq!(host["root"]["path"], "/b/rootfs");
        assert_eq!(host["mounts"][0]["source"], "/b/data");
        assert_eq!(host["mounts"][1]["source"], "/etc/hosts");
        assert_eq!(host["mounts"][2]["source"], "proc");
    }
}
