#!/usr/bin/env bash
# Soak of the emulated KVM host: many guest boots and container runs inside
# one emulated host (started again when it dies), counting how each ended:
# ok, stalled, triple-faulted, other failure, or the emulated host itself
# crashed or wedged. Each failure keeps its log (the console's tail). Ends
# with a table, also written to OUT/summary.md.
#
#   soak.sh [--qemu PATH] [--tcg multi|single] [--cpus N] [--out DIR]
#           [--phases LIST] [--boots N] [--runs N] [--pairs N]
#           [--guest-params PARAMS] [--host-params PARAMS] [--allow-cpu0]
#
# Phases (LIST: comma-separated, in this order by default):
#   vmm-boot          kata-rs-vmm boots the guest kernel with a busybox
#                     initrd whose /init prints a marker and reboots
#   vmm-boot-devices  the same with the devices a sandbox has: virtio-vsock
#                     and virtio-fs (virtiofsd on vhost-user)
#   qemu-boot         QEMU -M microvm, the same kernel (bzImage) and initrd
#   qemu-boot-devices the same with virtio-fs (vhost-user-fs, memfd RAM) and
#                     virtio-vsock (the emulated host's vhost-vsock)
#   vmm-boot-pair     two vmm-boot-devices boots at once (each counted)
#   qemu-boot-pair    two qemu-boot-devices boots at once (each counted)
#   run               `kata-rs run --isolation=vm` of busybox, one at a time
#   pair              two such runs at once (each counted)
# --boots N iterations of each boot phase, --runs N runs, --pairs N pairs
# (of boots and of runs); defaults 50, 50, 25; the boot pairs are not in
# the default list. --guest-params replaces the guests' extra kernel
# parameters (default: lapic=notscdeadline, as the tests use);
# --host-params adds kernel parameters to the emulated host's;
# --allow-cpu0 lets guests run on CPU 0, which with an unpatched --qemu
# reproduces QEMU's race on CPU 0.
#
# Runs inside: inner mode, `soak.sh --inner OUT`, reads OUT/plan and appends
# to OUT/results (phase, index, outcome, seconds) so that an emulated host
# that dies loses only the iteration in flight.
set -euo pipefail
# Read whole before it runs: bash reads a script as it goes, so an edit
# to this file would otherwise reach a run in progress.
{

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
prog=soak

boot_timeout=150
run_timeout=300
marker=SOAK-GUEST-REACHED-INIT
# Nested under TCG the TSC-deadline timer fires late (README.md beside this
# file). The inner loop reads the value the outer one chose from OUT.
guest_params="lapic=notscdeadline"

# --- inside the emulated host ------------------------------------------------

# Prints the outcome of a kata-rs-vmm or kata-rs run from its exit status
# and its logs: ok, stall, triple-fault or fail.
classify() {
    local rc=$1 console=$2 errlog=$3
    if [ "$rc" -eq 0 ] && grep -q "$marker" "$console" 2>/dev/null; then
        echo ok
    elif grep -q "triple-faulted" "$errlog" 2>/dev/null; then
        echo triple-fault
    elif [ "$rc" -eq 124 ] || grep -q "did not answer within" "$errlog" 2>/dev/null; then
        echo stall
    else
        echo fail
    fi
}

# QEMU's microvm reboots by triple fault (reboot=t): one that comes before
# the marker is the failure; a panic says so on the console.
classify_qemu() {
    local rc=$1 console=$2
    if [ "$rc" -eq 124 ]; then
        echo stall
    elif grep -q "$marker" "$console"; then
        echo ok
    elif grep -q "Kernel panic" "$console"; then
        echo fail
    elif [ "$rc" -eq 0 ]; then
        echo triple-fault
    else
        echo fail
    fi
}

start_virtiofsd() {
    local sock=$1 dir=$2
    mkdir -p "$dir"
    rm -f "$sock"
    virtiofsd --socket-path "$sock" --shared-dir "$dir" --cache never \
        --sandbox none >/dev/null 2>&1 &
    virtiofsd_pid=$!
    local i
    for i in $(seq 100); do
        [ -S "$sock" ] && return 0
        sleep 0.1
    done
    echo "virtiofsd did not create $sock" >&2
    return 1
}

stop_virtiofsd() {
    kill "$virtiofsd_pid" 2>/dev/null || true
    wait "$virtiofsd_pid" 2>/dev/null || true
}

# One boot of the guest kernel with the busybox initrd, logs in DIR,
# outcome in DIR/outcome. VMM: vmm (kata-rs-vmm) or qemu (QEMU microvm);
# DEVICES: yes or no; CID: the vsock context ID of a QEMU guest (two at once
# need their own; kata-rs-vmm's vsock is a Unix socket).
boot_guest() {
    local vmm=$1 devices=$2 dir=$3 cid=$4 rc=0 dev_args=()
    [ "$devices" = no ] || start_virtiofsd "$dir/fs.sock" "$dir/share"
    case $vmm in
        vmm)
            [ "$devices" = no ] || dev_args=(--vsock-uds "$dir/vsock.sock" --fs "soak=$dir/fs.sock")
            timeout -k 5 "$boot_timeout" "$out/bin/kata-rs-vmm" --kernel "$out/vmlinux" \
                --initrd "$out/boot-initrd.cpio" --cmdline-append "$guest_params" \
                --console "$dir/console.log" "${dev_args[@]}" \
                >/dev/null 2>"$dir/stderr.log" || rc=$?
            [ "$devices" = no ] || stop_virtiofsd
            classify "$rc" "$dir/console.log" "$dir/stderr.log" >"$dir/outcome" ;;
        qemu)
            dev_args=(-m 256)
            # shellcheck disable=SC2054  # QEMU's option syntax
            [ "$devices" = no ] || dev_args=(-m 256 -object memory-backend-memfd,id=mem,size=256M,share=on
                                             -numa node,memdev=mem
                                             -chardev "socket,id=fs,path=$dir/fs.sock"
                                             -device vhost-user-fs-device,chardev=fs,tag=soak
                                             -device "vhost-vsock-device,guest-cid=$cid")
            timeout -k 5 "$boot_timeout" qemu-system-x86_64 -M microvm -enable-kvm \
                -cpu host,-tsc-deadline -nographic -no-reboot -nodefaults \
                -serial "file:$dir/console.log" "${dev_args[@]}" \
                -kernel "$out/bzImage" -initrd "$out/boot-initrd.cpio" \
                -append "console=ttyS0 reboot=t panic=1 rdinit=/init $guest_params" \
                </dev/null >/dev/null 2>"$dir/stderr.log" || rc=$?
            [ "$devices" = no ] || stop_virtiofsd
            classify_qemu "$rc" "$dir/console.log" >"$dir/outcome" ;;
    esac
}

