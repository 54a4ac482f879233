#!/usr/bin/env python3
"""Builds the busybox test image from Debian's busybox-static, byte for byte
reproducible, in three forms under OUTDIR:

    rootfs/                    a plain root filesystem for OCI bundles
    busybox-rootfs.tar         the same tree as a tarball, for `podman import`
    busybox-oci.tar            an OCI image archive, for `ctr images import`
    pause-oci.tar              the same layer as a pod's sandbox image for
                               containerd's CRI plugin: it waits until
                               SIGTERM, as Kubernetes' pause image does

Every entry has mtime 0 and uid/gid 0 and is written in sorted order, so the
same busybox binary always gives the same bytes. A stamp (the hash of the
binary and of this script) makes a second call return at once; a lock lets
test binaries running side by side call it together. Prints OUTDIR.

Usage: build-busybox.py OUTDIR
"""

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

BUSYBOX = "/bin/busybox"
IMAGE_NAME = "localhost/kata-rs-busybox:latest"
PAUSE_NAME = "localhost/kata-rs-pause:latest"
# PID 1 of a pod's sandbox container: reaps, waits, and ends on TERM (the
# kernel drops signals to a PID 1 without a handler).
PAUSE_CMD = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"]
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
GROUP = "root:x:0:\nuser:x:1000:\n"


def entries(busybox):
    """The image's tree: (path, kind, mode, payload) sorted by path, where
    payload is file bytes or a symlink target."""
    tree = [
        ("bin", "dir", 0o755, None),
        ("bin/busybox", "file", 0o755, busybox),
        ("dev", "dir", 0o755, None),
        ("etc", "dir", 0o755, None),
        ("etc/group", "file", 0o644, GROUP.encode()),
        ("etc/hostname", "file", 0o644, b"busybox\n"),
        ("etc/hosts", "file", 0o644, b"127.0.0.1 localhost\n"),
        ("etc/passwd", "file", 0o644, PASSWD.encode()),
        ("etc/resolv.conf", "file", 0o644, b""),
        ("home", "dir", 0o755, None),
        ("home/user", "dir", 0o755, None),
        ("proc", "dir", 0o555, None),
        ("root", "dir", 0o700, None),
        ("run", "dir", 0o755, None),
        ("sys", "dir", 0o555, None),
        ("tmp", "dir", 0o1777, None),
        ("usr", "dir", 0o755, None),
        ("usr/bin", "symlink", 0o777, "../bin"),
        ("usr/sbin", "symlink", 0o777, "../bin"),
        ("sbin", "symlink", 0o777, "bin"),
        ("var", "dir", 0o755, None),
        ("var/tmp", "dir", 0o1777, None),
    ]
    # Every applet the binary has (sh, echo, cat, sleep, id, stty, dd, ...),
    # as a symlink next to it: the list comes from the binary itself.
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            tree.append((f"bin/{applet}", "symlink", 0o777, "busybox"))
    return sorted(tree)


def rootfs_tar(tree):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, kind, mode, payload in tree:
            info = tarfile.TarInfo(path)
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def write_rootfs(tree, dest):
    os.mkdir(dest)
    for path, kind, mode, payload in tree:
        full = os.path.join(dest, path)
        if kind == "dir":
            os.mkdir(full)
        elif kind == "symlink":
            os.symlink(payload, full)
            continue
        else:
            with open(full, "wb") as f:
                f.write(payload)
        os.chmod(full, mode)
    # Directories last, children first, so their mtime stays 0 too.
    for path, kind, _, _ in reversed(tree):
        os.utime(os.path.join(dest, path), (0, 0), follow_symlinks=False)


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def oci_archive(layer, name, cmd):
    layer_digest, _ = blob(layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [PATH_ENV], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_bytes = blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(layer),
            }
        ],
    }
    manifest_digest, manifest_bytes = blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": "latest",
                },
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
    }
    for digest, data in (
        (layer_digest, layer),
        (config_digest, config_bytes),
        (manifest_digest, manifest_bytes),
    ):
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    tree = [("blobs", "dir", 0o755, None), ("blobs/sha256", "dir", 0o755, None)]
    tree += [(name, "file", 0o644, data) for name, data in files.items()]
    return rootfs_tar(sorted(tree))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = os.path.abspath(sys.argv[1])
    os.makedirs(out, exist_ok=True)
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    with open(__file__, "rb") as f:
        script = f.read()
    key = hashlib.sha256(busybox + script).hexdigest()
    stamp = os.path.join(out, "stamp")
    with open(os.path.join(out, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(stamp) and open(stamp).read() == key:
            print(out)
            return
        if os.path.exists(stamp):
            os.unlink(stamp)
        tree = entries(busybox)
        rootfs = os.path.join(out, "rootfs")
        shutil.rmtree(rootfs, ignore_errors=True)
        write_rootfs(tree, rootfs)
        layer = rootfs_tar(tree)
        for name, data in (
            ("busybox-rootfs.tar", layer),
            ("busybox-oci.tar", oci_archive(layer, IMAGE_NAME, ["/bin/sh"])),
            ("pause-oci.tar", oci_archive(layer, PAUSE_NAME, PAUSE_CMD)),
        ):
            with open(os.path.join(out, name + ".new"), "wb") as f:
                f.write(data)
            os.replace(os.path.join(out, name + ".new"), os.path.join(out, name))
        # Written last: an interrupted build is redone by the next call.
        with open(stamp, "w") as f:
            f.write(key)
    print(out)


if __name__ == "__main__":
    main()
