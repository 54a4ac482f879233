#!/usr/bin/env bash
# Builds (or finds in the cache) the QEMU that emulates the KVM host:
# Debian's QEMU 10.0.2 source (bookworm-backports) with
# qemu-interrupt-request.patch beside this script, x86_64 system emulation
# only, with the option ROMs of Debian's qemu-system-data of the same
# version. Prints the path of its qemu-system-x86_64, laid out as a private
# prefix (PREFIX/usr/bin, PREFIX/usr/share/qemu) as run.sh --qemu expects.
#
# Cached by content hash under $KATA_RS_CACHE/qemu/ (default
# ~/.cache/kata-rs); the first build takes about 15 minutes on 2 cores.
# Adds Debian's bookworm-backports sources (binary and source) to apt if
# they are missing, and installs the build's packages.
set -euo pipefail
# Read whole before it runs (an edit must not reach a run in progress).
{
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KATA_RS_CACHE=${KATA_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kata-rs}

version=1:10.0.2+ds-2+deb13u1~bpo12+1
upstream=10.0.2
orig=qemu_${upstream}+ds.orig.tar.xz
orig_sha256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
patch=$here/qemu-interrupt-request.patch
configure_flags=(
    --target-list=x86_64-softmmu --enable-virtfs --disable-docs --disable-user
    --disable-tools --disable-guest-agent --disable-gtk --disable-sdl --disable-vnc
    --disable-spice --disable-opengl --disable-curl --disable-libusb --disable-usb-redir
    --disable-werror --disable-debug-info --disable-install-blobs
    --firmwarepath=/usr/share/qemu:/usr/share/seabios
)
build_packages=(ninja-build libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev
                python3-venv flex bison seabios)
backports_packages=(meson python3-pycotap)

log() { echo "qemu-build: $*" >&2; }

hash=$( { echo "$version ${configure_flags[*]}"; cat "${BASH_SOURCE[0]}" "$patch"; } | sha256sum | cut -c1-16)
out=$KATA_RS_CACHE/qemu/emuhost-$hash
binary=$out/usr/bin/qemu-system-x86_64
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi

# bookworm-backports carries QEMU 10.0 (and the meson it needs); its
# source list gives the upstream tarball.
add_backports() {
    local list=/etc/apt/sources.list.d/kata-rs-bookworm-backports.sources
    if ! apt-cache showsrc qemu 2>/dev/null | grep -qxF "Version: $version"; then
        log "adding Debian's bookworm-backports (binary and source) to apt: $list"
        cat >"$list" <<EOF
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt-get update -qq
    fi
}

add_backports
log "installing the build's packages"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${build_packages[@]}" >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports "${backports_packages[@]}" >/dev/null

work=$KATA_RS_CACHE/qemu/build-$hash
rm -rf "$work" && mkdir -p "$work"
cd "$work"
log "fetching QEMU $version's source and data"
# The archive may lack the Debian packaging files of a backport while it
# has the upstream tarball, which is all this build takes: the download's
# status says nothing, the checksum does.
apt-get source --download-only "qemu=$version" >/dev/null 2>&1 || true
[ -f "$orig" ] && echo "$orig_sha256  $orig" | sha256sum -c --quiet - \
    || { log "could not fetch $orig with its expected checksum"; exit 1; }
apt-get download "qemu-system-data=$version" >/dev/null 2>&1 \
    || { log "could not fetch qemu-system-data=$version"; exit 1; }
tar -xJf "$orig"
src=$work/qemu-$upstream
patch -d "$src" -p1 --quiet <"$patch"
# The +ds tarball leaves out the EDK2 firmware, which this build does not
# install; without this meson insists on unpacking it.
sed -i 's/^    unpack_edk2_blobs = bzip2.found()$/    unpack_edk2_blobs = false/' "$src/meson.build"

log "building qemu-system-x86_64 on $(nproc) cores"
mkdir "$src/build"
(cd "$src/build" && ../configure --python=/usr/bin/python3 --prefix=/usr "${configure_flags[@]}" >/dev/null \
    && ninja -j"$(nproc)" qemu-system-x86_64 >/dev/null) \
    || { log "the build failed (in $src/build)"; exit 1; }

staging=$out.tmp.$$
rm -rf "$staging" && mkdir -p "$staging/usr/bin"
dpkg-deb -x qemu-system-data_*.deb "$staging"
cp "$src/build/qemu-system-x86_64" "$staging/usr/bin/"
"$staging/usr/bin/qemu-system-x86_64" --version >/dev/null
rm -rf "$out" && mv "$staging" "$out"
cd / && rm -rf "$work"
log "built into $out"
echo "$binary"
exit 0
}
