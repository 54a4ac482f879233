//! A tiny PID 1 for VMM integration tests: it exercises guest-side device
//! paths the agent does not (a disk, a guest-initiated vsock connection),
//! prints one `PROBE ...` line per result on the console, and resets the VM.
//!
//! Driven by the kernel command line:
//! - `probe.cpu_flags=1`: print the first CPU's flags from /proc/cpuinfo;
//! - `probe.disk=/dev/vda`: read the first sector, then try to overwrite it;
//! - `probe.vsock_port=P`: connect to host (CID 2) port P, send a line and
//!   print the line that comes back;
//! - `probe.fs=TAG`: mount the virtio-fs share TAG, print the first line of
//!   its `hello.txt`, and write `from-guest.txt` in it;
//! - `probe.fs_rebind=1` (with `probe.fs`): then unmount, unbind the device
//!   from the virtiofs driver, bind it again, and read `hello.txt` anew.

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
    if param("probe.cpu_flags").is_some() {
        probe_cpu_flags();
    }
    if let Some(disk) = param("probe.disk") {
        probe_disk(&disk);
    }
    if let Some(port) = param("probe.vsock_port") {
        match port.parse() {
            Ok(port) => probe_vsock(port),
            Err(_) => println!("PROBE vsock bad port {port:?}"),
        }
    }
    if let Some(tag) = param("probe.fs") {
        probe_fs(&tag, param("probe.fs_rebind").is_some());
    }
    println!("PROBE done");
    let _ = std::io::stdout().flush();
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
}

fn probe_cpu_flags() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    match kata_rs_tests::cpu_flags(&cpuinfo) {
        Some(flags) => println!("PROBE cpu-flags {}", flags.join(" ")),
        None => println!("PROBE cpu-flags error: no flags line in /proc/cpuinfo"),
    }
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

const FS_MOUNT: &str = "/mnt";

fn probe_fs(tag: &str, rebind: bool) {
    let result = (|| -> std::io::Result<String> {
        std::fs::create_dir_all(FS_MOUNT)?;
        mount(
            Some(tag),
            FS_MOUNT,
            Some("virtiofs"),
            MsFlags::empty(),
            None::<&str>,
        )?;
        read_hello()
    })();
    match result {
        Ok(line) => println!("PROBE fs-read ok {line}"),
        Err(e) => {
            println!("PROBE fs-read error {e}");
            return;
        }
    }
    match std::fs::write(
        format!("{FS_MOUNT}/from-guest.txt"),
        "written by the guest\n",
    ) {
        Ok(()) => println!("PROBE fs-write ok"),
        Err(e) => println!("PROBE fs-write error {e}"),
    }
    if rebind {
        match rebind_fs(tag) {
            Ok(line) => println!("PROBE fs-rebind ok {line}"),
            Err(e) => println!("PROBE fs-rebind error {e}"),
        }
    }
    if let Err(e) = nix::mount::umount(FS_MOUNT) {
        println!("PROBE fs-umount error {e}");
    }
}

fn read_hello() -> std::io::Result<String> {
    let text = std::fs::read_to_string(format!("{FS_MOUNT}/hello.txt"))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Unmounts, resets the device through a driver unbind and bind (the
/// driver writes status 0, then initialises it again), and mounts anew.
fn rebind_fs(tag: &str) -> std::io::Result<String> {
    const DRIVER: &str = "/sys/bus/virtio/drivers/virtiofs";
    nix::mount::umount(FS_MOUNT)?;
    std::fs::create_dir_all("/sys")?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    let device = std::fs::read_dir(DRIVER)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("virtio"))
        .ok_or_else(|| std::io::Error::other("no device bound to virtiofs"))?;
    std::fs::write(format!("{DRIVER}/unbind"), &device)?;
    std::fs::write(format!("{DRIVER}/bind"), &device)?;
    mount(
        Some(tag),
        FS_MOUNT,
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    read_hello()
}
