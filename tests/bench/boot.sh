#!/usr/bin/env bash
# Boot benchmark: kata-rs-vmm against QEMU -M microvm with the same kernel,
# initrd and command line, for 1 and 2 vCPUs, on hardware KVM or inside the
# emulated KVM host (timings there are only meaningful as ratios).
#
#   tests/bench/boot.sh [--runs N]
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$repo_root/tests/emulated-host/kvm-mode.sh"
cd "$repo_root"

runs=5
[ "${1-}" = --runs ] && runs=$2

install_all
build_guest_kernel
build_initrd
cargo build --release --locked -p kata-rs-vmm -p kata-rs-tests --bin kata-rs-vmm --bin kata-rs-boot-bench >&2
mode=$(kvm_mode)
echo "KVM on this host: $mode"
append=
# Nested under TCG the TSC-deadline timer fires late (tests/emulated-host/README.md).
[ "$mode" = hardware ] || append=lapic=notscdeadline
run_with_kvm --timeout 3000 -- target/release/kata-rs-boot-bench \
    --vmm target/release/kata-rs-vmm --qemu "$(command -v qemu-system-x86_64)" \
    --kernel "$KATA_RS_KERNEL_DIR/vmlinux" --bzimage "$KATA_RS_KERNEL_DIR/bzImage" \
    --initrd "$KATA_RS_INITRD" --runs "$runs" --append "$append"
