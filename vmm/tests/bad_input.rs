//! Bad input to kata-rs-vmm: one clear error line, exit status 1, and
//! nothing left behind. These run without booting a guest, so they need no
//! KVM that can run a standard kernel; the kernel here is a minimal ELF.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kata-rs-vmm"))
        .args(args)
        .output()
        .expect("run kata-rs-vmm")
}

/// A valid 64-bit ELF executable with one loadable segment at 16 MiB: enough
/// for the loader, never run.
fn tiny_elf(dir: &Path) -> PathBuf {
    const LOAD: u64 = 0x100_0000;
    let payload = [0xf4u8; 16]; // hlt
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&LOAD.to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // phnum
    elf.extend_from_slice(&[0; 6]);
    let offset = 64 + 56u64;
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&offset.to_le_bytes());
    elf.extend_from_slice(&LOAD.to_le_bytes());
    elf.extend_from_slice(&LOAD.to_le_bytes());
    elf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    elf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&payload);
    let path = dir.join("vmlinux");
    std::fs::write(&path, elf).unwrap();
    path
}

/// Asserts a failed run: exit 1, exactly one stderr line containing `what`.
fn assert_one_error(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("kata-rs-vmm: "), "{stderr}");
    assert!(lines[0].contains(what), "expected {what:?} in: {stderr}");
}

#[test]
fn missing_kernel() {
    assert_one_error(
        &vmm(&["--kernel", "/nonexistent/vmlinux"]),
        "cannot open kernel /nonexistent/vmlinux",
    );
}

#[test]
fn corrupt_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinux");
    std::fs::write(&k, b"\x7fELF garbage that is not a kernel").unwrap();
    assert_one_error(
        &vmm(&["--kernel", k.to_str().unwrap()]),
        "cannot load kernel",
    );
    std::fs::write(&k, b"just text").unwrap();
    assert_one_error(
        &vmm(&["--kernel", k.to_str().unwrap()]),
        "neither an ELF vmlinux nor a bzImage",
    );
}

#[test]
fn memory_too_small_for_kernel_and_initrd() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiny_elf(dir.path());
    let initrd = dir.path().join("initrd");
    let mut f = std::fs::File::create(&initrd).unwrap();
    f.write_all(&vec![0u8; 60 << 20]).unwrap();
    let out = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory-mib",
        "64",
    ]);
    assert_one_error(&out, "guest memory too small");
    assert_one_error(
        &vmm(&["--kernel", k.to_str().unwrap(), "--memory-mib", "8"]),
        "too small",
    );
}

#[test]
fn missing_initrd() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiny_elf(dir.path());
    let out = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert_one_error(&out, "cannot read initrd /nonexistent/initrd");
}

#[test]
fn too_many_vcpus() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiny_elf(dir.path());
    let out = vmm(&["--kernel", k.to_str().unwrap(), "--vcpus", "255"]);
    assert_one_error(&out, "255 vCPUs requested");
    // 0 is refused by the argument parser itself.
    let out = vmm(&["--kernel", k.to_str().unwrap(), "--vcpus", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vcpus"));
}

#[test]
fn vsock_socket_in_use_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiny_elf(dir.path());
    let sock = dir.path().join("vsock.sock");
    let _live = UnixListener::bind(&sock).unwrap();
    let out = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--vsock-uds",
        sock.to_str().unwrap(),
    ]);
    assert_one_error(&out, "in use");
    assert!(sock.exists(), "the other listener's socket must stay");
}

#[test]
fn unreadable_and_bad_disks() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiny_elf(dir.path());
    let sock = dir.path().join("vsock.sock");
    let out = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--vsock-uds",
        sock.to_str().unwrap(),
        "--disk",
        "/nonexistent/disk.img,ro",
    ]);
    assert_one_error(&out, "/nonexistent/disk.img");
    assert!(
        !sock.exists(),
        "a failed start must not leave its vsock socket behind"
    );

    // Root reads any file regardless of its mode, so "unreadable" here is
    // something that is not a disk at all.
    let out = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--disk",
        dir.path().to_str().unwrap(),
    ]);
    assert_one_error(&out, dir.path().to_str().unwrap());

    let out = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--disk",
        "/tmp/x.img,bogus",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}

#[test]
fn missing_virtiofsd_and_bad_shares() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiny_elf(dir.path());
    let sock = dir.path().join("vfsd.sock");
    let out = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--fs",
        &format!("share={}", sock.display()),
    ]);
    assert_one_error(&out, "cannot connect to virtiofsd");
    assert_one_error(&out, sock.to_str().unwrap());

    // Two shares with one tag: the guest could reach only one. The check
    // comes before any connection, so no virtiofsd is needed.
    let share = format!("share={}", sock.display());
    let out = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--fs",
        &share,
        "--fs",
        &share,
    ]);
    assert_one_error(&out, "given twice");

    for bad in ["share", &format!("{}=/s", "x".repeat(37))] {
        let out = vmm(&["--kernel", k.to_str().unwrap(), "--fs", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--fs"));
    }
}

#[test]
fn bad_network_devices() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiny_elf(dir.path());
    let k = k.to_str().unwrap();
    let net = "fd=999,mac=02:00:00:00:00:01";
    assert_one_error(
        &vmm(&["--kernel", k, "--net", net]),
        "tap fd 999 is not open",
    );
    assert_one_error(
        &vmm(&["--kernel", k, "--net", net, "--net", net]),
        "tap fd 999 is given twice",
    );
    assert_one_error(
        &vmm(&[
            "--kernel",
            k,
            "--net",
            "tap=krs-a,mac=02:00:00:00:00:01",
            "--net",
            "tap=krs-b,mac=02:00:00:00:00:01",
        ]),
        "MAC 02:00:00:00:00:01 is given twice",
    );

    for (bad, named) in [
        ("tap=tap0,mac=02:00:00:00:00:zz", "02:00:00:00:00:zz"),
        ("tap=tap0", "mac"),
        ("fd=1,mac=02:00:00:00:00:01", "fd 1"),
    ] {
        let out = vmm(&["--kernel", k, "--net", bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--net") && stderr.contains(named),
            "{stderr}"
        );
    }
}
