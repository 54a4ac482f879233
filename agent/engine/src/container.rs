//! One container, loaded and locked: the operations of its life cycle.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcgroups::common::{AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::ContainerStatus;
use libcontainer::error::LibcontainerError;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::Serialize;

use crate::error::{chain, EngineError, Result};
use crate::lock::IdLock;
use crate::oom::OomKills;
use crate::status::ContainerStatus as Status;

/// Runs a libcontainer call that reads the init's status, a second time if
/// the first failed in procfs: libcontainer checks that /proc/<pid> exists
/// and then reads its stat file, and an init reaped in between (by conmon, a
/// shim) fails the read. Asked again, it sees the init gone: stopped.
pub(crate) fn reaped_tolerant<T>(
    mut call: impl FnMut() -> std::result::Result<T, LibcontainerError>,
) -> std::result::Result<T, LibcontainerError> {
    match call() {
        Err(LibcontainerError::Procfs(e)) => {
            tracing::debug!(error = %e, "the init went away while its status was read; reading again");
            call()
        }
        other => other,
    }
}

/// The state of a container as the OCI runtime spec and runc print it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

/// What an exec runs, and how its caller reaches it.
#[derive(Debug, Default)]
pub struct ExecOptions {
    pub process: Process,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
    /// libcontainer's notion: a terminal then goes to `console_socket`
    /// (required), otherwise a console socket is refused. The process is
    /// the caller's child either way.
    pub detached: bool,
}

#[derive(Debug)]
pub struct Container {
    inner: libcontainer::container::Container,
    lock: IdLock,
}

impl Container {
    pub(crate) fn new(inner: libcontainer::container::Container, lock: IdLock) -> Self {
        Container { inner, lock }
    }

    pub fn id(&self) -> &str {
        self.inner.id()
    }

    /// The init's pid while it runs (or waits to start).
    pub fn pid(&self) -> Option<i32> {
        self.inner.pid().map(|p| p.as_raw())
    }

    pub fn status(&self) -> Status {
        self.inner.status().into()
    }

    pub fn bundle(&self) -> &Path {
        self.inner.bundle()
    }

    /// The bundle's config.json as the container was created from it.
    pub fn spec(&self) -> Result<Spec> {
        crate::engine::load_bundle_spec(self.id(), self.bundle())
    }

    pub fn state(&self) -> Result<OciState> {
        let spec = self.spec().ok();
        let rootfs = spec
            .as_ref()
            .and_then(|s| s.root().as_ref())
            .map(|r| self.bundle().join(r.path()))
            .unwrap_or_default();
        let stopped = self.inner.status() == ContainerStatus::Stopped;
        Ok(OciState {
            oci_version: "1.0.2".to_owned(),
            id: self.id().to_owned(),
            status: self.status(),
            pid: if stopped { 0 } else { self.pid().unwrap_or(0) },
            bundle: self.bundle().to_owned(),
            rootfs,
            created: self
                .inner
                .created()
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                .unwrap_or_default(),
            owner: self
                .inner
                .creator()
                .map(|o| o.to_string_lossy().into_owned())
                .unwrap_or_default(),
            annotations: spec
                .and_then(|s| s.annotations().clone())
                .unwrap_or_default(),
        })
    }

    fn wrong_status(&self, action: &'static str) -> EngineError {
        EngineError::WrongStatus {
            id: self.id().to_owned(),
            status: self.status().to_string(),
            action,
        }
    }

    /// Runs the process of a created container (the user's program), then
    /// the poststart hooks. A hook that fails is logged and the container
    /// runs on, as the runtime spec has it.
    pub fn start(&mut self) -> Result<()> {
        if !self.inner.can_start() {
            return Err(self.wrong_status("start it (only a created container starts)"));
        }
        let id = self.id().to_owned();
        match self.inner.start() {
            Ok(()) => Ok(()),
            Err(LibcontainerError::Hook(e)) => {
                tracing::warn!(id, error = %chain(&e), "a poststart hook failed");
                Ok(())
            }
            Err(e) => Err(EngineError::engine(&id, "start", e)),
        }
    }

    /// Sends `signal` to the init, or with `all` to every process of the
    /// container.
    pub fn kill(&mut self, signal: nix::sys::signal::Signal, all: bool) -> Result<()> {
        let before = self.inner.status();
        if !(self.inner.can_kill() || all && before == ContainerStatus::Stopped) {
            return Err(self.wrong_status("signal it: container not running"));
        }
        let id = self.id().to_owned();
        let signal = Signal::try_from(signal as i32).map_err(|e| EngineError::Engine {
            id: id.clone(),
            step: "kill",
            message: e.to_string(),
        })?;
        self.inner
            .kill(signal, all)
            .map_err(|e| EngineError::engine(&id, "kill", e))?;
        // libcontainer records "stopped" after any signal; a signal that did
        // not end the init leaves the container as it was (paused, created).
        reaped_tolerant(|| self.inner.refresh_status())
            .map_err(|e| EngineError::engine(&id, "refresh state", e))?;
        if self.inner.status() != ContainerStatus::Stopped && before != ContainerStatus::Running {
            self.inner.set_status(before);
        }
        self.inner
            .save()
            .map_err(|e| EngineError::engine(&id, "save state", e))
    }

