#!/usr/bin/env bash
# Set-up for a new user, in one command: installs the packages and tools
# kata-rs needs, builds the guest kernel, the initrd and the binaries,
# installs them with a working configuration, and runs the main job: a
# busybox container in its own microVM (`kata-rs run --isolation=vm`, via
# tests/busybox-demo.sh). Where /dev/kvm cannot boot a standard guest (PVM,
# or no KVM), the main job runs inside the emulated KVM host, and the
# installed configuration runs containers in namespaces by default.
#
# Installs to /usr/local/bin (kata-rs, kata-rs-vmm, containerd-shim-kata-rs-v2,
# kata-rs-agent, virtiofsd),
# /usr/local/share/kata-rs (vmlinux, initrd.img) and
# /etc/kata-rs/configuration.toml (an existing file is kept).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$repo_root/tests/emulated-host/kvm-mode.sh"
cd "$repo_root"

[ "$(id -u)" -eq 0 ] || { echo "setup.sh: run as root (it installs packages and binaries)" >&2; exit 1; }

install_all
build_guest_kernel
build_initrd
log "building kata-rs (release)"
cargo build --release --locked -p kata-rs -p kata-rs-vmm

install -m 0755 target/release/kata-rs target/release/kata-rs-vmm \
    target/release/containerd-shim-kata-rs-v2 /usr/local/bin/
# The initrd's agent, statically linked, also serves the shim's pods in
# namespace isolation on the host.
install -m 0755 "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/kata-rs-agent" /usr/local/bin/
install -d /usr/local/share/kata-rs /etc/kata-rs
install -m 0644 "$KATA_RS_KERNEL_DIR/vmlinux" /usr/local/share/kata-rs/vmlinux
install -m 0644 "$KATA_RS_INITRD" /usr/local/share/kata-rs/initrd.img
if [ ! -e /etc/kata-rs/configuration.toml ]; then
    install -m 0644 "$repo_root/runtime/configuration.toml" /etc/kata-rs/configuration.toml
    log "installed /etc/kata-rs/configuration.toml"
    if [ "$(kvm_mode)" != hardware ]; then
        sed -i 's/^isolation = "vm"$/isolation = "namespace"/' /etc/kata-rs/configuration.toml
        log "KVM here ($(kvm_mode)) cannot boot the guest: containers run in namespaces unless --isolation=vm (which works inside the emulated KVM host)"
    fi
else
    log "kept the existing /etc/kata-rs/configuration.toml"
fi

log "this host:"
/usr/local/bin/kata-rs check
log "main job: a busybox container in its own microVM"
run_with_kvm -- env PATH="/usr/local/bin:$PATH" "$repo_root/tests/busybox-demo.sh" vm