# One iteration: sets $outcome, leaves the logs in $work.
iteration() {
    local phase=$1 i=$2
    work=$(mktemp -d /tmp/soak.XXXXXX)
    case $phase in
        vmm-boot|qemu-boot)
            boot_guest "${phase%-boot}" no "$work" 3
            outcome=$(cat "$work/outcome") ;;
        vmm-boot-devices|qemu-boot-devices)
            boot_guest "${phase%-boot-devices}" yes "$work" 3
            outcome=$(cat "$work/outcome") ;;
        vmm-boot-pair|qemu-boot-pair)
            mkdir "$work/a" "$work/b"
            boot_guest "${phase%-boot-pair}" yes "$work/a" 3 &
            local a=$!
            boot_guest "${phase%-boot-pair}" yes "$work/b" 4 &
            wait "$a" || true
            wait $! || true
            # A boot that could not even start (virtiofsd) left no outcome.
            outcome="$(cat "$work/a/outcome" 2>/dev/null || echo fail) $(cat "$work/b/outcome" 2>/dev/null || echo fail)" ;;
        run)
            container_run "soak-$i" "$work" || true
            outcome=$(classify "$(cat "$work/rc")" "$work/stdout.log" "$work/stderr.log") ;;
        pair)
            mkdir "$work/a" "$work/b"
            container_run "soak-$i-a" "$work/a" &
            local a=$!
            container_run "soak-$i-b" "$work/b" &
            wait "$a" || true
            wait $! || true
            local oa ob
            oa=$(classify "$(cat "$work/a/rc")" "$work/a/stdout.log" "$work/a/stderr.log")
            ob=$(classify "$(cat "$work/b/rc")" "$work/b/stdout.log" "$work/b/stderr.log")
            outcome="$oa $ob" ;;
    esac
}