    pub fn pause(&mut self) -> Result<()> {
        if !self.inner.can_pause() {
            return Err(self.wrong_status("pause it (only a running container pauses)"));
        }
        let id = self.id().to_owned();
        self.inner
            .pause()
            .map_err(|e| EngineError::engine(&id, "pause", e))
    }

    pub fn resume(&mut self) -> Result<()> {
        if !self.inner.can_resume() {
            return Err(self.wrong_status("resume it (it is not paused)"));
        }
        let id = self.id().to_owned();
        self.inner
            .resume()
            .map_err(|e| EngineError::engine(&id, "resume", e))
    }

    /// Removes the container: its processes (with `force`, or when it is
    /// only created), cgroup, state and lock. Runs the poststop hooks; one
    /// that fails is logged and the removal goes on, as the runtime spec
    /// has it.
    pub fn delete(mut self, force: bool) -> Result<()> {
        let status = self.inner.status();
        let stoppable = matches!(status, ContainerStatus::Stopped | ContainerStatus::Created);
        if !stoppable && !force {
            return Err(self.wrong_status("delete it without --force"));
        }
        let id = self.id().to_owned();
        // A process that just exited can linger in its cgroup for a moment,
        // and removing the cgroup then fails with EBUSY (runc retries too);
        // libcontainer gives up before running any poststop hook, so a
        // retry repeats nothing.
        let mut backoff = std::time::Duration::from_millis(10);
        loop {
            match self.inner.delete(force) {
                Ok(()) => break,
                // libcontainer stops before the state directory goes.
                Err(LibcontainerError::Hook(e)) => {
                    tracing::warn!(id, error = %chain(&e), "a poststop hook failed");
                    std::fs::remove_dir_all(&self.inner.root).map_err(|e| EngineError::Engine {
                        id: id.clone(),
                        step: "delete",
                        message: format!("removing {}: {e}", self.inner.root.display()),
                    })?;
                    break;
                }
                Err(libcontainer::error::LibcontainerError::CgroupManager(e))
                    if backoff < std::time::Duration::from_millis(500) =>
                {
                    tracing::debug!(id, error = %e, "cgroup still busy; retrying delete");
                    std::thread::sleep(backoff);
                    backoff *= 2;
                }
                Err(e) => return Err(EngineError::engine(&id, "delete", e)),
            }
        }
        if let Some(root) = self.inner.root.parent() {
            crate::private_bundle::cleanup(root, &id);
        }
        self.lock.remove();
        Ok(())
    }

    /// Starts `opts.process` in the container's namespaces and cgroup and
    /// returns its pid, a child of the caller.
    pub fn exec(&self, opts: ExecOptions) -> Result<i32> {
        self.exec_inner(opts, None)
    }

    /// [`Container::exec`] with the process's stdin, stdout and stderr
    /// given, instead of inherited from the caller.
    pub fn exec_with_stdio(&self, opts: ExecOptions, stdio: [OwnedFd; 3]) -> Result<i32> {
        self.exec_inner(opts, Some(stdio))
    }

