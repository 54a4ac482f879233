//! A tiny PID 1 for VMM integration tests: it exercises guest-side device
//! paths the agent does not (a disk, a guest-initiated vsock connection),
//! prints one `PROBE ...` line per result on the console, and resets the VM.
//!
//! Driven by the kernel command line:
//! - `probe.disk=/dev/vda`: read the first sector, then try to overwrite it;
//! - `probe.vsock_port=P`: connect to host (CID 2) port P, send a line and
//!   print the line that comes back.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

fn main() {
    for (fs, target) in [("devtmpfs", "/dev"), ("proc", "/proc")] {
        if let Err(e) = mount(Some(fs), target, Some(fs), MsFlags::empty(), None::<&str>) {
            println!("PROBE mount {target} failed: {e}");
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let param = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
    };
    if let Some(disk) = param("probe.disk") {
        probe_disk(&disk);
    }
    if let Some(port) = param("probe.vsock_port") {
        match port.parse() {
            Ok(port) => probe_vsock(port),
            Err(_) => println!("PROBE vsock bad port {port:?}"),
        }
    }
    println!("PROBE done");
    let _ = std::io::stdout().flush();
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
}

fn probe_disk(path: &str) {
    let mut sector = [0u8; 512];
    match OpenOptions::new()
        .read(true)
        .open(path)
        .and_then(|mut f| f.read_exact(&mut sector))
    {
        Ok(()) => {
            let text: String = sector
                .iter()
                .take_while(|b| b.is_ascii_graphic() || **b == b' ')
                .map(|b| *b as char)
                .collect();
            println!("PROBE disk-read ok {text}");
        }
        Err(e) => println!("PROBE disk-read error {e}"),
    }
    let write = OpenOptions::new().write(true).open(path).and_then(|mut f| {
        f.write_all(&[b'W'; 512])?;
        f.sync_all()
    });
    match write {
        Ok(()) => println!("PROBE disk-write ok"),
        Err(e) => println!("PROBE disk-write error {e}"),
    }
}

fn probe_vsock(port: u32) {
    let result = (|| -> std::io::Result<String> {
        let fd = kata_rs_protocol::vsock::connect(kata_rs_protocol::vsock::HOST_CID, port)?;
        // A connected stream socket reads and writes like any file.
        // SAFETY: the fd is ours and open; File takes it over.
        let mut stream = unsafe { std::fs::File::from_raw_fd(fd.into_raw_fd()) };
        stream.write_all(b"hello from the guest\n")?;
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    })();
    match result {
        Ok(reply) => println!("PROBE vsock ok {reply}"),
        Err(e) => println!("PROBE vsock error {e}"),
    }
}
