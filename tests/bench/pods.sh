#!/usr/bin/env bash
# Pod benchmark: pods through containerd's CRI plugin with the runtime
# handlers kata-rs (in VM and in namespace isolation) and runc side by side
# in one containerd: pod start, host memory per pod, pods per minute with N
# at once. On hardware KVM or inside the emulated KVM host (timings there
# are only meaningful as ratios).
#
#   tests/bench/pods.sh [--runs N] [--concurrency N]
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$repo_root/tests/emulated-host/kvm-mode.sh"
cd "$repo_root"

runs=5 concurrency=2
while [ $# -gt 0 ]; do
    case $1 in
    --runs) runs=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--concurrency N]" >&2; exit 2 ;;
    esac
done

install_all
build_guest_kernel
build_initrd
cargo build --release --locked -p kata-rs -p kata-rs-vmm -p kata-rs-agent -p kata-rs-tests \
    --bin kata-rs-vmm --bin containerd-shim-kata-rs-v2 --bin kata-rs-agent \
    --bin kata-rs-pod-bench >&2
mode=$(kvm_mode)
params=
[ "$mode" = hardware ] || params=lapic=notscdeadline
config=$repo_root/target/kata-rs/bench-vm.toml
mkdir -p "$(dirname "$config")"
cat >"$config" <<EOC
[hypervisor]
vmm = "$repo_root/target/release/kata-rs-vmm"
kernel = "$KATA_RS_KERNEL_DIR/vmlinux"
initrd = "$KATA_RS_INITRD"
kernel_params = "$params"
[virtiofsd]
path = "/usr/local/bin/virtiofsd"
[runtime]
host_agent = "$repo_root/target/release/kata-rs-agent"
EOC
echo "== pods through CRI ($mode KVM): kata-rs (VM, namespace) and runc in one containerd"
run_with_kvm --timeout 3000 --memory-mib 4096 -- env KATA_RS_CONFIG="$config" \
    target/release/kata-rs-pod-bench --shim-dir "$repo_root/target/release" \
    --runs "$runs" --concurrency "$concurrency"
