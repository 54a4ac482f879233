//! The host cgroup of a VM sandbox: the VMM, virtiofsd and the process
//! that serves the sandbox (the shim of a pod, the monitor of a container)
//! live in it, so that the limits and the accounting of whoever placed the
//! sandbox (the kubelet's pod cgroup and its RuntimeClass overhead,
//! podman's `--memory`) cover all of it, as Kata's `sandbox_cgroup_only`.
//!
//! Its path is the sandbox container's cgroupsPath, made by the configured
//! driver. The process that starts the sandbox joins it before it spawns
//! virtiofsd and the VMM, so that they are born in it and every page they
//! touch is charged to it; it leaves again before the cgroup is removed.
//!
//! The memory policy: the guest's RAM is what the configuration and the
//! container ask for, cut to fit under the smallest memory limit on the
//! cgroup's path less `hypervisor.host_overhead_mib` (what the VMM,
//! virtiofsd and the shim need beside the guest's RAM). A guest that fills
//! all of its RAM, page cache included, then stays under the limit, and
//! the host's OOM killer does not come for the VMM in normal use.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder};

/// How long the processes of a cgroup being removed may take to be gone.
const REMOVE_BOUND: Duration = Duration::from_secs(10);
const REMOVE_RETRY: Duration = Duration::from_millis(100);

/// The smallest guest kata-rs boots: its kernel and agent with room for a
/// small container.
pub const MIN_GUEST_MIB: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    /// libcgroups could not do `what`; `cause` is its error with its
    /// causes, on one line.
    #[error("{what} {path}: {cause}")]
    Cgroup {
        what: &'static str,
        path: String,
        cause: String,
    },
    #[error(
        "the sandbox's host cgroup is limited to {bound} MiB of memory, which leaves \
         {room} MiB for the VM after hypervisor.host_overhead_mib ({overhead} MiB); a \
         guest needs at least {MIN_GUEST_MIB} MiB (raise the limit, or a pod's RuntimeClass \
         overhead)"
    )]
    TooSmall {
        bound: u64,
        room: u64,
        overhead: u64,
    },
}

type Result<T, E = HostCgroupError> = std::result::Result<T, E>;

/// The host cgroup of one sandbox.
pub struct HostCgroup {
    manager: AnyCgroupManager,
    at: HostCgroupRef,
    /// The OOM killer's kills in it when it was joined.
    oom_baseline: u64,
}

/// Where a sandbox's host cgroup is, for a later command to open it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct HostCgroupRef {
    pub cgroups_path: String,
    pub systemd: bool,
    /// Where the kernel put the process that joined it.
    pub memory: Option<MemoryCgroup>,
}

impl HostCgroup {
    /// Makes the cgroup at `cgroups_path` with the chosen driver and moves
    /// the calling process into it.
    pub fn create_and_join(cgroups_path: &str, id: &str, systemd: bool) -> Result<Self> {
        let mut cgroup = Self::open(
            &HostCgroupRef {
                cgroups_path: cgroups_path.to_owned(),
                systemd,
                memory: None,
            },
            id,
        )?;
        cgroup
            .manager
            .add_task(Pid::this())
            .map_err(|e| cgroup_error("join the sandbox's host cgroup", cgroups_path, &e))?;
        cgroup.at.memory = MemoryCgroup::of_process("self");
        cgroup.oom_baseline = cgroup.at.memory.as_ref().map_or(0, MemoryCgroup::oom_kills);
        Ok(cgroup)
    }

    /// The cgroup a sandbox recorded.
    pub fn open(at: &HostCgroupRef, id: &str) -> Result<Self> {
        let manager = create_cgroup_manager(CgroupConfig {
            cgroup_path: PathBuf::from(&at.cgroups_path),
            systemd_cgroup: at.systemd,
            container_name: id.to_owned(),
        })
        .map_err(|e| cgroup_error("open the sandbox's host cgroup", &at.cgroups_path, &e))?;
        Ok(Self {
            manager,
            at: at.clone(),
            oom_baseline: 0,
        })
    }

    pub fn reference(&self) -> &HostCgroupRef {
        &self.at
    }

    /// Tells whether the host's OOM killer has killed in the cgroup since
    /// it was joined: a VMM that vanished that way ended its containers
    /// as the OOM killer ends a process.
    pub fn oom_watch(&self) -> Option<OomWatch> {
        Some(OomWatch {
            memory: self.at.memory.clone()?,
            baseline: self.oom_baseline,
        })
    }

    /// Bounds the cgroup's memory at `mib`.
    pub fn limit_memory(&self, mib: u64) -> Result<()> {
        let failed = |e: &(dyn std::error::Error + 'static)| {
            cgroup_error("limit the memory of host cgroup", &self.at.cgroups_path, e)
        };
        let bytes = i64::try_from(mib << 20).map_err(|e| failed(&e))?;
        let memory = LinuxMemoryBuilder::default()
            .limit(bytes)
            .build()
            .map_err(|e| failed(&e))?;
        let resources = LinuxResourcesBuilder::default()
            .memory(memory)
            .build()
            .map_err(|e| failed(&e))?;
        self.manager
            .apply(&ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| failed(&e))
    }

    /// Removes the cgroup, ending whatever still runs in it. A caller
    /// inside first moves to the root cgroup: it is about to end, and the
    /// root takes any process.
    pub fn remove(self) -> Result<()> {
        if self.at.memory.is_some() && MemoryCgroup::of_process("self") == self.at.memory {
            leave_to_root();
        }
        // A process just killed may still be on its way out: a VMM's exit
        // waits for its vCPU threads to leave the guest and for its RAM to
        // be torn down, which takes seconds under nested emulation.
        let deadline = Instant::now() + REMOVE_BOUND;
        loop {
            match self.manager.remove() {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => std::thread::sleep(REMOVE_RETRY),
                Err(e) => {
                    return Err(cgroup_error(
                        "remove the sandbox's host cgroup",
                        &self.at.cgroups_path,
                        &e,
                    ))
                }
            }
        }
    }
}

