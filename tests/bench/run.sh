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
echo "== VM mode ($mode KVM), QEMU -M microvm with the same kernel and initrd as reference"
# In one emulated-host session, so both see the same environment: the boot
# benchmark (1 vCPU) gives QEMU's exec -> agent ready, then the container
# benchmark runs kata-rs and runc.
cargo build --release --locked -p kata-rs-tests --bin kata-rs-boot-bench >&2
vm_runs=$(( runs < 8 ? runs : 8 ))
run_with_kvm --timeout 2400 -- bash -c '
    set -euo pipefail
    target/release/kata-rs-boot-bench --vmm target/release/kata-rs-vmm \
        --qemu "$(command -v qemu-system-x86_64)" --kernel "$1" --bzimage "$2" \
        --initrd "$3" --runs "$4" --append "$5" --vcpus 1 | tee /tmp/boot-bench.txt
    qemu_ms=$(awk "\$1 == 1 && /exec -> agent Check answered/ { print \$(NF-3) }" /tmp/boot-bench.txt)
    python3 "$6" --kata-rs "$7" --isolation vm --runs "$4" --config "$8" --qemu-boot-ms "$qemu_ms"
' _ "$KATA_RS_KERNEL_DIR/vmlinux" "$KATA_RS_KERNEL_DIR/bzImage" "$KATA_RS_INITRD" \
    "$vm_runs" "$params" "$bench" "$kata" "$config"
