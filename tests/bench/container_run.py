#!/usr/bin/env python3
"""Container run benchmark: `kata-rs run` of a busybox /bin/true (create,
start, wait, delete) side by side with `runc run` of the same bundle, and
the host memory (PSS) of the host processes of one running container.

    container_run.py --kata-rs BIN --isolation vm|namespace [--runs N]
                     [--config FILE] [--qemu-boot-ms MS]

Prints medians and ratios; asserts nothing. Run by tests/bench/run.sh.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

APPLETS = ["sh", "true", "sleep"]


def bundle(root, args):
    rootfs = os.path.join(root, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    for d in ["proc", "sys", "dev", "tmp"]:
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for a in APPLETS:
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    subprocess.run(["runc", "spec", "--bundle", root], check=True)
    with open(os.path.join(root, "config.json")) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(config, f)


def timed(cmd, env=None):
    start = time.monotonic()
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
    elapsed = time.monotonic() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.decode().strip()}")
    return elapsed


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants_named(needle):
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append((int(entry), cmdline.split(" ")[0]))
    return pids


def main():
    # Each figure is printed as it is known: a run cut short keeps them.
    sys.stdout.reconfigure(line_buffering=True)
    p = argparse.ArgumentParser()
    p.add_argument("--kata-rs", required=True)
    p.add_argument("--isolation", required=True, choices=["vm", "namespace"])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--config")
    p.add_argument("--qemu-boot-ms", type=float,
                   help="QEMU -M microvm's exec -> agent ready with the same kernel and initrd")
    a = p.parse_args()

    env = dict(os.environ)
    if a.config:
        env["KATA_RS_CONFIG"] = a.config
    work = tempfile.mkdtemp(prefix="kata-rs-bench-")
    try:
        b = os.path.join(work, "true")
        bundle(b, ["/bin/true"])
        kroot, rroot = os.path.join(work, "kroot"), os.path.join(work, "rroot")
        kata = [a.kata_rs, "--root", kroot, "run", f"--isolation={a.isolation}", "--bundle", b]
        runc = ["runc", "--root", rroot, "run", "--bundle", b]
        # One warm-up run each, then alternate so both see the same load.
        timed(kata + ["warm-k"], env)
        timed(runc + ["warm-r"])
        kt, rt = [], []
        for i in range(a.runs):
            kt.append(timed(kata + [f"k{i}"], env))
            rt.append(timed(runc + [f"r{i}"]))
        km, rm = statistics.median(kt), statistics.median(rt)
        print(f"run /bin/true, {a.isolation} mode, N={a.runs} (median wall):")
        print(f"  kata-rs {km * 1000:.1f} ms   runc {rm * 1000:.1f} ms   ratio {km / rm:.2f}x")
        if a.qemu_boot_ms:
            print(f"  QEMU microvm boot to agent ready {a.qemu_boot_ms:.1f} ms   "
                  f"kata-rs whole run / that boot {km * 1000 / a.qemu_boot_ms:.2f}x")

        s = os.path.join(work, "sleep")
        bundle(s, ["sleep", "300"])
        subprocess.run([a.kata_rs, "--root", kroot, "run", "--detach",
                        f"--isolation={a.isolation}", "--bundle", s, "mem-k"],
                       check=True, env=env, stdin=subprocess.DEVNULL)
        subprocess.run(["runc", "--root", rroot, "run", "--detach", "--bundle", s, "mem-r"],
                       check=True, stdin=subprocess.DEVNULL)
        time.sleep(1)
        kstate = json.loads(subprocess.run([a.kata_rs, "--root", kroot, "state", "mem-k"],
                                           check=True, capture_output=True, env=env).stdout)
        rstate = json.loads(subprocess.run(["runc", "--root", rroot, "state", "mem-r"],
                                           check=True, capture_output=True).stdout)
        if a.isolation == "vm":
            procs = descendants_named(os.path.join(kroot, "mem-k"))
            procs += [(kstate["pid"], "monitor")]
        else:
            procs = [(kstate["pid"], "container init")]
        procs = sorted(set(procs))
        total = sum(pss_kib(pid) for pid, _ in procs)
        runc_pss = pss_kib(rstate["pid"])
        print(f"host PSS of one running container ({a.isolation} mode):")
        for pid, name in procs:
            print(f"  {os.path.basename(name)} (pid {pid}): {pss_kib(pid) / 1024:.1f} MiB")
        print(f"  kata-rs total {total / 1024:.1f} MiB   runc's init {runc_pss / 1024:.1f} MiB"
              f"   ratio {total / max(runc_pss, 1):.1f}x")
        subprocess.run([a.kata_rs, "--root", kroot, "delete", "--force", "mem-k"], env=env)
        subprocess.run(["runc", "--root", rroot, "delete", "--force", "mem-r"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
