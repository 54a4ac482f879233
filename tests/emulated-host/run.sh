#!/usr/bin/env bash
# Runs one command inside an emulated KVM host: QEMU TCG with -cpu max (which
# exposes SVM) booting a host kernel with KVM_AMD, so /dev/kvm in there is real
# KVM even where this machine's own /dev/kvm cannot run a standard guest (see
# README.md beside this script).
#
#   run.sh [--cpus N] [--memory-mib M] [--timeout S] [--stall S] [--share DIR]...
#          [--vfio-edu] [--qemu PATH] [--tcg multi|single] [--host-params P]
#          [--allow-cpu0] -- COMMAND [ARGS...]
#
# The command sees this machine's root, read-only underneath and writable
# through a tmpfs overlay that is thrown away; it runs as root with the
# caller's cwd and exported environment; its stdout and stderr stream to the
# caller's; run.sh exits with its exit status. 124: timed out or stalled. 125: the
# emulated host itself failed (boot, missing cwd, bad usage).
set -euo pipefail
# Read whole before it runs: bash reads a script as it goes, so an edit
# to this file would otherwise reach a run in progress.
{

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
prog=emulated-host

cpus=2
memory_mib=2048
timeout_s=1800
stall_s=0
vfio_edu=false
shares=()
qemu=${KATA_RS_EMULATED_HOST_QEMU:-}
# A boot normally starts the command within 4 s (README.md, "Measured"); one
# that has not within this bound has wedged (README.md, "Known issues").
boot_bound_s=${KATA_RS_EMULATED_HOST_BOOT_BOUND:-60}
tcg=${KATA_RS_EMULATED_HOST_TCG:-multi}
host_params=${KATA_RS_EMULATED_HOST_PARAMS:-}
first_cpu=1

usage() {
    cat >&2 <<EOF
usage: $0 [options] -- COMMAND [ARGS...]
  --cpus N         vCPUs of the emulated host for the command (default
                   $cpus); one more, CPU 0, runs no guests (README.md)
  --memory-mib M   its memory in MiB (default $memory_mib)
  --timeout S      kill it after S seconds, boot included, and exit 124
                   (default $timeout_s; 0 means never)
  --stall S        kill it once the command has written nothing for S
                   seconds, and exit 124 (default 0: never)
  --share DIR      make the host directory DIR writable inside, at the same
                   path (repeatable); everything else written inside is lost
  --vfio-edu       add QEMU's intel-iommu and edu PCI device (1234:11e8) for
                   VFIO passthrough tests, with intel_iommu=on
  --qemu PATH      the qemu-system-x86_64 to run (default
                   \$KATA_RS_EMULATED_HOST_QEMU, else the one qemu/build.sh
                   builds: the installed version with our fixes); one
                   in a private prefix (PREFIX/usr/bin) takes its firmware
                   from PREFIX/usr/share/qemu and its modules from
                   PREFIX/usr/lib/x86_64-linux-gnu/qemu
  --tcg MODE       multi: a host thread per vCPU (default, or
                   \$KATA_RS_EMULATED_HOST_TCG); single: all vCPUs take
                   turns on one thread
  --host-params P  more kernel parameters for the emulated host (default
                   \$KATA_RS_EMULATED_HOST_PARAMS)
  --allow-cpu0     let the command (and its guests) run on CPU 0 too: with
                   an unpatched --qemu, the reproducer of QEMU's race on
                   CPU 0 (README.md); not for tests
EOF
    exit 125
}

die() {
    echo "$prog: $*" >&2
    exit 125
}

positive_int() {
    [[ $2 =~ ^(0|[1-9][0-9]*)$ ]] || die "$1 needs a number, got '$2'"
}

while [ $# -gt 0 ]; do
    case $1 in
        --cpus) [ $# -ge 2 ] || usage; positive_int "$1" "$2"; cpus=$2; shift 2 ;;
        --memory-mib) [ $# -ge 2 ] || usage; positive_int "$1" "$2"; memory_mib=$2; shift 2 ;;
        --timeout) [ $# -ge 2 ] || usage; positive_int "$1" "$2"; timeout_s=$2; shift 2 ;;
        --stall) [ $# -ge 2 ] || usage; positive_int "$1" "$2"; stall_s=$2; shift 2 ;;
        --share)
            [ $# -ge 2 ] || usage
            [ -d "$2" ] || die "--share $2: not a directory"
            shares+=("$(cd "$2" && pwd -P)")
            shift 2 ;;
        --vfio-edu) vfio_edu=true; shift ;;
        --qemu) [ $# -ge 2 ] || usage; qemu=$2; shift 2 ;;
        --tcg) [ $# -ge 2 ] || usage; tcg=$2; shift 2 ;;
        --host-params) [ $# -ge 2 ] || usage; host_params=$2; shift 2 ;;
        --allow-cpu0) first_cpu=0; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) echo "$prog: unknown option $1" >&2; usage ;;
    esac