    fn exec_inner(&self, opts: ExecOptions, stdio: Option<[OwnedFd; 3]>) -> Result<i32> {
        let id = self.id().to_owned();
        if !matches!(self.inner.status(), ContainerStatus::Running) {
            return Err(self.wrong_status("exec in it (it is not running)"));
        }
        let container_spec = self.spec()?;
        let mut process = opts.process;
        crate::exec_process::inherit(&mut process, &container_spec);
        let filter =
            crate::exec_process::seccomp_for(&mut process, &container_spec).map_err(|message| {
                EngineError::Engine {
                    id: id.clone(),
                    step: "exec",
                    message,
                }
            })?;
        let process_file = self
            .inner
            .root
            .join(format!("exec-{}.json", std::process::id()));
        let json = serde_json::to_vec(&process).map_err(|e| EngineError::Engine {
            id: id.clone(),
            step: "write the exec process",
            message: e.to_string(),
        })?;
        std::fs::write(&process_file, json)
            .map_err(|e| EngineError::io(&id, "write the exec process", e))?;
        let capture = crate::init_cause::Capture::start()
            .map_err(|e| EngineError::io(&id, "open a pipe for the init's errors", e))?;
        let built = ContainerBuilder::new(id.clone(), SyscallType::default())
            .with_root_path(self.inner.root.parent().unwrap_or(Path::new("/")))
            .and_then(|b| b.with_pid_file(opts.pid_file.as_ref()))
            .map(|b| {
                let b = match stdio {
                    Some([stdin, stdout, stderr]) => {
                        b.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr)
                    }
                    None => b,
                };
                b.with_console_socket(opts.console_socket.as_ref())
                    .with_preserved_fds(opts.preserve_fds)
                    .with_executor(crate::executor::Program::exec(filter))
                    .as_tenant()
                    .with_detach(opts.detached)
                    .with_process(Some(&process_file))
                    .build()
            });
        let _ = std::fs::remove_file(&process_file);
        let pid = built
            .and_then(|r| r)
            .map_err(|e| EngineError::init(&id, "exec", e, capture.cause()))?;
        Ok(pid.as_raw())
    }

    fn cgroup(&self) -> Result<AnyCgroupManager> {
        let id = self.id().to_owned();
        let cgroup_path = self
            .inner
            .spec()
            .map_err(|e| EngineError::engine(&id, "read the saved config", e))?
            .cgroup_path;
        libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path,
            systemd_cgroup: self.inner.systemd(),
            container_name: id.clone(),
        })
        .map_err(|e| EngineError::Engine {
            id,
            step: "open the cgroup",
            message: crate::error::chain(&e),
        })
    }

    /// The container's cgroup directory under a hierarchy mounted at
    /// `mount`, as libcgroups' cgroupfs managers place it.
    fn cgroup_dir(&self, mount: &Path) -> Result<PathBuf> {
        let cgroup_path = self
            .inner
            .spec()
            .map_err(|e| EngineError::engine(self.id(), "read the saved config", e))?
            .cgroup_path;
        let relative = cgroup_path.strip_prefix("/").unwrap_or(&cgroup_path);
        Ok(mount.join(relative))
    }

    /// The counter of OOM kills in the container's memory cgroup, which
    /// stays readable until the container is deleted.
    pub fn oom_kills(&self) -> Result<Option<OomKills>> {
        Ok(match self.cgroup()? {
            AnyCgroupManager::V2(_) => Some(OomKills::v2(
                &self.cgroup_dir(Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT))?,
            )),
            AnyCgroupManager::V1(_) => {
                let mount = libcgroups::v1::util::get_subsystem_mount_point(
                    &libcgroups::v1::ControllerType::Memory,
                )
                .map_err(|e| EngineError::Engine {
                    id: self.id().to_owned(),
                    step: "find the memory cgroup",
                    message: crate::error::chain(&e),
                })?;
                Some(OomKills::v1(&self.cgroup_dir(&mount)?))
            }
            // systemd names the cgroup (a scope under the slice): the
            // init's own cgroup v2 path says where it is.
            AnyCgroupManager::Systemd(_) => self
                .pid()
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
                .and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("0::"))
                        .map(|path| {
                            OomKills::v2(
                                &Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT)
                                    .join(path.trim_start_matches('/')),
                            )
                        })
                }),
        })
    }

    /// The pids of every process in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let id = self.id().to_owned();
        let pids = self
            .cgroup()?
            .get_all_pids()
            .map_err(|e| EngineError::Engine {
                id,
                step: "list processes",
                message: crate::error::chain(&e),
            })?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    /// Applies new resource limits to a created, running or paused container.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        if self.inner.status() == ContainerStatus::Stopped {
            return Err(self.wrong_status("update it (it is not running)"));
        }
        let id = self.id().to_owned();
        let opts = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        self.cgroup()?
            .apply(&opts)
            .map_err(|e| EngineError::Engine {
                id,
                step: "update resources",
                message: crate::error::chain(&e),
            })
    }

    /// Cgroup statistics in the shape `runc events --stats` prints.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let id = self.id().to_owned();
        let manager = self.cgroup()?;
        let stats = match manager {
            // Read directly: libcgroups would need pressure files.
            AnyCgroupManager::V2(_) => {
                let dir = self.cgroup_dir(Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT))?;
                crate::stats::read_v2(&dir).map_err(|e| EngineError::Engine {
                    id,
                    step: "read statistics",
                    message: format!("{}: {e}", dir.display()),
                })?
            }
            other => other.stats().map_err(|e| EngineError::Engine {
                id,
                step: "read statistics",
                message: crate::error::chain(&e),
            })?,
        };
        let mut json = crate::stats::runc_json(&stats);
        // Not in runc's shape: `kata-rs events` tells OOM kills from it,
        // in the guest as on the host.
        if let Ok(Some(kills)) = self.oom_kills() {
            json["memory"]["raw"]["oom_kill"] = kills.count().into();
        }
        Ok(json)
    }
}
