//! podman with a private store, driving one OCI runtime.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{
    run, run_ok, unique_name, unmount_under, wait_for_processes_to_end, wait_until, Outcome, IMAGE,
    RUNC, TIMEOUT,
};

/// The test images (rootfs, podman tarball, OCI archive), built once per
/// test binary by tests/images/build-busybox.py, which caches them.
pub fn images() -> &'static Path {
    static IMAGES: OnceLock<PathBuf> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let dir = target.join("kata-rs/images");
        run_ok(
            Command::new("python3")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build-busybox.py"))
                .arg(&dir),
        );
        dir
    })
}

/// podman's storage, shared by the tests of one binary: the image is
/// imported once. Removed when the test binary exits.
fn podman_store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_store() {
        if let Some(dir) = STORE.get() {
            unmount_under(dir);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    STORE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("kata-rs-podman-")
            .tempdir()
            .unwrap()
            .keep();
        // SAFETY: registers a plain function, run once at exit.
        unsafe { libc::atexit(remove_store) };
        std::fs::create_dir(dir.join("cids")).unwrap();
        std::fs::create_dir(dir.join("no-hooks")).unwrap();
        // root has no CAP_SYS_RESOURCE on these hosts, so podman's default
        // rlimits (nofile 1048576) cannot be set even by runc; and no test
        // needs a network.
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             netns = \"none\"\n",
        )
        .unwrap();
        run_ok(
            Podman::global(&dir, Path::new(RUNC))
                .args(["import", "--change", "CMD=/bin/sh", "--change"])
                .arg("ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .arg(images().join("busybox-rootfs.tar"))
                .arg(IMAGE),
        );
        dir
    })
}

/// podman with a private store, running containers with one OCI runtime.
/// The containers it names are removed by [`Podman::finish`] (which checks
/// nothing is left) or, if a test fails first, when it is dropped.
pub struct Podman {
    store: &'static Path,
    runtime: PathBuf,
    hooks_dir: Option<PathBuf>,
    names: Vec<String>,
}

impl Podman {
    pub fn new(runtime: &Path) -> Self {
        Self {
            store: podman_store(),
            runtime: runtime.to_owned(),
            hooks_dir: None,
            names: Vec::new(),
        }
    }

    /// OCI hooks come from this directory only (none by default).
    pub fn with_hooks_dir(mut self, dir: &Path) -> Self {
        self.hooks_dir = Some(dir.to_owned());
        self
    }

    fn global(store: &Path, runtime: &Path) -> Command {
        let mut cmd = Command::new("podman");
        // conmon writes an `oom` file into the directory it starts in.
        cmd.current_dir(store)
            .env("CONTAINERS_CONF", store.join("containers.conf"))
            .arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("runroot"))
            .arg("--tmpdir")
            .arg(store.join("tmp"))
            .args(["--cgroup-manager=cgroupfs", "--events-backend=file"])
            .arg("--runtime")
            .arg(runtime);
        cmd
    }

    /// `podman` with the global options, ready for a subcommand.
    pub fn command(&self) -> Command {
        let mut cmd = Self::global(self.store, &self.runtime);
        // Without --hooks-dir podman would read the host's hook directories.
        cmd.arg("--hooks-dir").arg(
            self.hooks_dir
                .as_deref()
                .unwrap_or(&self.store.join("no-hooks")),
        );
        cmd
    }

    /// Runs `podman ARGS` to its end.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Outcome {
        run(self.command().args(args), stdin)
    }

    /// Runs `podman ARGS`, failing the test unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        run_ok(self.command().args(args))
    }

    /// A new container name, removed at the end of the test.
    pub fn name(&mut self) -> String {
        let name = unique_name("podman");
        self.names.push(name.clone());
        name
    }

    /// `--name N --cidfile F` for a container `name` gave.
    pub fn naming(&self, name: &str) -> [String; 4] {
        let cidfile = self.store.join("cids").join(name);
        [
            "--name".into(),
            name.into(),
            "--cidfile".into(),
            cidfile.to_string_lossy().into_owned(),
        ]
    }

    /// `podman run OPTS IMAGE CMD` in a new named container, to its end.
    pub fn run_container(
        &mut self,
        opts: &[&str],
        cmd: &[&str],
        stdin: Option<&[u8]>,
    ) -> (String, Outcome) {
        let name = self.name();
        let out = run(
            self.command()
                .arg("run")
                .args(self.naming(&name))
                .args(opts)
                .arg(IMAGE)
                .args(cmd),
            stdin,
        );
        (name, out)
    }

    /// `podman inspect --format FORMAT NAME`.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "--format", format, name])
            .trim()
            .to_owned()
    }

    /// Polls `podman logs` until they contain `needle`.
    pub fn wait_for_log(&self, name: &str, needle: &str) {
        wait_until(
            TIMEOUT,
            &format!("{needle:?} in the logs of {name}"),
            || self.run(&["logs", name], None).stdout.contains(needle),
        );
    }

    fn remove_all(&self) -> Option<Outcome> {
        if self.names.is_empty() {
            return None;
        }
        let mut cmd = self.command();
        cmd.args(["rm", "--force", "--ignore", "--time", "0"])
            .args(&self.names);
        Some(run(&mut cmd, None))
    }

    /// Removes this test's containers and checks nothing of them is left:
    /// no container in `podman ps -a`, no conmon, no process in their
    /// cgroups.
    pub fn finish(mut self) {
        let removed = self.remove_all();
        for name in std::mem::take(&mut self.names) {
            let listed = self.ok(&[
                "ps",
                "--all",
                "--quiet",
                "--filter",
                &format!("name=^{name}$"),
            ]);
            assert_eq!(
                listed.trim(),
                "",
                "container {name} is still listed after podman rm: {removed:?}"
            );
            let mut needles = vec![name.clone()];
            if let Ok(id) = std::fs::read_to_string(self.store.join("cids").join(&name)) {
                needles.push(id.trim().to_owned());
            }
            for needle in needles.iter().filter(|n| !n.is_empty()) {
                wait_for_processes_to_end(needle);
            }
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.remove_all();
    }
}
