//! A command on a terminal of its own, as a user in a terminal window.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{openpty, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::process::{collect, text};

/// A child on a terminal of its own (a pty we hold the master side of), as
/// if a user ran it in a terminal window that can be resized.
pub struct TtySession {
    child: Child,
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl TtySession {
    pub fn start(cmd: &mut Command, rows: u16, cols: u16) -> Self {
        let pty = openpty(&winsize(rows, cols), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: only async-signal-safe calls between fork and exec. The
        // child leads a new session with the pty as its controlling
        // terminal, so it gets SIGWINCH on a resize and a whole-group kill
        // reaches what it started in the foreground.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start a command on a pty");
        // The Command still holds the slave copies: drop them, so a read
        // on the master ends once the child side has gone.
        let _ = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let master = File::from(pty.master);
        let output = Arc::default();
        collect(master.try_clone().unwrap(), Arc::clone(&output));
        Self {
            child,
            master,
            output,
        }
    }

    pub fn output(&self) -> String {
        text(&self.output)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the pty");
    }

    /// Resizes the terminal; the kernel sends SIGWINCH to the child.
    pub fn resize(&self, rows: u16, cols: u16) {
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one struct winsize, which `ws` is.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Whether the terminal is in its usual cooked mode (echo, line
    /// editing), as a shell expects to find it after a command.
    pub fn is_cooked(&self) -> bool {
        use nix::sys::termios::{tcgetattr, LocalFlags};
        // On Linux the master reports the pair's settings.
        let mode = tcgetattr(self.master.as_fd()).expect("tcgetattr on the pty");
        mode.local_flags
            .contains(LocalFlags::ECHO | LocalFlags::ICANON)
    }

    /// Waits for the exit, killing the session after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
                let _ = self.child.wait();
                panic!(
                    "{timeout:?} passed on the terminal; it shows: {:?}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TtySession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
