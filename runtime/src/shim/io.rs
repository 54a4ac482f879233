//! A process's stdio as containerd hands it to a shim (FIFO paths, any of
//! them empty) relayed to the agent's streams for that process.

use std::fs::{File, OpenOptions};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use crate::sandbox::stdio::{self, Streams};

/// The FIFOs of one process, as paths; an empty path means none.
#[derive(Debug, Clone, Default)]
pub struct Fifos {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The relays of one process: the output threads end when the agent
/// closes the process's output; the input can be closed on CloseIO.
pub struct Relays {
    pub outputs: Vec<JoinHandle<()>>,
    stdin: Arc<Mutex<Option<UnixStream>>>,
}

impl Relays {
    /// Ends the process's stdin (containerd's CloseIO): the process reads
    /// end-of-file whether or not anyone still holds the FIFO.
    pub fn close_stdin(&self) {
        if let Some(s) = self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }
}

/// An output FIFO opened for reading and writing: the open does not wait
/// for a reader, and a reader that goes away does not fail our writes.
/// The reader sees end-of-file once the relay drops it.
fn open_output(path: &str) -> Result<Option<File>> {
    if path.is_empty() {
        return Ok(None);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {path}"))?;
    Ok(Some(file))
}

/// Copies the stdin FIFO to `to` on a thread. The FIFO is opened there:
/// the open waits for containerd's writer, which may come later or never,
/// and must not hold up the process.
fn relay_input(path: &str, to: UnixStream) -> Arc<Mutex<Option<UnixStream>>> {
    let handle = Arc::new(Mutex::new(to.try_clone().ok()));
    if path.is_empty() {
        let _ = to.shutdown(std::net::Shutdown::Write);
        return handle;
    }
    let path = path.to_owned();
    let closer = Arc::clone(&handle);
    std::thread::spawn(move || match File::open(Path::new(&path)) {
        Ok(fifo) => {
            let _ = stdio::pump("stdin", fifo, to, move |s| {
                let _ = s.shutdown(std::net::Shutdown::Write);
                closer.lock().unwrap_or_else(|e| e.into_inner()).take();
            })
            .join();
        }
        Err(e) => tracing::warn!(path, error = %e, "open the stdin FIFO"),
    });
    handle
}

/// Relays `streams` (connected to the agent) to the FIFOs.
pub fn relay(streams: Streams, fifos: &Fifos) -> Result<Relays> {
    let mut outputs = Vec::new();
    let stdin = match streams {
        Streams::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            for (name, from, path) in [
                ("stdout", stdout, &fifos.stdout),
                ("stderr", stderr, &fifos.stderr),
            ] {
                match open_output(path)? {
                    Some(fifo) => outputs.push(stdio::pump(name, from, fifo, |_| {})),
                    // Read and dropped, so that the process never blocks
                    // on an output nobody takes.
                    None => outputs.push(stdio::pump(name, from, std::io::sink(), |_| {})),
                }
            }
            relay_input(&fifos.stdin, stdin)
        }
        Streams::Tty(conn) => {
            let from = conn.try_clone()?;
            match open_output(&fifos.stdout)? {
                Some(fifo) => outputs.push(stdio::pump("tty-out", from, fifo, |_| {})),
                None => outputs.push(stdio::pump("tty-out", from, std::io::sink(), |_| {})),
            }
            relay_input(&fifos.stdin, conn)
        }
    };
    Ok(Relays { outputs, stdin })
}
