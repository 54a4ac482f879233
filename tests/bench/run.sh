#!/usr/bin/env bash
# Container run benchmark: `kata-rs run` of busybox /bin/true against
# `runc run` of the same bundle, and the host memory of one running
# container; namespace mode natively, VM mode on hardware KVM or inside the
# emulated KVM host (timings there are only meaningful as ratios).
#
#   tests/bench/run.sh [--runs N]
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$repo_root/tests/emulated-host/kvm-mode.sh"
cd "$repo_root"

runs=20
[ "${1-}" = --runs ] && runs=$2

install_all
build_guest_kernel
build_initrd
cargo build --release --locked -p kata-rs -p kata-rs-vmm >&2
bench=$repo_root/tests/bench/container_run.py
kata=$repo_root/target/release/kata-rs

echo "== namespace mode (natively)"
python3 "$bench" --kata-rs "$kata" --isolation namespace --runs "$runs"

mode=$(kvm_mode)
params=
[ "$mode" = hardware ] || params=lapic=notscdeadline
config=$repo_root/target/kata-rs/bench-vm.toml
cat >"$config" <<EOC
[hypervisor]
vmm = "$repo_root/target/release/kata-rs-vmm"
kernel = "$KATA_RS_KERNEL_DIR/vmlinux"
initrd = "$KATA_RS_INITRD"
kernel_params = "$params"
[virtiofsd]
path = "/usr/local/bin/virtiofsd"
EOC
echo "== VM mode ($mode KVM)"
run_with_kvm --timeout 2400 -- python3 "$bench" --kata-rs "$kata" --isolation vm \
    --runs "$(( runs < 8 ? runs : 8 ))" --config "$config"
