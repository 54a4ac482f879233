#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, checks
# formatting and lints, builds the kernels, initrds and binaries, runs the
# unit and host tests natively, then the VM tests where KVM boots a standard
# guest: directly on hardware KVM, otherwise inside the emulated KVM host.
# Ends with one line: "N passed, N failed, N skipped".
set -euo pipefail
# Read whole before it runs: bash reads a script as it goes, so an edit
# to this file would otherwise reach a run in progress.
{

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$repo_root/tests/emulated-host/kvm-mode.sh"
cd "$repo_root"

logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
step=0

# Records step NAME's duration since STARTED (in $SECONDS) and its
# attempts, tab-separated, for the closing tally.
step_done() {
    printf '%s\t%s\t%s\n' "$1" "$((SECONDS - $2))" "$3" >>"$logdir/steps"
}

# Runs one test step, streaming its output and keeping it for the tally.
run_step() {
    local name=$1; shift
    step=$((step + 1))
    echo "=== $name"
    local rc=0 started=$SECONDS
    "$@" 2>&1 | tee "$logdir/$step.log" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "=== $name: FAILED (exit $rc)"
        echo "$step" >>"$logdir/step-failures"
    fi
    step_done "$name" "$started" -
}

# Runs a libtest step inside the emulated KVM host, up to VM_STEP_ATTEMPTS
# times until it passes; the step's command must end with the test binary's
# arguments. Nested under TCG, a guest now and then stalls or
# triple-faults, or the emulated host itself stops (the known issues and
# their measured rates: tests/emulated-host/README.md,
# docs/emulated-host-soak.md); retries are the safety net, and the tally
# says how many each step needed. A retry runs only the tests that have not
# passed yet (tally.py); the tests that passed in earlier attempts
# are carried over into the tally, and each failed attempt's output stays
# in the log, marked, without being counted. Each step's --timeout
# (VM_STEP_TIMEOUT) is a few times its normal length, and an attempt whose
# tests write nothing for VM_STEP_STALL seconds (no test is quiet that long)
# is cut short sooner, so that an emulated host that hangs costs minutes,
# not the whole timeout, and the step is retried; no attempt starts that
# could run past RETRY_BUDGET seconds since the start of this script, which
# keeps the whole suite inside CI's 90 minutes.
VM_STEP_ATTEMPTS=5
VM_STEP_TIMEOUT=900
VM_STEP_STALL=300
RETRY_BUDGET=${KATA_RS_TEST_RETRY_BUDGET:-4800}
run_vm_step() {
    local name=$1; shift
    step=$((step + 1))
    echo "=== $name"
    local rc attempt=1 skips=() started=$SECONDS
    while :; do
        rc=0
        "$@" "${skips[@]}" 2>&1 | tee "$logdir/$step.log" || rc=$?
        if [ "$rc" -eq 0 ] || [ "$attempt" -ge "$VM_STEP_ATTEMPTS" ]; then
            break
        fi
        if [ $((SECONDS + VM_STEP_TIMEOUT)) -gt "$RETRY_BUDGET" ]; then
            echo "=== $name: failed (exit $rc); no time left for another attempt (${SECONDS}s of ${RETRY_BUDGET}s spent)"
            break
        fi
        mv "$logdir/$step.log" "$logdir/$step.attempt$attempt"
        mapfile -t skips < <(python3 "$repo_root/tests/tally.py" skips "$logdir/$step".attempt*)
        [ ${#skips[@]} -eq 0 ] || skips=(--exact "${skips[@]}")
        attempt=$((attempt + 1))
        echo "=== $name: failed (exit $rc); the emulated KVM host is flaky under TCG, attempt $attempt of $VM_STEP_ATTEMPTS runs the tests that have not passed yet (the attempt above is not counted)"
    done
    if [ "$attempt" -gt 1 ]; then
        python3 "$repo_root/tests/tally.py" summary "$logdir/$step".attempt* | tee -a "$logdir/$step.log"
    fi
    if [ "$rc" -ne 0 ]; then
        echo "=== $name: FAILED (exit $rc) in $attempt attempts"
        echo "$step" >>"$logdir/step-failures"
    fi
    step_done "$name" "$started" "$attempt"
}

started=$SECONDS
install_all
step_done "set-up (packages, virtiofsd)" "$started" -
export PATH=/usr/local/bin:$PATH
# A clean clone gains nothing from incremental caches, which cost a gigabyte.
[ -z "${CI:-}" ] || export CARGO_INCREMENTAL=0

run_step "rustfmt" cargo fmt --all -- --check
run_step "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings

mode=$(kvm_mode)
started=$SECONDS
build_guest_kernel
build_initrd
build_probe_initrd
# Before the timed VM steps, which would otherwise build it on first use.
[ "$mode" = hardware ] || build_emulated_host_qemu
cargo build --workspace --locked
step_done "build (kernels, initrds, QEMU, binaries)" "$started" -
export KATA_RS_TEST_VMM=$repo_root/target/debug/kata-rs-vmm
export KATA_RS_TEST_KERNEL=$KATA_RS_KERNEL_DIR/vmlinux
export KATA_RS_TEST_BZIMAGE=$KATA_RS_KERNEL_DIR/bzImage
export KATA_RS_TEST_INITRD=$KATA_RS_INITRD

# The VM tests (kata-rs-tests) run below where KVM can boot them; the
# agent's PID-1 test needs root, which this script has.
run_step "unit and host tests" cargo test --workspace --exclude kata-rs-tests --exclude kata-rs-agent --locked
run_step "agent tests, PID 1 in namespaces included" cargo test -p kata-rs-agent --locked -- --include-ignored
if [ "$mode" != hardware ]; then
    # Nested under TCG, the guests' TSC-deadline timer fires late (see
    # tests/emulated-host/README.md); the LAPIC's own timer does not.
    export KATA_RS_TEST_KERNEL_PARAMS=lapic=notscdeadline
fi

# Configurations for the OCI tests: this build's artefacts, and each
# isolation mode as the default; the real peers get kata-rs through a
# wrapper that names the configuration, as a user's containers.conf would.
test_dir=${CARGO_TARGET_DIR:-$repo_root/target}/kata-rs
mkdir -p "$test_dir"
for isolation in namespace vm; do
    cat >"$test_dir/test-$isolation.toml" <<EOF
[hypervisor]
vmm = "$KATA_RS_TEST_VMM"
kernel = "$KATA_RS_TEST_KERNEL"
initrd = "$KATA_RS_TEST_INITRD"
kernel_params = "${KATA_RS_TEST_KERNEL_PARAMS:-}"
[virtiofsd]
path = "/usr/local/bin/virtiofsd"
[runtime]
isolation = "$isolation"
host_agent = "$repo_root/target/debug/kata-rs-agent"
EOF
    printf '#!/bin/sh\nexec %s --config %s "$@"\n' "$repo_root/target/debug/kata-rs" \
        "$test_dir/test-$isolation.toml" >"$test_dir/kata-rs-$isolation"
    chmod +x "$test_dir/kata-rs-$isolation"
done
export KATA_RS_TEST_RUNTIME=$repo_root/target/debug/kata-rs
run_step "OCI command line, namespace mode" env KATA_RS_TEST_ISOLATION=namespace \
    KATA_RS_CONFIG="$test_dir/test-namespace.toml" cargo test -p kata-rs-tests --test oci_cli --locked

# The set-up's main job (docs/howto-run.md): a bundle from `kata-rs spec`
# with busybox, run by kata-rs; counted as one test.
demo_check='out=$("$1/tests/busybox-demo.sh" "$2") && printf "%s\n" "$out" &&
    case $out in *"hello from busybox"*) echo "1 passed, 0 failed" ;; *) echo "0 passed, 1 failed"; exit 1 ;; esac'
run_step "busybox demo, namespace mode" env KATA_RS_CONFIG="$test_dir/test-namespace.toml" \
    PATH="$repo_root/target/debug:$PATH" bash -c "$demo_check" demo "$repo_root" namespace

# Real peers drive kata-rs as they drive runc: each behaviour runs with
# runc, then with kata-rs, and both must agree.
run_step "real-peer tests (podman, ctr), namespace mode" env \
    KATA_RS_TEST_OCI_RUNTIME="$test_dir/kata-rs-namespace" \
    cargo test -p kata-rs-tests --test podman --test ctr --locked -- --nocapture

# Kubernetes' path, containerd's CRI plugin, with the runtime handler runc:
# the reference the VM-mode run below is held to, and a check of the
# harness (CNI plugin, pause image, CRI client) itself.
run_step "containerd CRI, runc handler (reference)" env KATA_RS_TEST_ISOLATION=namespace \
    cargo test -p kata-rs-tests --test cri --locked -- --nocapture

# kata-rs's shim in namespace isolation: its agent on the host serves the
# pod's containers, through the same shim and CRI paths as a microVM.
run_step "containerd shim v2 and CRI, kata-rs handler, namespace isolation" env \
    KATA_RS_TEST_ISOLATION=namespace KATA_RS_TEST_CRI_HANDLER=kata-rs \
    KATA_RS_CONFIG="$test_dir/test-namespace.toml" \
    cargo test -p kata-rs-tests --test shim --test cri --locked -- --nocapture --test-threads=1

echo "=== KVM on this host: $mode"
if [ "$mode" != hardware ]; then
    echo "=== emulated KVM host: $(command -v "$KATA_RS_EMULATED_HOST_QEMU"): $("$KATA_RS_EMULATED_HOST_QEMU" --version | head -n 1)"
fi
if [ "$mode" != hardware ]; then
    run_step "emulated KVM host self-test" "$repo_root/tests/emulated-host/selftest.sh"
fi
# The path of the kata-rs-tests integration test binary NAME.
test_binary() {
    cargo test -p kata-rs-tests --test "$1" --no-run --locked --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
}
vm_tests=$(test_binary vm)
# One at a time: the emulated host has two CPUs for guests, and each guest
# keeps both busy while it boots.
run_vm_step "VM tests ($mode KVM)" run_with_kvm --timeout "$VM_STEP_TIMEOUT" --stall "$VM_STEP_STALL" -- "$vm_tests" --ignored --test-threads=1

# The OCI command-line tests again, each container in its own microVM.
run_vm_step "OCI command line, VM mode ($mode KVM)" run_with_kvm --timeout "$VM_STEP_TIMEOUT" --stall "$VM_STEP_STALL" -- \
    env KATA_RS_TEST_ISOLATION=vm KATA_RS_CONFIG="$test_dir/test-vm.toml" \
    "$(test_binary oci_cli)" --test-threads=1 --nocapture

run_vm_step "busybox demo, VM mode ($mode KVM)" run_with_kvm --timeout "$VM_STEP_TIMEOUT" --stall "$VM_STEP_STALL" -- \
    env KATA_RS_CONFIG="$test_dir/test-vm.toml" PATH="$repo_root/target/debug:$PATH" \
    bash -c "$demo_check" demo "$repo_root" vm

# The real peers again, each container in its own microVM: one test at a
# time, with room for containerd or podman, two guests' RAM and the tests'
# tmpfs.
for peer in ctr podman; do
    run_vm_step "real-peer tests ($peer), VM mode ($mode KVM)" \
        run_with_kvm --timeout "$VM_STEP_TIMEOUT" --stall "$VM_STEP_STALL" --memory-mib 4096 -- \
        env KATA_RS_TEST_OCI_RUNTIME="$test_dir/kata-rs-vm" "$(test_binary "$peer")" \
        --test-threads=1 --nocapture
done

# containerd's shim v2 (containerd-shim-kata-rs-v2, next to kata-rs):
# `ctr run --runtime io.containerd.kata-rs.v2`, each task in its microVM.
run_vm_step "containerd shim v2 ($mode KVM)" \
    run_with_kvm --timeout "$VM_STEP_TIMEOUT" --stall "$VM_STEP_STALL" --memory-mib 4096 -- \
    env KATA_RS_TEST_ISOLATION=vm KATA_RS_CONFIG="$test_dir/test-vm.toml" \
    "$(test_binary shim)" --test-threads=1 --nocapture

# containerd's CRI plugin with the runtime handler kata-rs: one microVM per
# pod, driven as a kubelet drives it.
run_vm_step "containerd CRI, kata-rs handler ($mode KVM)" \
    run_with_kvm --timeout "$VM_STEP_TIMEOUT" --stall "$VM_STEP_STALL" --memory-mib 4096 -- \
    env KATA_RS_TEST_ISOLATION=vm KATA_RS_CONFIG="$test_dir/test-vm.toml" \
    "$(test_binary cri)" --test-threads=1 --nocapture

# The tally: each step's duration and attempts, and the closing line.
python3 "$repo_root/tests/tally.py" close "$logdir" "$SECONDS"
# Never read past the block: the file may have changed under us.
exit
}
