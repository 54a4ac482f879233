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
use kata_rs_protocol::agent::{ProcessRequest, SignalProcessRequest, TtyWinResizeRequest};
use kata_rs_protocol::{AgentClient, AGENT_VSOCK_PORT};
use nix::sys::signal::{SigSet, Signal};

use super::stdio::{self, StdioAddr, Streams};
use crate::oci::console::OwnConsole;

/// How long output may still arrive after the process exited.
pub const DRAIN_BOUND: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// What a process that could not be waited for (its VM is gone) reports:
/// it was killed, as by SIGKILL.
pub const LOST_STATUS: i32 = 128 + 9;

/// One process to stand for.
#[derive(Debug, Clone)]
pub struct Target {
    pub uds: PathBuf,
    pub container_id: String,
    pub exec_id: String,
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
}

pub fn agent(uds: &Path) -> Result<AgentClient> {
    AgentClient::connect_hybrid(uds, AGENT_VSOCK_PORT, CONNECT_TIMEOUT)
        .context("connect to the agent")
}

/// Connects the streams, runs `started` (which makes the process exist in
/// the guest), relays until the process exits and returns its status.
/// Signals are blocked here and forwarded to the process.
pub fn serve(target: &Target, started: impl FnOnce(&AgentClient) -> Result<()>) -> Result<i32> {
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
    let client = agent(&target.uds)?;
    started(&client)?;
    forward_signals(client.clone(), target.clone(), signals, pty);

    let (status, _) = wait_for_exit(&client, &target.container_id, &target.exec_id);
    stdio::join_bounded(outputs, DRAIN_BOUND);
    drop(own_terminal);
    Ok(status)
}

/// Waits for process (`container_id`, `exec_id`) in the guest; returns its
/// exit status and whether the OOM killer ended it. A process that cannot
/// be waited for (its VM is gone) reports [`LOST_STATUS`].
fn wait_for_exit(client: &AgentClient, container_id: &str, exec_id: &str) -> (i32, bool) {
    wait_process(client, container_id, exec_id).unwrap_or_else(|e| {
        tracing::warn!(id = %container_id, exec_id, error = %e, "the process could not be waited for");
        (LOST_STATUS, false)
    })
}

/// The process's exit status and whether the OOM killer ended it, once it
/// exited; an error when the agent could not tell.
pub fn wait_process(
    client: &AgentClient,
    container_id: &str,
    exec_id: &str,
) -> ttrpc::Result<(i32, bool)> {
    let mut req = ProcessRequest::new();
    req.container_id = container_id.to_owned();
    req.exec_id = exec_id.to_owned();
    client
        .agent
        .wait_process(ttrpc::context::Context::default(), &req)
        .map(|resp| (resp.exit_status, resp.oom_killed))
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
fn pass_size_on(client: &AgentClient, target: &Target, tty: &OwnedFd) {
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut size) } == 0 {
        let mut req = TtyWinResizeRequest::new();
        req.container_id = target.container_id.clone();
        req.exec_id = target.exec_id.clone();
        req.rows = size.ws_row.into();
        req.columns = size.ws_col.into();
        let ctx = ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
        let _ = client.agent.tty_win_resize(ctx, &req);
    }
}

/// Forwards the signals we receive to the process; SIGWINCH becomes a
/// resize to the size of `pty`, which is also passed on at once (a
/// terminal that already has its size sends no SIGWINCH).
fn forward_signals(client: AgentClient, target: Target, signals: SigSet, pty: Option<OwnedFd>) {
    if let Some(tty) = &pty {
        pass_size_on(&client, &target, tty);
    }
    std::thread::spawn(move || loop {
        let Ok(signal) = signals.wait() else { return };
        let ctx = ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
        match signal {
            Signal::SIGCHLD | Signal::SIGURG | Signal::SIGPIPE => {}
            Signal::SIGWINCH => {
                if let Some(tty) = &pty {
                    pass_size_on(&client, &target, tty);
                }
            }
            other => {
                let mut req = SignalProcessRequest::new();
                req.container_id = target.container_id.clone();
                req.exec_id = target.exec_id.clone();
                req.signal = other as u32;
                let _ = client.agent.signal_process(ctx, &req);
            }
        }
    });
}

/// The monitor's side of the start-up handshake with `create` over
/// `control`: "ready" once the streams are connected, then `create` makes
/// the process and answers "go" (or closes the socket on failure).
pub fn handshake(control: UnixStream) -> impl FnOnce(&AgentClient) -> Result<()> {
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
