# Shared by tests/setup.sh, tests/run.sh and the benchmarks: installs what
# kata-rs needs on a Debian 12 host and builds every artefact. Source it.

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Debian packages: kernel builds (linux-source-6.12 and its toolchain),
# the initrd (cpio, python3), virtiofsd's build (libseccomp, libcap-ng), the
# emulated host's QEMU build (ninja, python3-venv, glib, pixman, zlib, fdt;
# meson and QEMU itself: install_qemu below), the test
# images (busybox-static, e2fsprogs); the real peers that drive the OCI
# runtime under test and runc as its reference (podman with conmon,
# containerd with ctr and its runc shim); for the CRI tests, protoc (the
# CRI client's generated code) and the test CNI plugin's jq and iproute2.
KATA_RS_PACKAGES=(
    linux-source-6.12 flex bison bc libelf-dev libssl-dev build-essential
    cpio python3 busybox-static e2fsprogs
    libseccomp-dev libcap-ng-dev pkg-config
    ninja-build python3-venv libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev
    podman conmon containerd runc
    protobuf-compiler jq iproute2
)
VIRTIOFSD_VERSION=1.14.0

log() { echo "kata-rs: $*" >&2; }

install_packages() {
    local missing=() p
    for p in "${KATA_RS_PACKAGES[@]}"; do
        [ -n "$(installed_version "$p")" ] || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# The Debian mirror apt's own sources name (deb822 or one-line form), not
# the security archive's.
debian_mirror() {
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
        | grep -v security | head -n 1)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && !/security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
        /etc/apt/sources.list 2>/dev/null)
    [ -n "$uri" ] && echo "$uri"
}

# The installed version of PACKAGE, or nothing.
installed_version() {
    local status
    status=$(dpkg-query -W -f='${db:Status-Status} ${Version}' "$1" 2>/dev/null || true)
    [[ $status != installed\ * ]] || echo "${status#installed }"
}

# Installs PACKAGE unless version MIN or later is installed: apt's default
# candidate when it is recent enough, else the one in this release's
# backports suite, which is added to apt's sources, on the system's own
# mirror, where it is missing.
install_at_least() {
    local package=$1 min=$2 installed candidate uri backports
    installed=$(installed_version "$package")
    if [ -n "$installed" ] && dpkg --compare-versions "$installed" ge "$min"; then
        return 0
    fi
    apt-get update -qq
    candidate=$(apt-cache policy "$package" | sed -n 's/^ *Candidate: *//p')
    if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] && dpkg --compare-versions "$candidate" ge "$min"; then
        log "installing $package $candidate"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
        return 0
    fi
    backports=$(. /etc/os-release && echo "$VERSION_CODENAME")-backports
    if ! grep -qs "^[^#]*$backports" /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
        uri=$(debian_mirror) || { log "$package $min or later is needed, and apt has neither it nor a Debian mirror to add $backports from"; return 1; }
        log "adding $backports (from $uri) to apt's sources"
        printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$uri" "$backports" >"/etc/apt/sources.list.d/kata-rs-$backports.sources"
        apt-get update -qq
    fi
    log "installing $package from $backports (apt's default is ${candidate:-none}; $min or later is needed)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t "$backports" "$package" >/dev/null
}

# QEMU 10.0: the benchmarks' reference VMM, and the firmware and option
# ROMs of the emulated KVM host, whose own binary is the same version's
# upstream source with our fixes (tests/emulated-host/qemu/build.sh, which
# needs meson 1.5 or later). Before 8.2 TCG ignores the SVM intercept of
# XSETBV, and nested guests turn XSAVE and AVX off
# (tests/emulated-host/README.md); the fixes are written for 10.0. Debian
# 12 ships QEMU 7.2 and meson 1.0; its backports carry QEMU 10.0 and meson
# 1.7. QEMU's configure also wants pycotap 1.1 (from 10.0.2 on), which it
# will not fetch itself from a source tarball without its wheels.
install_qemu() {
    install_at_least qemu-system-x86 1:10.0
    install_at_least meson 1.5
    install_at_least python3-pycotap 1.1
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
    install_qemu
    install_virtiofsd
}

# Exports KATA_RS_EMULATED_HOST_QEMU: the emulated KVM host's QEMU, unless
# the caller chose one.
build_emulated_host_qemu() {
    if [ -z "${KATA_RS_EMULATED_HOST_QEMU:-}" ]; then
        KATA_RS_EMULATED_HOST_QEMU=$("$repo_root/tests/emulated-host/qemu/build.sh")
    fi
    export KATA_RS_EMULATED_HOST_QEMU
}

# Exports KATA_RS_TEST_PROBE_INITRD: the guest probe (tests only) as /init.
build_probe_initrd() {
    source "$repo_root/rootfs-builder/static-initrd.sh"
    KATA_RS_TEST_PROBE_INITRD=$(build_static_initrd kata-rs-tests kata-rs-guest-probe \
        "$repo_root/tests/guest-probe.list" "${CARGO_TARGET_DIR:-$repo_root/target}/kata-rs/probe-initrd.img")
    export KATA_RS_TEST_PROBE_INITRD
}
