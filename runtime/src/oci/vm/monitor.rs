//! The host process that stands for one container process in VM mode: its
//! pid goes to --pid-file, it relays stdio (or a host pty) to the agent,
//! forwards the signals it receives, and exits with the process's status
//! once WaitProcess returns and the output is drained. conmon and
//! containerd-shim-runc-v2 reap it and take that status as the container's.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};

use crate::oci::console::OwnConsole;
use crate::sandbox::agent::{Agent, LOST_STATUS};
use crate::sandbox::stdio::{self, StdioAddr, Streams, DRAIN_BOUND};

/// One process to stand for.
#[derive(Debug, Clone)]
pub struct Target {
    pub uds: PathBuf,
    pub container_id: String,
    pub exec_id: String,
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
}

/// Connects the streams, runs `started` (which makes the process exist in
/// the guest), relays until the process exits and returns its status.
/// Signals are blocked here and forwarded to the process.
pub fn serve(target: &Target, started: impl FnOnce(&Agent) -> Result<()>) -> Result<i32> {
    let signals = SigSet::all();
    signals.thread_block().context("block signals")?;
    let mut own_terminal = None;
    let streams = Streams::connect(
        &StdioAddr::Hybrid(target.uds.clone()),
        &target.container_id,
        &target.exec_id,
        target.tty,
    )?;
    let (outputs, pty) = match streams {
        Streams::Pipes {
            stdin,
            stdout,
            stderr,
        } => (stdio::relay_std(stdin, stdout, stderr), None),
        Streams::Tty(conn) => match target.console_socket.as_deref() {
            Some(socket) => {
                let (threads, slave) = relay_pty(socket, conn)?;
                (threads, Some(slave))
            }
            // `exec -t` in the foreground without a console socket: the
            // terminal is ours, and so is the size the guest's follows.
            None => {
                let own = OwnConsole::bind()?;
                let (threads, _slave) = relay_pty(&own.path(), conn)?;
                own_terminal = Some(own.attach()?);
                let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
                (threads, Some(stdin))
            }
        },
    };
    let agent = Agent::connect(&target.uds)?;
    started(&agent)?;
    forward_signals(agent.clone(), target.clone(), signals, pty);

    let status = agent
        .wait(&target.container_id, &target.exec_id)
        .map_or_else(
            |e| {
                tracing::warn!(id = %target.container_id, exec_id = %target.exec_id, error = %e, "the process could not be waited for");
                LOST_STATUS
            },
            |exit| exit.status,
        );
    stdio::join_bounded(outputs, DRAIN_BOUND);
    drop(own_terminal);
    Ok(status)
}

/// A host pty whose master goes to the console socket (as runc sends it)
/// and whose slave is relayed to the guest terminal; the slave becomes our
/// controlling terminal so that resizes of the master reach us as SIGWINCH.
fn relay_pty(
    console_socket: &Path,
    conn: UnixStream,
) -> Result<(Vec<std::thread::JoinHandle<()>>, OwnedFd)> {
    let pty = nix::pty::openpty(None, None).context("allocate a pty")?;
    let name = nix::unistd::ttyname(pty.slave.as_fd()).unwrap_or_default();
    send_fd(
        console_socket,
        &pty.master,
        name.to_string_lossy().as_bytes(),
    )?;
    drop(pty.master);
    let mut raw = nix::sys::termios::tcgetattr(pty.slave.as_fd()).context("tcgetattr")?;
    // The guest's pty does the line discipline; this one passes bytes.
    nix::sys::termios::cfmakeraw(&mut raw);
    nix::sys::termios::tcsetattr(pty.slave.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw)
        .context("tcsetattr")?;
    // SAFETY: TIOCSCTTY takes an int argument and no pointers.
    if unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "no controlling terminal: resizes will not be seen");
    }
    let from_guest = conn.try_clone()?;
    let slave_in = std::fs::File::from(pty.slave.try_clone()?);
    let slave_out = std::fs::File::from(pty.slave.try_clone()?);
    stdio::pump("tty-in", slave_in, conn, |s| {
        let _ = s.shutdown(std::net::Shutdown::Write);
    });
    let out = stdio::pump("tty-out", from_guest, slave_out, |_| {});
    Ok((vec![out], pty.slave))
}

/// Sends `fd` over the Unix socket at `path` with `name` as the payload:
/// the console socket protocol of runc, conmon and go-runc.
pub fn send_fd(path: &Path, fd: &OwnedFd, name: &[u8]) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let sock = UnixStream::connect(path)
        .with_context(|| format!("connect to the console socket {}", path.display()))?;
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(name)];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("send the terminal to the console socket")?;
    Ok(())
}

/// Gives the process's terminal in the guest the size of `tty`.
fn pass_size_on(agent: &Agent, target: &Target, tty: &OwnedFd) {
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut size) } == 0 {
        let resized = agent.resize(
            &target.container_id,
            &target.exec_id,
            size.ws_col.into(),
            size.ws_row.into(),
        );
        if let Err(e) = resized {
            tracing::debug!(error = %e, "pass the terminal's size on");
        }
    }
}

/// Forwards the signals we receive to the process; SIGWINCH becomes a
/// resize to the size of `pty`, which is also passed on at once (a
/// terminal that already has its size sends no SIGWINCH).
fn forward_signals(agent: Agent, target: Target, signals: SigSet, pty: Option<OwnedFd>) {
    if let Some(tty) = &pty {
        pass_size_on(&agent, &target, tty);
    }
    std::thread::spawn(move || loop {
        let Ok(signal) = signals.wait() else { return };
        match signal {
            Signal::SIGCHLD | Signal::SIGURG | Signal::SIGPIPE => {}
            Signal::SIGWINCH => {
                if let Some(tty) = &pty {
                    pass_size_on(&agent, &target, tty);
                }
            }
            other => {
                let sent = agent.signal(&target.container_id, &target.exec_id, other as u32, false);
                if let Err(e) = sent {
                    tracing::debug!(signal = %other, error = %e, "forward a signal");
                }
            }
        }
    });
}

/// The monitor's side of the start-up handshake with `create` over
/// `control`: "ready" once the streams are connected, then `create` makes
/// the process and answers "go" (or closes the socket on failure).
pub fn handshake(control: UnixStream) -> impl FnOnce(&Agent) -> Result<()> {
    move |_client| {
        let mut writer = control.try_clone()?;
        writer.write_all(b"ready\n")?;
        let mut line = String::new();
        BufReader::new(control).read_line(&mut line)?;
        if line.trim() != "go" {
            bail!("create did not complete");
        }
        Ok(())
    }
}

/// `create`'s side: waits for "ready" from the monitor.
pub fn await_ready(control: &UnixStream, timeout: Duration) -> Result<()> {
    control.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(control)
        .read_line(&mut line)
        .context("wait for the monitor")?;
    match line.trim() {
        "ready" => {}
        "" => bail!("the monitor exited before it was ready"),
        said => bail!("the monitor failed: {}", said.trim_start_matches("error: ")),
    }
    Ok(())
}
