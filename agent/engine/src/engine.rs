//! The engine: where containers' state lives (the root directory), and the
//! operations that find or make a container.

use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;

use crate::container::{reaped_tolerant, Container};
use crate::error::{EngineError, Result};
use crate::lock::IdLock;
use crate::private_bundle;

/// What `create` needs beyond the id, as runc's `create` flags give it.
#[derive(Debug, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
    pub no_pivot: bool,
    /// The container's stdin, stdout and stderr; without them it inherits
    /// the caller's, as runc's create does.
    pub stdio: Option<[OwnedFd; 3]>,
}

#[derive(Debug, Clone)]
pub struct Engine {
    root: PathBuf,
    systemd_cgroup: bool,
}

impl Engine {
    /// An engine keeping its state under `root` (created 0700 if missing).
    pub fn new(root: impl Into<PathBuf>, systemd_cgroup: bool) -> Result<Self> {
        let root = root.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| EngineError::io("-", "create the state root", e))?;
        Ok(Engine {
            root,
            systemd_cgroup,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates container `id` from `opts.bundle`; its init waits for
    /// [`Container::start`]. On failure nothing of it is left: no state, no
    /// cgroup, no process.
    pub fn create(&self, id: &str, opts: CreateOptions) -> Result<Container> {
        validate_id(id)?;
        let bundle = std::path::absolute(&opts.bundle)
            .map_err(|e| EngineError::io(id, "resolve the bundle path", e))?;
        let spec = load_bundle_spec(id, &bundle)?;
        let capture = crate::init_cause::Capture::start()
            .map_err(|e| EngineError::io(id, "open a pipe for the init's errors", e))?;
        let lock = IdLock::acquire(&self.root, id)?;
        let dir = self.root.join(id);
        if dir.exists() {
            return Err(EngineError::Exists { id: id.to_owned() });
        }
        let private = match private_bundle::prepare(&self.root, id, &bundle, &spec) {
            Ok(private) => private,
            Err(e) => {
                private_bundle::cleanup(&self.root, id);
                lock.remove();
                return Err(e);
            }
        };
        let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(&self.root)
            .and_then(|b| b.with_pid_file(opts.pid_file.as_ref()))
            .map_err(|e| EngineError::engine(id, "prepare create", e))?
            .with_console_socket(opts.console_socket.as_ref())
            .with_preserved_fds(opts.preserve_fds)
            .with_executor(crate::executor::Program::default());
        if let Some([stdin, stdout, stderr]) = opts.stdio {
            builder = builder
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr);
        }
        let built = builder
            .as_init(private.as_deref().unwrap_or(&bundle))
            .with_systemd(self.systemd_cgroup)
            .with_detach(true)
            .with_no_pivot(opts.no_pivot)
            .build();
        let result = built
            .map_err(|err| match err {
                LibcontainerError::Exist => EngineError::Exists { id: id.to_owned() },
                other => EngineError::init(id, "create", other, capture.cause()),
            })
            .and_then(|inner| {
                if private.is_none() {
                    return Ok(inner);
                }
                point_state_at_bundle(&dir, &bundle)
                    .map_err(|e| EngineError::io(id, "record the bundle", e))?;
                reaped_tolerant(|| libcontainer::container::Container::load(dir.clone()))
                    .map_err(|e| EngineError::engine(id, "load state", e))
            });
        match result {
            Ok(inner) => Ok(Container::new(inner, lock)),
            Err(err) => {
                self.undo_create(id, &dir);
                private_bundle::cleanup(&self.root, id);
                lock.remove();
                Err(err)
            }
        }
    }

    /// Removes what a failed create left: libcontainer makes the state
    /// directory (and may have made the cgroup) before it can fail.
    fn undo_create(&self, id: &str, dir: &Path) {
        if let Ok(mut partial) =
            reaped_tolerant(|| libcontainer::container::Container::load(dir.to_owned()))
        {
            if let Err(e) = partial.delete(true) {
                tracing::warn!(id, error = %crate::error::chain(&e), "undo a failed create");
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The container `id`, locked until the returned handle is dropped.
    pub fn load(&self, id: &str) -> Result<Container> {
        validate_id(id)?;
        let lock = IdLock::acquire(&self.root, id)?;
        let dir = self.root.join(id);
        if !dir.join("state.json").exists() {
            lock.remove();
            return Err(EngineError::NotFound { id: id.to_owned() });
        }
        let inner = reaped_tolerant(|| libcontainer::container::Container::load(dir.clone()))
            .map_err(|e| EngineError::engine(id, "load state", e))?;
        Ok(Container::new(inner, lock))
    }

    /// The ids of all containers under the root, sorted.
    pub fn ids(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| EngineError::io("-", "list the state root", e))?;
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// Records the user's bundle in state.json: with copy-up mounts,
/// libcontainer was given the private one.
fn point_state_at_bundle(dir: &Path, bundle: &Path) -> std::io::Result<()> {
    let path = dir.join("state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    state["bundle"] = bundle.to_string_lossy().into();
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&state)?)?;
    std::fs::rename(tmp, path)
}

/// The ids runc accepts: letters, digits and `_ + - .`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let invalid = |reason: &str| EngineError::InvalidId {
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id == "." || id == ".." {
        return Err(invalid("it is not a file name"));
    }
    if id.len() > 1024 {
        return Err(invalid("it is longer than 1024 bytes"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_+-.".contains(*c)))
    {
        return Err(invalid(&format!(
            "{c:?} is not allowed (letters, digits and _ + - . are)"
        )));
    }
    Ok(())
}

/// Reads and checks `<bundle>/config.json` before anything is made, so bad
/// input gets a message that names the file and the problem.
pub fn load_bundle_spec(id: &str, bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let bad = |message: String| EngineError::Engine {
        id: id.to_owned(),
        step: "read the bundle",
        message,
    };
    let text = std::fs::read(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let spec: Spec = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("{} is not a valid OCI config: {e}", path.display())))?;
    if !spec.version().starts_with("1.") {
        return Err(bad(format!(
            "{}: ociVersion {:?} is not supported (1.x is)",
            path.display(),
            spec.version()
        )));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| bad(format!("{}: no root", path.display())))?;
    let rootfs = bundle.join(root.path());
    if !rootfs.is_dir() {
        return Err(bad(format!(
            "the root filesystem {} does not exist or is not a directory",
            rootfs.display()
        )));
    }
    let args = spec.process().as_ref().and_then(|p| p.args().as_ref());
    if args.is_none_or(|a| a.is_empty()) {
        return Err(bad(format!("{}: process.args is empty", path.display())));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_runc() {
        for ok in ["a", "c-1", "x_y.z+1"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "a@lock"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn bundle(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        dir
    }

    #[test]
    fn bundle_errors_name_the_problem() {
        let missing = tempfile::tempdir().unwrap();
        let err = load_bundle_spec("c", missing.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("No such file"),
            "{err}"
        );

        let malformed = bundle("{ not json");
        let err = load_bundle_spec("c", malformed.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid OCI config"), "{err}");

        let no_rootfs = bundle(
            r#"{"ociVersion":"1.0.2","root":{"path":"nope"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
        );
        let err = load_bundle_spec("c", no_rootfs.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("root filesystem") && err.contains("nope"),
            "{err}"
        );

        let old = bundle(r#"{"ociVersion":"0.9","root":{"path":"rootfs"}}"#);
        let err = load_bundle_spec("c", old.path()).unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");

        let ok = bundle(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
        );
        load_bundle_spec("c", ok.path()).unwrap();
    }
}
