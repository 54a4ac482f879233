//! `kata-rs check`: what this host can run, and why.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::{resolve_program, Config};
use crate::kvm::{self, KvmKind};

/// One component the runtime needs, and where it was (or was not) found.
#[derive(Debug)]
pub struct Component {
    pub name: &'static str,
    pub configured: PathBuf,
    pub found: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    VmNative,
    VmEmulatedHostOnly,
    VmMissingComponents,
    NamespaceOnly,
}

impl Verdict {
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::VmNative => "VM mode runs natively on this host's KVM; namespace mode is available too",
            Verdict::VmEmulatedHostOnly => {
                "VM mode only through the emulated KVM host (tests/emulated-host); namespace mode runs natively"
            }
            Verdict::VmMissingComponents => {
                "VM mode would run on this host's KVM, but components are missing (see above); namespace mode runs natively"
            }
            Verdict::NamespaceOnly => "no usable KVM: namespace mode only",
        }
    }
}

#[derive(Debug)]
pub struct Report {
    pub kvm: KvmKind,
    pub components: Vec<Component>,
    pub verdict: Verdict,
}

pub fn inspect(config: &Config, root: &Path) -> Report {
    let kvm = kvm::detect(root);
    let file = |p: &Path| p.is_file().then(|| p.to_path_buf());
    let components = vec![
        Component {
            name: "vmm",
            configured: config.hypervisor.vmm.clone(),
            found: resolve_program(&config.hypervisor.vmm),
        },
        Component {
            name: "guest kernel",
            configured: config.hypervisor.kernel.clone(),
            found: file(&config.hypervisor.kernel),
        },
        Component {
            name: "initrd",
            configured: config.hypervisor.initrd.clone(),
            found: file(&config.hypervisor.initrd),
        },
        Component {
            name: "virtiofsd",
            configured: config.virtiofsd.path.clone(),
            found: resolve_program(&config.virtiofsd.path),
        },
    ];
    let complete = components.iter().all(|c| c.found.is_some());
    let verdict = match kvm {
        KvmKind::Hardware if complete => Verdict::VmNative,
        KvmKind::Hardware => Verdict::VmMissingComponents,
        KvmKind::Pvm | KvmKind::Unknown => Verdict::VmEmulatedHostOnly,
        KvmKind::Absent => Verdict::NamespaceOnly,
    };
    Report {
        kvm,
        components,
        verdict,
    }
}

impl Report {
    pub fn render(&self, config_path: Option<&Path>) -> String {
        let mut out = String::new();
        let config = config_path.map_or("built-in defaults".into(), |p| p.display().to_string());
        let _ = writeln!(out, "configuration: {config}");
        let _ = writeln!(out, "/dev/kvm: {}", self.kvm.describe());
        for c in &self.components {
            let state = match &c.found {
                Some(path) => format!("found at {}", path.display()),
                None => format!("NOT FOUND (configured: {})", c.configured.display()),
            };
            let _ = writeln!(out, "{}: {state}", c.name);
        }
        let _ = writeln!(out, "verdict: {}", self.verdict.describe());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_components_are_reported_by_name() {
        let mut config = Config::default();
        config.hypervisor.kernel = "/nonexistent/vmlinux".into();
        config.hypervisor.vmm = "/bin/sh".into();
        let report = inspect(&config, Path::new("/nonexistent-root"));
        assert_eq!(report.kvm, KvmKind::Absent);
        assert_eq!(report.verdict, Verdict::NamespaceOnly);
        let text = report.render(None);
        assert!(
            text.contains("guest kernel: NOT FOUND (configured: /nonexistent/vmlinux)"),
            "{text}"
        );
        assert!(text.contains("vmm: found at /bin/sh"), "{text}");
        assert!(text.contains("configuration: built-in defaults"), "{text}");
    }
}
