# Shared by tests/setup.sh, tests/run.sh and the benchmarks: installs what
# kata-rs needs on a Debian 12 host and builds every artefact. Source it.

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Debian packages: kernel builds (linux-source-6.12 and its toolchain),
# the initrd (cpio, python3), the emulated KVM host and the QEMU reference
# (qemu-system-x86), virtiofsd's build (libseccomp, libcap-ng), and the test
# images (busybox-static, e2fsprogs); the real peers that drive the OCI
# runtime under test and runc as its reference (podman with conmon,
# containerd with ctr and its runc shim); for the CRI tests, protoc (the
# CRI client's generated code) and the test CNI plugin's jq and iproute2.
KATA_RS_PACKAGES=(
    linux-source-6.12 flex bison bc libelf-dev libssl-dev build-essential
    cpio python3 qemu-system-x86 busybox-static e2fsprogs
    libseccomp-dev libcap-ng-dev pkg-config
    podman conmon containerd runc
    protobuf-compiler jq iproute2
)
VIRTIOFSD_VERSION=1.14.0

log() { echo "kata-rs: $*" >&2; }

install_packages() {
    local missing=() p
    for p in "${KATA_RS_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

install_virtiofsd() {
    if [ -x /usr/local/bin/virtiofsd ] && /usr/local/bin/virtiofsd --version 2>/dev/null | grep -q "$VIRTIOFSD_VERSION"; then
        return 0
    fi
    log "building virtiofsd $VIRTIOFSD_VERSION"
    cargo install --quiet --locked --root /usr/local --version "$VIRTIOFSD_VERSION" virtiofsd
}

# Exports KATA_RS_KERNEL_DIR: vmlinux, bzImage and config of the guest kernel.
build_guest_kernel() {
    KATA_RS_KERNEL_DIR=$("$repo_root/guest-kernel-config/build.sh")
    export KATA_RS_KERNEL_DIR
}

# Exports KATA_RS_INITRD: the guest initrd with the static agent as /init.
build_initrd() {
    KATA_RS_INITRD=$("$repo_root/rootfs-builder/build.sh")
    export KATA_RS_INITRD
}

install_all() {
    install_packages
    install_virtiofsd
}

# Exports KATA_RS_TEST_PROBE_INITRD: the guest probe (tests only) as /init.
build_probe_initrd() {
    source "$repo_root/rootfs-builder/static-initrd.sh"
    KATA_RS_TEST_PROBE_INITRD=$(build_static_initrd kata-rs-tests kata-rs-guest-probe \
        "$repo_root/tests/guest-probe.list" "${CARGO_TARGET_DIR:-$repo_root/target}/kata-rs/probe-initrd.img")
    export KATA_RS_TEST_PROBE_INITRD
}
