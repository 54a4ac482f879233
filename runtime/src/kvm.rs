//! What kind of KVM this host has: hardware virtualization (VMX/SVM), PVM
//! (pagetable-based, which runs only PVM-enabled guest kernels), or none.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// /dev/kvm backed by VMX or SVM: standard guest kernels boot.
    Hardware,
    /// /dev/kvm from the kvm_pvm module: a standard guest kernel cannot
    /// boot, VM mode works only inside the emulated KVM host.
    Pvm,
    /// /dev/kvm exists but neither VMX/SVM nor PVM was recognised.
    Unknown,
    Absent,
}

impl KvmKind {
    pub fn describe(self) -> &'static str {
        match self {
            KvmKind::Hardware => "hardware-backed (VMX/SVM)",
            KvmKind::Pvm => "PVM (kvm_pvm): cannot boot a standard guest kernel",
            KvmKind::Unknown => "present, backend not recognised",
            KvmKind::Absent => "absent",
        }
    }
}

/// Detects the KVM kind from the files under `root` (`/` on a real host).
pub fn detect(root: &Path) -> KvmKind {
    if !root.join("dev/kvm").exists() {
        return KvmKind::Absent;
    }
    let module = |name: &str| root.join("sys/module").join(name).exists();
    if module("kvm_pvm") {
        return KvmKind::Pvm;
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let has_flag = |flag: &str| {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == flag))
    };
    if (has_flag("vmx") && module("kvm_intel")) || (has_flag("svm") && module("kvm_amd")) {
        return KvmKind::Hardware;
    }
    KvmKind::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_root(kvm: bool, modules: &[&str], flags: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("dev")).unwrap();
        fs::create_dir_all(root.join("proc")).unwrap();
        if kvm {
            fs::write(root.join("dev/kvm"), "").unwrap();
        }
        for m in modules {
            fs::create_dir_all(root.join("sys/module").join(m)).unwrap();
        }
        fs::write(
            root.join("proc/cpuinfo"),
            format!("processor : 0\nflags\t\t: fpu {flags} sse\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn tells_the_kinds_apart() {
        assert_eq!(
            detect(fake_root(false, &["kvm"], "vmx").path()),
            KvmKind::Absent
        );
        assert_eq!(
            detect(fake_root(true, &["kvm", "kvm_pvm"], "hypervisor").path()),
            KvmKind::Pvm
        );
        assert_eq!(
            detect(fake_root(true, &["kvm", "kvm_intel"], "vmx").path()),
            KvmKind::Hardware
        );
        assert_eq!(
            detect(fake_root(true, &["kvm", "kvm_amd"], "svm").path()),
            KvmKind::Hardware
        );
        assert_eq!(
            detect(fake_root(true, &["kvm"], "vmx").path()),
            KvmKind::Unknown
        );
        // A flag name inside another flag does not count.
        assert_eq!(
            detect(fake_root(true, &["kvm_amd"], "svm_lock").path()),
            KvmKind::Unknown
        );
    }

    #[test]
    fn this_host_is_detected_without_error() {
        let kind = detect(Path::new("/"));
        assert!(!kind.describe().is_empty());
    }
}