/// Makes process `pid` (the VMM, virtiofsd) the OOM killer's choice before
/// the caller (the shim or monitor, which tells what happened): its
/// oom_score_adj 500 above the caller's.
pub fn oom_victim_before_caller(pid: u32) {
    let ours = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    set_oom_score_adj(&pid.to_string(), (ours + 500).min(1000));
}

/// Takes the calling process (a pod's shim) out of the OOM killer's
/// choices. The VMM's guest RAM is shared with virtiofsd, so a killed VMM
/// frees it only once virtiofsd has exited too; meanwhile the OOM killer
/// of a cgroup still over its limit takes the next process, and the shim,
/// which must live to report the pod's containers OOM-killed, would be
/// next after virtiofsd.
pub fn spare_caller_from_oom() {
    set_oom_score_adj("self", -1000);
}

fn set_oom_score_adj(pid: &str, adj: i32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()) {
        tracing::warn!(pid, adj, error = %e, "set oom_score_adj");
    }
}

/// See [`HostCgroup::oom_watch`].
#[derive(Debug, Clone)]
pub struct OomWatch {
    memory: MemoryCgroup,
    baseline: u64,
}

impl OomWatch {
    pub fn fired(&self) -> bool {
        self.memory.oom_kills() > self.baseline
    }
}

/// The failure to do `what` to the cgroup at `path`: libcgroups' error
/// `e` (or the like), its causes on one line.
fn cgroup_error(
    what: &'static str,
    path: &str,
    e: &(dyn std::error::Error + 'static),
) -> HostCgroupError {
    HostCgroupError::Cgroup {
        what,
        path: path.to_owned(),
        cause: kata_rs_engine::error::chain(e),
    }
}

/// Writes this process into the root cgroup of every hierarchy.
fn leave_to_root() {
    let pid = std::process::id().to_string();
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        let _ = std::fs::write(root.join("cgroup.procs"), &pid);
        return;
    }
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let procs = entry.path().join("cgroup.procs");
        if procs.exists() {
            let _ = std::fs::write(procs, &pid);
        }
    }
}

/// A process's memory cgroup, read from /proc/PID/cgroup: whatever the
/// driver, the kernel says where the process is.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemoryCgroup {
    /// Its directory under the memory controller's mount.
    pub dir: PathBuf,
    /// cgroup v2 (memory.max, memory.events) or v1 (memory.limit_in_bytes,
    /// memory.oom_control).
    pub v2: bool,
}

impl MemoryCgroup {
    /// The memory cgroup of process `pid` ("self" for the caller).
    pub fn of_process(pid: &str) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (mount, path, v2) = if unified {
            let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
            (PathBuf::from("/sys/fs/cgroup"), path, true)
        } else {
            let path = text.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then_some(path)
            })?;
            (PathBuf::from("/sys/fs/cgroup/memory"), path, false)
        };
        Some(Self {
            dir: mount.join(path.trim_start_matches('/')),
            v2,
        })
    }

    /// The smallest memory limit from this cgroup up to the hierarchy's
    /// root, in MiB: what bounds everything in it. None where nothing does.
    pub fn bound_mib(&self) -> Option<u64> {
        let (file, root) = if self.v2 {
            ("memory.max", Path::new("/sys/fs/cgroup"))
        } else {
            ("memory.limit_in_bytes", Path::new("/sys/fs/cgroup/memory"))
        };
        self.dir
            .ancestors()
            .take_while(|dir| dir.starts_with(root) && *dir != root)
            .filter_map(|dir| std::fs::read_to_string(dir.join(file)).ok())
            .filter_map(|text| text.trim().parse::<u64>().ok())
            // cgroup v1 writes "no limit" as a huge page-aligned number.
            .filter(|bytes| *bytes < 1 << 62)
            .min()
            .map(|bytes| bytes >> 20)
    }

    /// The OOM killer's kills in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let kills = if self.v2 {
            kata_rs_engine::OomKills::v2(&self.dir)
        } else {
            kata_rs_engine::OomKills::v1(&self.dir)
        };
        kills.count()
    }
}

/// The guest RAM for a sandbox that wants `wanted_mib` under a memory
/// bound of `bound_mib` (None: unbounded), leaving `overhead_mib` of the
/// bound to the host's processes.
pub fn fit_guest(wanted_mib: u64, bound_mib: Option<u64>, overhead_mib: u64) -> Result<u64> {
    let Some(bound) = bound_mib else {
        return Ok(wanted_mib);
    };
    let room = bound.saturating_sub(overhead_mib);
    if room < MIN_GUEST_MIB {
        return Err(HostCgroupError::TooSmall {
            bound,
            room,
            overhead: overhead_mib,
        });
    }
    Ok(wanted_mib.min(room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_fits_under_the_bound_less_the_overhead() {
        assert_eq!(fit_guest(256, None, 32).unwrap(), 256);
        assert_eq!(fit_guest(256, Some(1024), 32).unwrap(), 256);
        assert_eq!(fit_guest(256, Some(200), 32).unwrap(), 168);
        let e = fit_guest(256, Some(90), 32).unwrap_err().to_string();
        assert!(
            e.contains("90 MiB") && e.contains("host_overhead_mib"),
            "{e}"
        );
    }

    #[test]
    fn a_process_has_a_memory_cgroup() {
        let me = MemoryCgroup::of_process("self").expect("/proc/self/cgroup names one");
        assert!(me.dir.starts_with("/sys/fs/cgroup"), "{me:?}");
    }
}