# `kata-rs run` of the soak bundle as container ID, logs in DIR; removes
# whatever a failed run left.
container_run() {
    local id=$1 dir=$2 rc=0
    timeout -k 5 "$run_timeout" "$out/bin/kata-rs" --root /run/soak run --isolation=vm \
        --bundle "$out/bundle" "$id" </dev/null >"$dir/stdout.log" 2>"$dir/stderr.log" || rc=$?
    echo "$rc" >"$dir/rc"
    if [ "$rc" -ne 0 ]; then
        # The sandbox's own logs (the guest's console above all) go with
        # the container: keep them first.
        local f
        for f in console vmm virtiofsd; do
            [ ! -f "/run/soak/$id/$f.log" ] || cp "/run/soak/$id/$f.log" "$dir/sandbox-$f.log"
        done
        "$out/bin/kata-rs" --root /run/soak delete --force "$id" >/dev/null 2>&1 || true
    fi
}

inner() {
    out=$1
    guest_params=$(cat "$out/guest-params")
    export KATA_RS_CONFIG=$out/config.toml
    export PATH=$out/bin:$PATH
    echo "$prog: inside the emulated host, $(nproc) CPUs, $(uname -r)"
    local phase i started secs o
    while read -r phase i; do
        if grep -q "^$phase $i " "$out/results" 2>/dev/null; then
            continue
        fi
        echo "$phase $i" >"$out/in-flight"
        started=$(date +%s%N)
        iteration "$phase" "$i"
        secs=$(( ($(date +%s%N) - started) / 1000000 ))
        secs=$(printf '%d.%03d' $((secs / 1000)) $((secs % 1000)))
        for o in $outcome; do
            echo "$phase $i $o $secs" >>"$out/results"
            if [ "$o" != ok ]; then
                {
                    echo "== $phase $i: $o after $secs s"
                    find "$work" -name '*.log' -print0 | while IFS= read -r -d '' f; do
                        echo "-- ${f#"$work"/} (last 40 lines)"
                        tail -n 40 "$f"
                    done
                    # The emulated host's side: clock or KVM complaints.
                    echo "-- the emulated host's kernel log (last 40 lines)"
                    busybox dmesg | tail -n 40
                } >"$out/failures/$phase-$i.log"
            fi
        done
        rm -f "$out/in-flight"
        rm -rf "$work"
        echo "$prog: $phase $i: $outcome (${secs} s)"
    done <"$out/plan"
}

if [ "${1-}" = --inner ]; then
    inner "$2"
    exit 0
fi

# --- outside: prepare, drive the emulated host, summarise ----------------------

