//! One lock per container id, so that the commands on one container run one
//! at a time: libcontainer rewrites a container's state.json in place, and a
//! `kill` racing a `run` could otherwise read half a file.
//!
//! A POSIX record lock (fcntl F_SETLKW) on `<root>/<id>@lock`: unlike flock
//! and OFD locks it is not inherited by fork, so the container's init, which
//! is forked while the lock is held and waits there for `start`, does not
//! keep holding it. `@` never appears in a valid id, so the file cannot
//! collide with a container's directory.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// Held while it lives; [`IdLock::remove`] deletes the file after `delete`.
#[derive(Debug)]
pub struct IdLock {
    file: File,
    path: PathBuf,
}

impl IdLock {
    pub fn path_for(root: &Path, id: &str) -> PathBuf {
        root.join(format!("{id}@lock"))
    }

    /// Blocks until this process holds the lock of `id`.
    pub fn acquire(root: &Path, id: &str) -> Result<Self> {
        let path = Self::path_for(root, id);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| EngineError::io(id, "open the container's lock file", e))?;
            write_lock(&file).map_err(|e| EngineError::io(id, "lock the container", e))?;
            // A holder that deleted the container removed the file while we
            // waited: our lock is then on an orphan inode, so take a new one.
            let held = file
                .metadata()
                .map_err(|e| EngineError::io(id, "stat the container's lock file", e))?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(IdLock { file, path });
                }
                _ => continue,
            }
        }
    }

    /// Removes the lock file while still holding the lock; for `delete`.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

fn write_lock(file: &File) -> std::io::Result<()> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    loop {
        // SAFETY: F_SETLKW reads a valid flock struct that outlives the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &lock) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use std::time::Duration;

    #[test]
    fn a_second_process_waits_until_the_holder_deletes_the_container() {
        let root = tempfile::tempdir().unwrap();
        let first = IdLock::acquire(root.path(), "c1").unwrap();
        let path = IdLock::path_for(root.path(), "c1");
        // POSIX locks are per process: the contender must be another process.
        // SAFETY: the child only takes the lock and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = i32::from(IdLock::acquire(root.path(), "c1").is_err());
                // SAFETY: leaves the forked test process without unwinding.
                unsafe { libc::_exit(code) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                std::thread::sleep(Duration::from_millis(200));
                let waited = waitpid(child, Some(WaitPidFlag::WNOHANG)).unwrap();
                assert_eq!(waited, WaitStatus::StillAlive);
                first.remove();
                let status = waitpid(child, None).unwrap();
                assert_eq!(status, WaitStatus::Exited(child, 0));
                // The contender re-created the file for its own lock.
                assert!(path.exists());
            }
        }
    }
}
