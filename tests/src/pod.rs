//! What kata-rs's shim keeps on the host for a pod while it runs: its
//! directory and the processes (VMM, virtiofsd) that name it.

use std::path::{Path, PathBuf};

use crate::oci::processes_mentioning;

/// The directory kata-rs's shim keeps for pod `pod`.
pub fn pod_dir(pod: &str) -> PathBuf {
    Path::new("/run/kata-rs/pods").join(pod)
}

/// Fails the test unless pod `pod`'s directory is root's alone and
/// nothing in it (the shared bundles aside, which are the containers')
/// is writable by others.
pub fn assert_pod_dir_private(pod: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = pod_dir(pod);
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode();
    assert_eq!(
        mode(&dir) & 0o077,
        0,
        "{} is open to others ({:o})",
        dir.display(),
        mode(&dir) & 0o777
    );
    let mut open = Vec::new();
    let mut todo = vec![dir.clone()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.permissions().mode() & 0o002 != 0 && !meta.file_type().is_symlink() {
                open.push(path.display().to_string());
            }
            if meta.is_dir() && path != dir.join("share") {
                todo.push(path);
            }
        }
    }
    assert_eq!(open, Vec::<String>::new(), "writable by anyone");
}

/// The processes whose command line names pod `pod`'s directory.
pub fn pod_processes(pod: &str) -> Vec<String> {
    processes_mentioning(&format!("{}/", pod_dir(pod).display()))
}

/// The pod's backend: its VMM (`vm`), or its agent on the host.
pub fn pod_backend(pod: &str, vm: bool) -> Vec<String> {
    let name = if vm { "kata-rs-vmm" } else { "kata-rs-agent" };
    pod_processes(pod)
        .into_iter()
        .filter(|p| p.contains(name))
        .collect()
}

/// Nothing of containers `ids` is left on the host: no process in their
/// cgroups or naming them.
pub fn assert_no_container_left(ids: &[&str]) {
    for id in ids {
        assert_eq!(
            crate::peers::processes_mentioning(id),
            Vec::<String>::new(),
            "processes of container {id} are left"
        );
    }
}

/// SIGKILLs the one process in `processes` (as [`processes_mentioning`]
/// lists them); there must be exactly one, `what`.
pub fn kill_the_one(processes: &[String], what: &str) {
    let pids: Vec<i32> = processes
        .iter()
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "one {what}: {processes:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}