qemu=${KATA_RS_EMULATED_HOST_QEMU:-}
tcg=multi
cpus=2
out=
phases=vmm-boot,vmm-boot-devices,qemu-boot,qemu-boot-devices,run,pair
boots=50
runs=50
pairs=25
host_params=
cpu0_args=()

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "$prog: $*" >&2
    exit 1
}
count() {
    [[ $2 =~ ^[0-9]+$ ]] || die "$1 needs a number, got '$2'"
    echo "$2"
}
while [ $# -gt 0 ]; do
    case $1 in
        --qemu) [ $# -ge 2 ] || usage; qemu=$2; shift 2 ;;
        --tcg) [ $# -ge 2 ] || usage; tcg=$2; shift 2 ;;
        --cpus) [ $# -ge 2 ] || usage; cpus=$(count "$1" "$2"); shift 2 ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --phases) [ $# -ge 2 ] || usage; phases=$2; shift 2 ;;
        --boots) [ $# -ge 2 ] || usage; boots=$(count "$1" "$2"); shift 2 ;;
        --runs) [ $# -ge 2 ] || usage; runs=$(count "$1" "$2"); shift 2 ;;
        --pairs) [ $# -ge 2 ] || usage; pairs=$(count "$1" "$2"); shift 2 ;;
        --guest-params) [ $# -ge 2 ] || usage; guest_params=$2; shift 2 ;;
        --host-params) [ $# -ge 2 ] || usage; host_params=$2; shift 2 ;;
        --allow-cpu0) cpu0_args=(--allow-cpu0); shift ;;
        -h|--help) usage ;;
        *) echo "$prog: unknown option $1" >&2; usage ;;
    esac
done
[ -n "$qemu" ] || qemu=$("$here/qemu/build.sh") || die "could not build the emulated host's QEMU"
qemu_version=$("$qemu" --version 2>/dev/null | head -n 1) \
    || die "$qemu does not run (--qemu names a qemu-system-x86_64)"
qemu_version="$qemu_version, TCG $tcg-threaded, $cpus vCPUs for guests and CPU 0${cpu0_args:+ (guests allowed on CPU 0)}${host_params:+ with '$host_params'}, guests with '$guest_params'"
[ -n "$out" ] || out=$(mktemp -d /var/tmp/kata-rs-soak.XXXXXX)
mkdir -p "$out/failures" "$out/bin"
out=$(cd "$out" && pwd -P)

# shellcheck source=SCRIPTDIR/../lib.sh
source "$repo/tests/lib.sh"
build_guest_kernel
build_initrd
(cd "$repo" && cargo build --locked -p kata-rs -p kata-rs-vmm >&2)
# Copies, so that a rebuild in the checkout during the soak cannot reach
# binaries the emulated host is running (README.md: cache=loose).
cp "$repo/target/debug/kata-rs" "$repo/target/debug/kata-rs-vmm" "$out/bin/"
cp "$KATA_RS_KERNEL_DIR/vmlinux" "$KATA_RS_KERNEL_DIR/bzImage" "$KATA_RS_INITRD" "$out/"
ln -sf "$(command -v virtiofsd)" "$out/bin/virtiofsd"
# bash reads a script as it runs it: the inner loop runs a copy.
cp "${BASH_SOURCE[0]}" "$out/bin/soak.sh"

initrd_root=$(mktemp -d)
mkdir -p "$initrd_root/bin"
cp "$(command -v busybox)" "$initrd_root/bin/busybox"
printf '#!/bin/busybox sh\n/bin/busybox echo %s\n/bin/busybox reboot -f\n' "$marker" >"$initrd_root/init"
chmod +x "$initrd_root/init"
(cd "$initrd_root" && find . | cpio -o -H newc --quiet) >"$out/boot-initrd.cpio"
rm -rf "$initrd_root"

if [ ! -d "$out/bundle" ]; then
    python3 "$repo/tests/images/build-busybox.py" "$out/image" >/dev/null
    mkdir "$out/bundle"
    cp -a "$out/image/rootfs" "$out/bundle/rootfs"
    rm -rf "$out/image"
    (cd "$out/bundle" && "$out/bin/kata-rs" spec)
    python3 - "$out/bundle/config.json" "$marker" <<'PY'
import json, sys
path, marker = sys.argv[1:]
config = json.load(open(path))
config["process"]["terminal"] = False
config["process"]["args"] = ["echo", marker]
json.dump(config, open(path, "w"), indent=2)
PY
fi
cat >"$out/config.toml" <<EOF
[hypervisor]
vmm = "$out/bin/kata-rs-vmm"
kernel = "$out/vmlinux"
initrd = "$out/$(basename "$KATA_RS_INITRD")"
kernel_params = "$guest_params"
[virtiofsd]
path = "$out/bin/virtiofsd"
EOF

