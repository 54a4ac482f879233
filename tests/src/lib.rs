//! Helpers shared by the integration tests: where the artefacts under test
//! are, whether this host's KVM can boot them, and a handle on a running
//! `kata-rs-vmm` with its console.
//!
//! tests/run.sh builds the artefacts and exports their paths; VM tests are
//! `#[ignore]`d in a plain `cargo test` and run by tests/run.sh with
//! `--ignored` where KVM boots a standard guest (hardware, or the emulated
//! KVM host).

pub mod cgroup;
pub mod cri;
pub mod oci;
pub mod peers;
pub mod pod;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use kata_rs::config::Hypervisor;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};

/// An artefact exported by tests/run.sh.
pub fn artefact(var: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run the VM tests through tests/run.sh"));
    assert!(path.exists(), "{var}={} does not exist", path.display());
    path
}

pub fn vmm_binary() -> PathBuf {
    artefact("KATA_RS_TEST_VMM")
}

pub fn kernel() -> PathBuf {
    artefact("KATA_RS_TEST_KERNEL")
}

pub fn agent_initrd() -> PathBuf {
    artefact("KATA_RS_TEST_INITRD")
}

pub fn probe_initrd() -> PathBuf {
    artefact("KATA_RS_TEST_PROBE_INITRD")
}

/// virtiofsd: `KATA_RS_TEST_VIRTIOFSD`, or where tests/lib.sh installs it.
pub fn virtiofsd_binary() -> PathBuf {
    let path = std::env::var_os("KATA_RS_TEST_VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/virtiofsd"));
    assert!(
        path.exists(),
        "virtiofsd not found at {}: run tests/setup.sh",
        path.display()
    );
    path
}

/// A virtiofsd sharing `<dir>/share` (with a `hello.txt`) on
/// `<dir>/virtiofsd.sock`; it serves one VMM and exits when that
/// disconnects.
pub struct Virtiofsd {
    pub child: Child,
    pub socket: PathBuf,
    pub shared: PathBuf,
    pub log: PathBuf,
}

impl Virtiofsd {
    pub fn start(dir: &Path) -> Self {
        let shared = dir.join("share");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("hello.txt"), "hello from the host\n").unwrap();
        let socket = dir.join("virtiofsd.sock");
        let log = dir.join("virtiofsd.log");
        let child = Command::new(virtiofsd_binary())
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            // The guest must see host writes at once, and the tests run as
            // root without needing virtiofsd's namespace sandbox.
            .args(["--cache", "never", "--sandbox", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start virtiofsd");
        let mut fsd = Self {
            child,
            socket,
            shared,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !fsd.socket.exists() {
            if let Ok(Some(status)) = fsd.child.try_wait() {
                panic!("virtiofsd exited with {status}: {}", fsd.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "virtiofsd did not listen: {}",
                fsd.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fsd
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Guest kernel arguments the test environment needs on every boot
/// (tests/run.sh sets them for the emulated KVM host, see its README).
pub fn extra_kernel_params() -> String {
    std::env::var("KATA_RS_TEST_KERNEL_PARAMS").unwrap_or_default()
}

/// The runtime's hypervisor configuration pointing at the artefacts.
pub fn hypervisor(vcpus: u8, memory_mib: u64) -> Hypervisor {
    Hypervisor {
        vmm: vmm_binary(),
        kernel: kernel(),
        initrd: agent_initrd(),
        vcpus,
        memory_mib,
        kernel_params: extra_kernel_params(),
        ..Hypervisor::default()
    }
}

/// Generous bound for a boot: inside the emulated KVM host everything runs
/// 20-50 times slower than on hardware.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// A `kata-rs-vmm` process started by a test, with its console in a file.
pub struct VmmProcess {
    pub child: Child,
    pub console: PathBuf,
    pub stderr: PathBuf,
}

impl VmmProcess {
    /// Starts the VMM with `args` (kernel, console and stderr files added).
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_with_env(dir, &[], args)
    }

    /// Starts the VMM with `args` and the variables `env` added to its
    /// environment.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Self {
        let console = dir.join("console.log");
        let stderr = dir.join("vmm.stderr");
        let child = Command::new(vmm_binary())
            .envs(env.iter().copied())
            .arg("--kernel")
            .arg(kernel())
            .arg("--console")
            .arg(&console)
            .arg("--cmdline-append")
            .arg(extra_kernel_params())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start kata-rs-vmm");
        Self {
            child,
            console,
            stderr,
        }
    }

    /// Waits for the VMM to exit, killing it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "kata-rs-vmm did not exit within {timeout:?}; console:\n{}",
                    self.console_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The `PROBE ...` lines the guest probe printed, without the prefix.
    pub fn probe_lines(&self) -> Vec<String> {
        probe_lines(&self.console_text())
    }
}

/// The `PROBE ...` lines of a guest probe's console, without the prefix.
pub fn probe_lines(console: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|l| {
            l.trim_end_matches('\r')
                .split_once("PROBE ")
                .map(|(_, r)| r.to_owned())
        })
        .collect()
}

/// The first CPU's flags in a /proc/cpuinfo text, if it has a flags line.
pub fn cpu_flags(cpuinfo: &str) -> Option<Vec<&str>> {
    cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags")?.split_once(':'))
        .map(|(_, flags)| flags.split_whitespace().collect())
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the VMM to completion with `args` (bad-input tests).
pub fn run_vmm(args: &[&str]) -> Output {
    Command::new(vmm_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kata-rs-vmm")
}

/// Whether a process with this pid is still alive (zombies count as gone).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Whether `/proc/<pid>/exe` is a sealed in-memory copy: nothing reaching
/// it through that link can write, shrink or grow it.
pub fn runs_sealed(pid: i32) -> Result<(), String> {
    let link = format!("/proc/{pid}/exe");
    let target = std::fs::read_link(&link).map_err(|e| format!("{link}: {e}"))?;
    let exe = std::fs::File::open(&link).map_err(|e| format!("{link}: {e}"))?;
    let seals = fcntl(exe.as_raw_fd(), FcntlArg::F_GET_SEALS)
        .map_err(|e| format!("{link} ({}) has no seals: {e}", target.display()))?;
    let seals = SealFlag::from_bits_truncate(seals);
    let needed = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
    if !seals.contains(needed) {
        return Err(format!(
            "{link} ({}) is sealed {seals:?} only",
            target.display()
        ));
    }
    Ok(())
}
