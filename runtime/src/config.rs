//! The runtime's TOML configuration: where the VMM, guest kernel, initrd and
//! virtiofsd are, and how big a sandbox VM is by default.
//!
//! Looked up in order: `--config`, `$KATA_RS_CONFIG`,
//! /etc/kata-rs/configuration.toml; a missing default file means built-in
//! defaults, a missing explicit file is an error.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/kata-rs/configuration.toml";
pub const CONFIG_ENV: &str = "KATA_RS_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("annotation {annotation}: {0}", annotation = Isolation::ANNOTATION)]
    Annotation(String),
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hypervisor: Hypervisor,
    pub virtiofsd: Virtiofsd,
    pub runtime: Runtime,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Hypervisor {
    /// The `kata-rs-vmm` binary; a bare name is looked up in PATH.
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Host memory a sandbox needs beside its guest's RAM (the VMM,
    /// virtiofsd, the shim or monitor): what the sandbox's host cgroup
    /// keeps for them (see `host_cgroup`).
    pub host_overhead_mib: u64,
    /// Extra kernel command line arguments, appended to the VMM's defaults.
    pub kernel_params: String,
    /// The VMM's seccomp filters: `enforce` (a call outside a thread's
    /// filter kills the VMM), `log` (the kernel logs it), `off`.
    pub seccomp: Seccomp,
}

/// What a system call outside a VMM thread's seccomp filter does; the
/// VMM's `--seccomp`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Seccomp {
    #[default]
    Enforce,
    Log,
    Off,
}

impl std::fmt::Display for Seccomp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Seccomp::Enforce => "enforce",
            Seccomp::Log => "log",
            Seccomp::Off => "off",
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Virtiofsd {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    pub log_level: String,
    /// Where containers run unless `--isolation` or the container's
    /// `io.kata-rs.isolation` annotation says otherwise.
    pub isolation: Isolation,
    /// The agent binary the shim runs on the host for a pod in namespace
    /// isolation (the guest's agent, with --no-init).
    pub host_agent: PathBuf,
    /// Host cgroups through systemd (cgroupsPath "slice:prefix:name"), as
    /// runc's SystemdCgroup; false, the default, takes cgroupsPath as a
    /// cgroupfs path whatever its form, as runc does without it.
    pub systemd_cgroup: bool,
}

/// Where a container runs: in its own microVM, or on the host in
/// namespaces the way runc runs it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Vm,
    Namespace,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Vm => "vm",
            Isolation::Namespace => "namespace",
        })
    }
}

impl Isolation {
    /// The annotation of a container's spec that chooses its isolation.
    pub const ANNOTATION: &'static str = "io.kata-rs.isolation";

    /// The isolation the annotations of `spec` ask for, if any.
    pub fn annotated(spec: &oci_spec::runtime::Spec) -> Result<Option<Self>, ConfigError> {
        crate::bundle::annotation(spec, Self::ANNOTATION)
            .map(|value| value.parse().map_err(ConfigError::Annotation))
            .transpose()
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vm" => Ok(Isolation::Vm),
            "namespace" => Ok(Isolation::Namespace),
            other => Err(format!(
                "unknown isolation {other:?} (the choices are vm and namespace)"
            )),
        }
    }
}

impl Default for Hypervisor {
    fn default() -> Self {
        Self {
            vmm: PathBuf::from("/usr/local/bin/kata-rs-vmm"),
            kernel: PathBuf::from("/usr/local/share/kata-rs/vmlinux"),
            initrd: PathBuf::from("/usr/local/share/kata-rs/initrd.img"),
            vcpus: 1,
            memory_mib: 256,
            host_overhead_mib: 32,
            kernel_params: String::new(),
            seccomp: Seccomp::Enforce,
        }
    }
}

impl Default for Virtiofsd {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/usr/local/bin/virtiofsd"),
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            isolation: Isolation::Vm,
            host_agent: PathBuf::from("/usr/local/bin/kata-rs-agent"),
            systemd_cgroup: false,
        }
    }
}

impl Config {
    /// Loads the configuration from `explicit`, else `$KATA_RS_CONFIG`,
    /// else the default path (or built-in defaults when that is absent).
    pub fn load(explicit: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let chosen = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
        let path = match chosen {
            Some(path) => path,
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_PATH);
                if !default.exists() {
                    return Ok((Self::default(), None));
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.clone(),
            message,
        })?;
        Ok((config, Some(path)))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if config.hypervisor.vcpus == 0 {
            return Err("hypervisor.vcpus must be at least 1".into());
        }
        Ok(config)
    }
}

/// Resolves a configured program: a path with a slash is taken as is, a
/// bare name is searched in PATH.
pub fn resolve_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn the_installed_file_states_the_defaults() {
        let shipped = include_str!("../configuration.toml");
        assert_eq!(Config::parse(shipped).unwrap(), Config::default());
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = Config::parse("[hypervisor]\nvcpus = 2\nmemory_mib = 512\n").unwrap();
        assert_eq!((c.hypervisor.vcpus, c.hypervisor.memory_mib), (2, 512));
        assert_eq!(c.hypervisor.kernel, Hypervisor::default().kernel);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::parse("[hypervisor]\nvcpu = 2\n").unwrap_err();
        assert!(e.contains("vcpu"), "{e}");
        let e = Config::parse("[hypervisor]\nvcpus = \"two\"\n").unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = Config::parse("[hypervisor]\nvcpus = 0\n").unwrap_err();
        assert!(e.contains("vcpus"), "{e}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/kata.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/kata.toml"));
    }

    #[test]
    fn programs_resolve_by_path_or_name() {
        assert_eq!(
            resolve_program(Path::new("/bin/sh")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert!(resolve_program(Path::new("sh")).is_some());
        assert!(resolve_program(Path::new("/nonexistent/x")).is_none());
        assert!(resolve_program(Path::new("no-such-program-kata-rs")).is_none());
    }
}