# The plan follows the options each time, so that a soak run again on the
# same OUT with larger counts carries on where it stopped.
if [ -e "$out/qemu-version" ] && [ "$(cat "$out/qemu-version")" != "$qemu_version" ]; then
    die "$out holds results of $(cat "$out/qemu-version"), not $qemu_version: use another --out"
fi
echo "$qemu_version" >"$out/qemu-version"
echo "$guest_params" >"$out/guest-params"
for phase in ${phases//,/ }; do
    case $phase in
        vmm-boot|vmm-boot-devices|qemu-boot|qemu-boot-devices) n=$boots ;;
        run) n=$runs ;;
        pair|vmm-boot-pair|qemu-boot-pair) n=$pairs ;;
        *) die "unknown phase '$phase'" ;;
    esac
    for i in $(seq "$n"); do echo "$phase $i"; done
done >"$out/plan"

echo "$prog: emulated host: $qemu_version; results in $out" >&2
planned=$(wc -l <"$out/plan")
# Plan items with a result.
done_count() {
    [ -e "$out/results" ] || { echo 0; return; }
    cut -d' ' -f1,2 "$out/results" | sort -u | grep -cxFf "$out/plan" || true
}
sessions=0
while [ "$(done_count)" -lt "$planned" ] && [ "$sessions" -lt 20 ]; do
    sessions=$((sessions + 1))
    rc=0
    # The stall bound is above any iteration's own bound, so it only ends an
    # emulated host that stopped making progress (host-wedged).
    KATA_RS_TEST_KERNEL=$out/vmlinux KATA_RS_EMULATED_HOST_QEMU=$qemu "$here/run.sh" \
        --tcg "$tcg" --cpus "$cpus" ${host_params:+--host-params "$host_params"} "${cpu0_args[@]}" --memory-mib 4096 --share "$out" --timeout 0 \
        --stall $((run_timeout + 100)) -- "$out/bin/soak.sh" --inner "$out" \
        2>"$out/emulated-host-$sessions.log" || rc=$?
    if [ -s "$out/in-flight" ]; then
        read -r phase i <"$out/in-flight"
        case $rc in
            124) o=host-wedged ;;
            *) o=host-crash ;;
        esac
        echo "$phase $i $o 0" >>"$out/results"
        cp "$out/emulated-host-$sessions.log" "$out/failures/$phase-$i.log"
        rm -f "$out/in-flight"
        echo "$prog: $phase $i: the emulated host ended (run.sh exit $rc); starting another" >&2
    elif [ "$rc" -ne 0 ]; then
        die "the emulated host failed outside any iteration (exit $rc): $(tail -n 20 "$out/emulated-host-$sessions.log")"
    fi
done

python3 - "$out" <<'PY' | tee "$out/summary.md"
import collections, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
version = (out / "qemu-version").read_text().strip()
kinds = ["ok", "stall", "triple-fault", "fail", "host-crash", "host-wedged"]
rows = collections.OrderedDict()
# An iteration's time counts only where all of it went well: a pair's
# time with one guest stalled is the stall's bound.
iterations = collections.OrderedDict()
for line in (out / "results").read_text().splitlines():
    phase, index, outcome, secs = line.split()
    rows.setdefault(phase, collections.Counter())[outcome] += 1
    iterations.setdefault((phase, index), (float(secs), []))[1].append(outcome)
times = collections.defaultdict(list)
for (phase, _), (secs, outcomes) in iterations.items():
    if all(o == "ok" for o in outcomes):
        times[phase].append(secs)
print(f"emulated host: {version}")
print()
print("| phase | results | " + " | ".join(kinds) + " | median s (iterations all ok) |")
print("|---" * (len(kinds) + 3) + "|")
for phase, c in rows.items():
    med = f"{statistics.median(times[phase]):.1f}" if times[phase] else "-"
    print(f"| {phase} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in kinds) + f" | {med} |")
PY
# Never read past the block: the file may have changed under us.
exit
}
