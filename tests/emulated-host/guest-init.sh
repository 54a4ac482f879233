#!/usr/bin/env bash
# PID 1 of the emulated KVM host (started by run.sh as init= from the
# read-only 9p root, which is this machine's own root). It makes the root
# writable with a tmpfs overlay, mounts what host tools expect, runs the
# caller's command with the caller's cwd and environment, records its exit
# status in the job directory and powers the machine off. Anything it prints
# itself goes to the console (a log file on the host side), never to the
# command's stdout or stderr.
#
# Under TCG every exec of a dynamically linked program costs about 0.1 s and
# util-linux mount about 0.5 s; the statically linked busybox applets cost
# 0.02 s. So the setup below calls busybox, and reads files with builtins.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

job=/run/emuhost
# 9p over virtio moves at most 125 pages per request.
p9_opts=trans=virtio,version=9p2000.L,msize=512000

power_off() {
    # PID 1 must never exit (the kernel would panic); a forced poweroff goes
    # straight to reboot(2) and ACPI makes QEMU exit.
    busybox poweroff -f
    sleep infinity
}

fail() {
    echo "emulated-host init: $*" >&2
    power_off
}
trap 'fail "line $LINENO: $BASH_COMMAND failed"' ERR

# Writable root: tmpfs upper over the read-only 9p root, switched to with
# pivot_root (not chroot) so that container runtimes can pivot_root again.
busybox mount -t tmpfs -o mode=0755 emuhost-rw /run
busybox mkdir /run/upper /run/work /run/root
busybox mount -t overlay -o lowerdir=/,upperdir=/run/upper,workdir=/run/work emuhost-root /run/root
cd /run/root
busybox pivot_root . mnt
cd /
# The overlay holds its own references to the old root and the tmpfs.
busybox umount -l /mnt

busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t cgroup2 cgroup2 /sys/fs/cgroup
busybox mount -t devtmpfs devtmpfs /dev
busybox mkdir -p /dev/pts /dev/shm
busybox mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
busybox ln -sfn pts/ptmx /dev/ptmx
busybox mount -t tmpfs -o mode=1777 tmpfs /dev/shm
busybox ln -sfn /proc/self/fd /dev/fd
busybox ln -sfn /proc/self/fd/0 /dev/stdin
busybox ln -sfn /proc/self/fd/1 /dev/stdout
busybox ln -sfn /proc/self/fd/2 /dev/stderr
# Fresh scratch space: the host's own /tmp, /run and /var/tmp hold other
# processes' sockets and locks, which mean nothing in here.
busybox mount -t tmpfs -o mode=1777 tmpfs /tmp
busybox mount -t tmpfs -o mode=1777 tmpfs /var/tmp
busybox mount -t tmpfs -o mode=0755 tmpfs /run
busybox mkdir -m 1777 /run/lock
busybox mkdir -m 0755 /run/user "$job"
busybox mount -t 9p -o "$p9_opts" emuhost-job "$job"

# --share directories, writable, at the same paths as on the host.
mapfile -d '' shares < "$job/shares"
for i in "${!shares[@]}"; do
    busybox mkdir -p "${shares[$i]}"
    busybox mount -t 9p -o "$p9_opts,cache=mmap" "share$i" "${shares[$i]}"
done

busybox ip link set lo up
echo emulated-host > /proc/sys/kernel/hostname

# The output ports are found by the names run.sh gave them: their device
# numbers depend on PCI probe order.
port_device() {
    local port name
    for port in /sys/class/virtio-ports/*; do
        read -r name < "$port/name"
        if [ "$name" = "$1" ]; then
            echo "/dev/${port##*/}"
            return 0
        fi
    done
    fail "no virtio-serial port named $1"
}
stdout_dev=$(port_device emuhost.stdout)
stderr_dev=$(port_device emuhost.stderr)

mapfile -d '' argv < "$job/argv"
mapfile -d '' environment < "$job/env"
IFS= read -r -d '' cwd < "$job/cwd" || true
# The CPUs the command may use (run.sh keeps CPU 0 free of guests); the
# kernel keeps a mask set this way through later cpuset changes.
read -r cpus < "$job/cpus"

# From here on a QEMU that dies has cost the command something: run.sh
# boots again only a host that died before this (README.md).
: > "$job/started"
trap - ERR
set +e
(
    cd -- "$cwd" 2>/dev/null || {
        echo "emulated-host: the working directory $cwd does not exist in the emulated host (/tmp, /run and /var/tmp are empty there; pass --share DIR to make a host directory visible)" >&2
        exit 125
    }
    # busybox would run its own env (and through it its own sh, date...):
    # the command gets this machine's env by its path.
    exec busybox taskset -c "$cpus" "$(type -P env)" -i "${environment[@]}" "${argv[@]}"
) </dev/null >"$stdout_dev" 2>"$stderr_dev"
status=$?
echo "$status" > "$job/status"
power_off