done
[ $# -ge 1 ] || usage
[ "$cpus" -ge 1 ] || die "--cpus needs at least 1"
case $tcg in
    multi|single) ;;
    *) die "--tcg takes multi or single, not '$tcg'" ;;
esac
# /tmp, /var/tmp and /run are fresh inside; a checkout under them (a CI
# clone in /tmp, say) is shared in, so it stays at the same path.
repo_real=$(cd "$repo" && pwd -P)
case $repo_real/ in
    /tmp/*|/var/tmp/*|/run/*) shares+=("$repo_real") ;;
esac
# env(1) would take a first word containing '=' for another variable.
[[ $1 != *=* ]] || die "the command name '$1' contains '=', which env(1) inside cannot run; use ./$1 or a path"

for tool in busybox timeout flock; do
    command -v "$tool" >/dev/null || die "$tool is not installed (needed for the emulated host)"
done
if [ -z "$qemu" ]; then
    # As with the kernel below, only a build is worth reporting.
    qemu=$( { "$here/qemu/build.sh" 2>&1 1>&3 3>&- | sed '/: cached at /d' >&2; } 3>&1 ) \
        || die "could not build the emulated host's QEMU (qemu/build.sh)"
fi
qemu_bin=$(command -v "$qemu") || die "$qemu is not installed (needed for the emulated host)"
qemu_version=$("$qemu_bin" --version 2>/dev/null | head -n 1) || die "$qemu_bin --version failed"
# Before 8.2 TCG ignores the SVM intercept of XSETBV (README.md): guests
# still boot, with XSAVE and AVX off, so this is a warning (the soak
# compares versions).
if [[ $qemu_version =~ version\ ([0-9]+)\.([0-9]+) ]] \
        && (( BASH_REMATCH[1] < 8 || (BASH_REMATCH[1] == 8 && BASH_REMATCH[2] < 2) )); then
    echo "$prog: warning: $qemu_version predates 8.2: its TCG ignores the SVM intercept of XSETBV, so nested guests turn XSAVE and AVX off (README.md)" >&2
fi
# A QEMU unpacked from a .deb into a private prefix: its own option ROMs
# first (the system's are for another version), then its compiled-in
# firmware path (SeaBIOS); its own modules, never another version's.
qemu_prefix=$(cd "$(dirname "$qemu_bin")/../.." && pwd)
qemu_extra=()
if [ "$qemu_prefix" != / ] && [ -d "$qemu_prefix/usr/share/qemu" ]; then
    qemu_extra+=(-L "$qemu_prefix/usr/share/qemu")
    if [ -d "$qemu_prefix/usr/lib/x86_64-linux-gnu/qemu" ]; then
        export QEMU_MODULE_DIR=$qemu_prefix/usr/lib/x86_64-linux-gnu/qemu
    fi
fi
# The kernel command line cannot carry a path with blanks to init=.
[[ $here != *[[:space:]]* ]] || die "the checkout path '$here' contains blanks; the kernel's init= cannot name it"

# The host kernel is built once per fragment content and cached. A lock per
# content keeps concurrent first runs from building into the same directory
# without making runs of a cached kernel wait on a build of another one.
host_kernel() {
    # shellcheck source=SCRIPTDIR/../../guest-kernel-config/kernel-lib.sh
    source "$repo/guest-kernel-config/kernel-lib.sh"
    local fragments="$repo/guest-kernel-config/fragments" inputs lock
    inputs=("$fragments/base.config" "$fragments/fs.config"
            "$fragments/namespaces-cgroups.config" "$fragments/net.config"
            "$here/host-kernel.config")
    lock=$(cat "$repo/guest-kernel-config/kernel-lib.sh" "${inputs[@]}" | sha256sum | cut -c1-16)
    mkdir -p "$KATA_RS_CACHE"
    {
        flock 9
        build_kernel emuhost "${inputs[@]}"
    } 9>"$KATA_RS_CACHE/emuhost-$lock.lock"
}
# Only a build is worth reporting; a cache hit would pollute every run's stderr.
kernel_dir=$( { host_kernel 2>&1 1>&3 3>&- | sed '/: cached at /d' >&2; } 3>&1 ) \
    || die "building the host kernel failed (see the messages above)"

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/emulated-host.XXXXXX")
job="$run_dir/job"
mkdir "$job"
qemu_pid=
watch_pid=
boot_watch_pid=
relay_pids=()

# Ends whatever is still running, by pid, and removes the run directory; runs
# on every exit, including Ctrl-C and SIGTERM.
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
    stop_watch
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        # timeout(1) passes TERM on to QEMU and kills it 5 s later if needed.
        kill -TERM "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    release_relays
    rm -rf "$run_dir"
}

# shellcheck disable=SC2317  # reached through cleanup
stop_watch() {
    local pid
    for pid in "$watch_pid" "$boot_watch_pid"; do
        if [ -n "$pid" ]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    watch_pid=
    boot_watch_pid=
}

# A relay still blocked opening its FIFO (QEMU died before opening the other
# end) is released by a writer that appears and goes: it then reads EOF.
release_relays() {
    local fifo fd
    for fifo in "$run_dir/stdout" "$run_dir/stderr"; do
        [ -p "$fifo" ] || continue
        exec {fd}<>"$fifo"
        exec {fd}>&-
    done
    if [ ${#relay_pids[@]} -gt 0 ]; then
        wait "${relay_pids[@]}" 2>/dev/null || true
    fi
    relay_pids=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# The job directory is the second 9p export: the command, its environment and
# cwd go in, its exit status comes out. NUL-separated, so any byte but NUL
# survives.
printf '%s\0' "$@" > "$job/argv"
env -u PWD -u OLDPWD -u SHLVL -u _ -0 > "$job/env"
printf '%s\0' "$PWD" > "$job/cwd"
# QEMU's TCG clears a flag in its first vCPU's state from whichever vCPU
# thread restores x87 state, with a plain read-modify-write: when that
# first vCPU is entering or leaving a nested guest, the write undoes its
# change of GIF or nested paging, and the guest or the emulated host breaks
# (README.md, "Known issues"). So CPU 0 is an extra vCPU on which the
# command, and every guest it starts, never runs.
echo "$first_cpu-$cpus" > "$job/cpus"
if [ ${#shares[@]} -gt 0 ]; then
    printf '%s\0' "${shares[@]}" > "$job/shares"
else
    : > "$job/shares"
fi

# QEMU's option parser splits on commas; a literal comma is written twice.
qemu_path() { printf '%s' "${1//,/,,}"; }

p9=local,security_model=none,multidevs=remap
# shellcheck disable=SC2054  # the commas belong to QEMU's option syntax
qemu_args=(
    "${qemu_extra[@]}"
    -M q35 -accel "tcg,thread=$tcg" -cpu max -smp $((cpus + 1)) -m "$memory_mib"
    -nodefaults -no-user-config -display none -no-reboot
    -kernel "$kernel_dir/vmlinux"
    -serial "file:$run_dir/console.log"
    -monitor "unix:$run_dir/monitor.sock,server=on,wait=off"
)
# intel-iommu has to come before the PCI devices it translates for.
if $vfio_edu; then
    qemu_args+=(-device intel-iommu -device edu)
fi
# shellcheck disable=SC2054  # the commas belong to QEMU's option syntax
qemu_args+=(
    -fsdev "$p9,id=root,path=/,readonly=on" -device virtio-9p-pci,fsdev=root,mount_tag=emuhost-root
    -fsdev "$p9,id=job,path=$job" -device virtio-9p-pci,fsdev=job,mount_tag=emuhost-job
    -device virtio-serial-pci
    -chardev "file,id=stdout,path=$run_dir/stdout" -device virtserialport,chardev=stdout,name=emuhost.stdout
    -chardev "file,id=stderr,path=$run_dir/stderr" -device virtserialport,chardev=stderr,name=emuhost.stderr
)
for i in "${!shares[@]}"; do
    qemu_args+=(-fsdev "$p9,id=share$i,path=$(qemu_path "${shares[$i]}")"
                -device "virtio-9p-pci,fsdev=share$i,mount_tag=share$i")
done

# The root is mounted read-only by the kernel itself; cache=loose is safe
# because nothing inside can change it. Registering tinyconfig's 256 legacy
# BSD ptys takes 0.35 s under TCG, and nothing uses them.
cmdline="console=ttyS0 quiet panic=-1 pty.legacy_count=0"
cmdline+=" root=emuhost-root rootfstype=9p ro"
cmdline+=" rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose"
cmdline+=" init=$here/guest-init.sh"
if $vfio_edu; then
    cmdline+=" intel_iommu=on"
fi
cmdline+=${host_params:+ $host_params}

# One boot of the emulated host running the command; sets qemu_status.
boot() {
    # Output is streamed through FIFOs that QEMU writes as files: relays start
    # first because QEMU's open blocks until a reader is there. Each relay also
    # appends to one file whose growth tells the stall watch the command is alive.
    mkfifo "$run_dir/stdout" "$run_dir/stderr"
    : >"$run_dir/output"
    tee -a "$run_dir/output" <"$run_dir/stdout" &
    relay_pids+=($!)
    tee -a "$run_dir/output" <"$run_dir/stderr" >&2 &
    relay_pids+=($!)

    boot_began=$SECONDS
    timeout_args=(-k 5 "$timeout_s")
    [ "$timeout_s" -gt 0 ] || timeout_args=(0)
    timeout "${timeout_args[@]}" "$qemu_bin" "${qemu_args[@]}" -append "$cmdline" \
        </dev/null 2>"$run_dir/qemu.log" &
    qemu_pid=$!
    # A host that wedged while booting never starts the command: it is
    # stopped at the boot bound, to be booted again.
    (
        waited=0
        while [ ! -e "$job/started" ]; do
            if [ "$waited" -ge "$boot_bound_s" ]; then
                : >"$run_dir/unbooted"
                kill -TERM "$qemu_pid"
                exit 0
            fi
            sleep 1
            waited=$((waited + 1))
        done
    ) &
    boot_watch_pid=$!
    # A hung emulated host (see README.md) writes nothing more; cutting it short
    # after --stall seconds instead of --timeout leaves a caller time to retry.
    if [ "$stall_s" -gt 0 ]; then
        (
            size=-1
            quiet=0
            while sleep 5; do
                now=$(stat -c %s "$run_dir/output")
                if [ "$now" != "$size" ]; then
                    size=$now
                    quiet=0
                else
                    quiet=$((quiet + 5))
                fi
                if [ "$quiet" -ge "$stall_s" ]; then
                    : >"$run_dir/stalled"
                    # Where each vCPU is, in the emulated host's kernel or a
                    # guest's ($KATA_RS_TEST_KERNEL), and where each virtio
                    # queue stands, for the report below.
                    timeout 30 python3 "$here/cpu-state.py" "$run_dir/monitor.sock" \
                        "$kernel_dir/vmlinux" ${KATA_RS_TEST_KERNEL:+"$KATA_RS_TEST_KERNEL"} \
                        >"$run_dir/cpu-state" 2>&1 || true
                    kill -TERM "$qemu_pid"
                    exit 0
                fi
            done
        ) &
        watch_pid=$!
    fi
    qemu_status=0
    wait "$qemu_pid" 2>/dev/null || qemu_status=$?
    qemu_pid=
    stop_watch
    release_relays
}

# QEMU 10.0's TCG now and then dies of SIGSEGV while the emulated host
# boots, and the host now and then wedges while it boots (README.md, "Known
# issues"). Before the command has started nothing of it is lost, so such a
# host is booted again, and says so.
boots=3
for boot_number in $(seq 1 "$boots"); do
    rm -f "$run_dir/stdout" "$run_dir/stderr" "$run_dir/stalled" "$run_dir/unbooted"
    boot
    if [ -f "$job/started" ] || [ "$boot_number" -eq "$boots" ]; then
        break
    fi
    again="booting the emulated host again ($((boot_number + 1)) of $boots; $qemu_version)"
    if [ -f "$run_dir/unbooted" ]; then
        echo "$prog: the emulated host did not start the command within $boot_bound_s s; $again" >&2
        [ ! -s "$run_dir/console.log" ] || tail -n 5 "$run_dir/console.log" | sed 's/^/    /' >&2
        continue
    fi
    if [ "$qemu_status" -le 128 ] || [ "$qemu_status" -eq 137 ]; then
        break
    fi
    echo "$prog: QEMU died (exit status $qemu_status) before the command started; $again" >&2
    [ ! -s "$run_dir/qemu.log" ] || sed 's/^/    /' "$run_dir/qemu.log" >&2
done

if [ -f "$job/status" ]; then
    status=$(cat "$job/status")
    [[ $status =~ ^[0-9]+$ ]] || die "the emulated host reported a malformed exit status '$status'"
    exit "$status"
fi
if [ -f "$run_dir/unbooted" ]; then
    echo "$prog: the emulated host did not start the command within $boot_bound_s s in $boots boots ($qemu_version)" >&2
    exit 125
fi
if [ -f "$run_dir/stalled" ]; then
    {
        echo "$prog: the command wrote nothing for $stall_s s; QEMU was killed (raise --stall if the command is quiet for longer; $qemu_version)"
        if [ -s "$run_dir/console.log" ]; then
            echo "--- last lines of the emulated host's console:"
            tail -n 40 "$run_dir/console.log"
        fi
        if [ -s "$run_dir/cpu-state" ]; then
            echo "--- the emulated host's vCPUs and virtio queues when it was stopped (tests/emulated-host/cpu-state.py):"
            cat "$run_dir/cpu-state"
        fi
    } >&2
    exit 124
fi
if [ "$timeout_s" -gt 0 ] && { [ "$qemu_status" -eq 124 ] || [ "$qemu_status" -eq 137 ]; } \
    && [ $((SECONDS - boot_began)) -ge "$timeout_s" ]; then
    echo "$prog: timed out after $timeout_s s; QEMU was killed (raise --timeout if the command needs longer)" >&2
    exit 124
fi
{
    echo "$prog: the emulated host stopped without reporting the command's exit status (QEMU exit status $qemu_status): it failed to boot or crashed ($qemu_version)"
    if [ -s "$run_dir/qemu.log" ]; then
        echo "--- QEMU said:"
        cat "$run_dir/qemu.log"
    fi
    if [ -s "$run_dir/console.log" ]; then
        echo "--- last lines of the emulated host's console:"
        tail -n 40 "$run_dir/console.log"
    fi
} >&2
exit 125
}
