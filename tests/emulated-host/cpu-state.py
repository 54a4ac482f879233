#!/usr/bin/env python3
"""Where the emulated host's vCPUs are, for the report of a wedged run.

    cpu-state.py MONITOR_SOCKET [VMLINUX...]

Asks QEMU's human monitor for every vCPU's registers three times, a second
apart, and prints one line per vCPU and sample: RIP, privilege level,
halted, interrupt flag, and the kernel symbol RIP falls in for each VMLINUX
given (the emulated host's and the guest's: a vCPU that is running a nested
guest shows the guest's registers). A RIP that does not move between
samples while the vCPU is not halted is a vCPU spinning in one place.

Then, for each virtio device, each queue's indices as QEMU holds them
(`info virtio-queue-status`): requests the guest made available but QEMU
never took (its avail index past last_avail_idx: a lost notification, unless the
queue is one the guest fills with spare receive buffers),
requests QEMU took and did not finish (inuse), and used entries the guest
was or was not told of (used_idx against signalled_used). All vCPUs
halted while a queue shows one of these is a wedge in device emulation,
not in the emulated host's kernel.
"""

import bisect
import os
import re
import socket
import subprocess
import sys
import time


def monitor(path, command):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            chunks.append(data)
            # The greeting ends in a prompt too: the answer is complete
            # at the prompt that follows the command's echo.
            parts = b"".join(chunks).split(command.encode(), 1)
            if len(parts) == 2 and b"(qemu)" in parts[1]:
                break
        return b"".join(chunks).decode(errors="replace")


def symbols(vmlinux):
    try:
        out = subprocess.run(["nm", "-n", vmlinux], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    addrs, names = [], []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            addrs.append(int(parts[0], 16))
            names.append(parts[2])
    return addrs, names


def lookup(table, rip):
    addrs, names = table
    i = bisect.bisect_right(addrs, rip) - 1
    if i < 0 or rip - addrs[i] > 0x100000:
        return "?"
    return f"{names[i]}+{rip - addrs[i]:#x}"


def main():
    sock = sys.argv[1]
    tables = [(v, symbols(v)) for v in sys.argv[2:]]
    for sample in range(3):
        if sample:
            time.sleep(1)
        text = monitor(sock, "info registers -a")
        for block in re.split(r"\n(?=CPU#\d+)", text):
            cpu = re.search(r"CPU#(\d+)", block)
            rip = re.search(r"RIP=([0-9a-f]+)", block)
            if not cpu or not rip:
                continue
            value = int(rip.group(1), 16)
            cpl = re.search(r"CPL=(\d)", block)
            hlt = re.search(r"HLT=(\d)", block)
            eflags = re.search(r"RFL=([0-9a-f]+)", block)
            flag_if = (int(eflags.group(1), 16) >> 9) & 1 if eflags else "?"
            where = "; ".join(
                f"{os.path.basename(os.path.dirname(name))}: {lookup(table, value)}"
                for name, table in tables
                if table
            )
            print(
                f"sample {sample} CPU#{cpu.group(1)} RIP={value:#x} "
                f"CPL={cpl.group(1) if cpl else '?'} HLT={hlt.group(1) if hlt else '?'} "
                f"IF={flag_if} {where}"
            )


def field(text, name):
    m = re.search(rf"^\s*{name}:\s*(\S+)", text, re.M)
    return m.group(1) if m else None


def guest_u16(sock, address):
    """The 16-bit value at guest-physical `address`."""
    m = re.search(r":\s*0x([0-9a-f]+)", monitor(sock, f"xp /1hx {address:#x}"))
    return int(m.group(1), 16) if m else None


def virtio_queues(sock):
    devices = re.findall(r"^(/machine/\S+) \[([^\]]+)\]", monitor(sock, "info virtio"), re.M)
    for path, name in devices:
        count = field(monitor(sock, f"info virtio-status {path}"), "num_vqs")
        for queue in range(int(count or 0)):
            text = monitor(sock, f"info virtio-queue-status {path} {queue}")
            avail = int(field(text, "avail") or "0", 16)
            used = int(field(text, "used") or "0", 16)
            if not avail:
                continue
            # The idx of each ring sits 2 bytes into it.
            guest_avail = guest_u16(sock, avail + 2)
            guest_used = guest_u16(sock, used + 2)
            taken = field(text, "last_avail_idx")
            inuse = field(text, "inuse")
            if not guest_avail and taken in (None, "0"):
                continue
            verdict = []
            if guest_avail is not None and taken is not None and guest_avail != int(taken):
                # Normal for a receive queue (virtio-serial's even ones).
                verdict.append("buffers QEMU has not taken: spare receive buffers, or a lost notification")
            if inuse not in (None, "0"):
                verdict.append("requests QEMU has not finished")
            device = next((part for part in path.split("/") if part.startswith("device[")), path)
            print(
                f"virtio {name} {device} queue {queue}: avail.idx={guest_avail} "
                f"last_avail_idx={taken} inuse={inuse} used_idx={field(text, 'used_idx')} "
                f"used.idx={guest_used} signalled_used={field(text, 'signalled_used')} "
                f"valid={field(text, 'signalled_used_valid')}"
                + (f" <- {', '.join(verdict)}" if verdict else "")
            )


if __name__ == "__main__":
    main()
    virtio_queues(sys.argv[1])
