//! How large a sandbox's VM is: the configured size, plus what its first
//! container asks for.

use oci_spec::runtime::Spec;

use crate::bundle::annotation;
use crate::config::Hypervisor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub vcpus: u8,
    pub memory_mib: u64,
}

impl Size {
    pub fn configured(hv: &Hypervisor) -> Self {
        Self {
            vcpus: hv.vcpus,
            memory_mib: hv.memory_mib,
        }
    }

    /// A container's VM: the configured size plus the container's memory
    /// limit, so that a limit larger than the default still fits.
    pub fn of_container(hv: &Hypervisor, spec: &Spec) -> Self {
        let mut size = Self::configured(hv);
        if let Some(limit) = memory_limit(spec) {
            size.memory_mib += limit.div_ceil(1 << 20);
        }
        size
    }

    /// A pod's VM, for its sandbox container's `spec`: as a container's,
    /// plus the pod's resources as CRI annotates them: the pod's memory,
    /// and as many more vCPUs as its CPU quota spans whole periods
    /// (rounded up).
    pub fn of_pod(hv: &Hypervisor, spec: &Spec) -> Self {
        let mut size = Self::of_container(hv, spec);
        let annotation = |key: &str| -> Option<u64> { annotation(spec, key)?.parse().ok() };
        if let Some(bytes) = annotation("io.kubernetes.cri.sandbox-memory") {
            size.memory_mib += bytes.div_ceil(1 << 20);
        }
        let quota = annotation("io.kubernetes.cri.sandbox-cpu-quota");
        let period = annotation("io.kubernetes.cri.sandbox-cpu-period");
        if let (Some(quota), Some(period)) = (quota, period) {
            if quota > 0 && period > 0 {
                let extra = u8::try_from(quota.div_ceil(period)).unwrap_or(u8::MAX);
                size.vcpus = size.vcpus.saturating_add(extra);
            }
        }
        size
    }
}

/// The memory limit of the container of `spec`, when it has one.
pub fn memory_limit(spec: &Spec) -> Option<u64> {
    let limit = spec
        .linux()
        .as_ref()?
        .resources()
        .as_ref()?
        .memory()
        .as_ref()?
        .limit()?;
    u64::try_from(limit).ok().filter(|&l| l > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::spec_of;
    use serde_json::json;

    fn hv() -> Hypervisor {
        Hypervisor {
            vcpus: 1,
            memory_mib: 256,
            ..Hypervisor::default()
        }
    }

    #[test]
    fn a_containers_memory_limit_adds_to_the_configured_size() {
        let limited = spec_of(json!({"linux": {"resources": {"memory": {"limit": 100 << 20}}}}));
        assert_eq!(Size::of_container(&hv(), &limited).memory_mib, 356);
        let unlimited = spec_of(json!({"linux": {"resources": {"memory": {"limit": -1}}}}));
        assert_eq!(Size::of_container(&hv(), &unlimited).memory_mib, 256);
    }

    #[test]
    fn the_pod_annotations_add_to_the_configured_size() {
        let sized = Size::of_pod(
            &hv(),
            &spec_of(json!({"annotations": {
                "io.kubernetes.cri.sandbox-memory": "134217728",
                "io.kubernetes.cri.sandbox-cpu-quota": "150000",
                "io.kubernetes.cri.sandbox-cpu-period": "100000",
            }})),
        );
        assert_eq!((sized.vcpus, sized.memory_mib), (3, 384));
        // No quota ("-1" or absent) and no memory: the configured size.
        let plain = Size::of_pod(
            &hv(),
            &spec_of(
                json!({"annotations": {"io.kubernetes.cri.sandbox-cpu-quota": "-1",
                                    "io.kubernetes.cri.sandbox-cpu-period": "100000"}}),
            ),
        );
        assert_eq!((plain.vcpus, plain.memory_mib), (1, 256));
    }
}
