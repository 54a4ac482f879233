//! The terminal of `run` and `exec` in the foreground when the caller gave
//! no --console-socket, as runc does in a shell: kata-rs receives the pty
//! master itself, relays it to its own stdin and stdout with its terminal
//! in raw mode, and passes its terminal's size on.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::termios::{self, SetArg, Termios};

use super::cli::CreateArgs;
use crate::sandbox::stdio;

/// How long the last output may take to reach our stdout after the
/// process exited.
const DRAIN_BOUND: Duration = Duration::from_secs(2);

/// Whether kata-rs must provide the terminal itself: only in the
/// foreground. A process that outlives the command with a terminal and no
/// console socket would have nobody to read it.
pub fn needed(terminal: bool, console_socket: Option<&Path>, foreground: bool) -> Result<bool> {
    match (terminal, console_socket, foreground) {
        (true, None, false) => {
            bail!("the process has a terminal but no --console-socket to send it to")
        }
        (true, None, true) => Ok(true),
        _ => Ok(false),
    }
}

/// kata-rs's own console socket where [`needed`] says so.
pub fn own_if_needed(
    terminal: bool,
    console_socket: Option<&Path>,
    foreground: bool,
) -> Result<Option<OwnConsole>> {
    if needed(terminal, console_socket, foreground)? {
        Ok(Some(OwnConsole::bind()?))
    } else {
        Ok(None)
    }
}

/// For `create` and `run` of a bundle: kata-rs's own console socket, set
/// as the command's, when the process has a terminal and the caller gave
/// none.
pub fn for_bundle(args: &mut CreateArgs, foreground: bool) -> Result<Option<OwnConsole>> {
    let terminal = bundle_terminal(args);
    let own = own_if_needed(terminal, args.console_socket.as_deref(), foreground)?;
    if let Some(own) = &own {
        args.console_socket = Some(own.path());
    }
    Ok(own)
}

/// Whether the bundle's process has a terminal; a bundle that cannot be
/// read is left for create to report.
pub fn bundle_terminal(args: &CreateArgs) -> bool {
    kata_rs_engine::load_bundle_spec(&args.id, &args.bundle)
        .ok()
        .and_then(|spec| spec.process().as_ref().and_then(|p| p.terminal()))
        .unwrap_or(false)
}

/// Attaches `console` if there is one.
pub fn attach(console: Option<OwnConsole>) -> Result<Option<Terminal>> {
    console.map(OwnConsole::attach).transpose()
}

/// The resize action for [`super::foreground::wait`].
pub fn resizer(terminal: &Option<Terminal>) -> impl Fn() + '_ {
    move || {
        if let Some(t) = terminal {
            t.resize();
        }
    }
}

/// The console socket kata-rs listens on for its own terminal.
pub struct OwnConsole {
    dir: tempfile::TempDir,
    listener: UnixListener,
}

impl OwnConsole {
    pub fn bind() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kata-rs-console-")
            .tempdir()
            .context("a directory for the console socket")?;
        let listener = UnixListener::bind(dir.path().join("console.sock"))
            .context("bind the console socket")?;
        Ok(Self { dir, listener })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("console.sock")
    }

    /// Takes the master sent while the process was made (create or exec
    /// has returned) and starts relaying it.
    pub fn attach(self) -> Result<Terminal> {
        let master = kata_rs_engine::console::receive_queued_master(&self.listener)
            .context("take the container's terminal")?;
        Terminal::relay(master)
    }
}

/// The container's terminal relayed to ours; restores our terminal's mode
/// when dropped.
pub struct Terminal {
    master: File,
    saved: Option<Termios>,
    output: Option<JoinHandle<()>>,
}

impl Terminal {
    fn relay(master: OwnedFd) -> Result<Self> {
        let own = |fd: std::os::fd::BorrowedFd<'_>| -> Result<File> {
            Ok(File::from(fd.try_clone_to_owned()?))
        };
        let input = own(std::io::stdin().as_fd())?;
        let out = own(std::io::stdout().as_fd())?;
        // Our line discipline would echo and cook what the container's
        // terminal already does: ours passes bytes while it relays.
        let saved = termios::tcgetattr(input.as_fd()).ok();
        if let Some(mode) = &saved {
            let mut raw = mode.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(input.as_fd(), SetArg::TCSANOW, &raw)
                .context("put the terminal in raw mode")?;
        }
        let master = File::from(master);
        let terminal = Terminal {
            output: Some(stdio::pump("tty-out", master.try_clone()?, out, |_| {})),
            master: master.try_clone()?,
            saved,
        };
        terminal.resize();
        // Not joined: it may block on a terminal nobody types into, and
        // the process exits without it.
        stdio::pump("tty-in", input, master, |_| {});
        Ok(terminal)
    }

    /// Gives the container's terminal the size of ours (on SIGWINCH).
    pub fn resize(&self) {
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize into `size`, TIOCSWINSZ
        // reads one.
        unsafe {
            if libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) == 0 {
                libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size);
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(output) = self.output.take() {
            stdio::join_bounded(vec![output], DRAIN_BOUND);
        }
        if let Some(mode) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, mode);
        }
    }
}
