#!/usr/bin/env bash
# Builds (or finds in the cache) the QEMU that runs the emulated KVM host and
# prints the path of its qemu-system-x86_64: the upstream source of the
# installed qemu-system-x86's version (Debian's .orig tarball, from the
# system's own Debian mirror; Debian's own patches are not applied), with
# the patches beside this script (each one's header says what it fixes;
# ../README.md, "Known issues", tells the whole story).
# Only the binary is built; it takes its firmware and option ROMs from the
# installed package of the same version (the cache key holds that version,
# so an upgrade rebuilds). Cached by content hash outside the checkout;
# concurrent first runs wait on one build.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KATA_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kata-rs}

# shellcheck source=SCRIPTDIR/../../lib.sh
source "$here/../../lib.sh"
log() { echo "qemu-build: $*" >&2; }
die() { log "$*"; exit 1; }

# What Debian's own build passes that the emulated host relies on (the
# firmware path, 9p for the root filesystem), and nothing it does not use;
# not relocatable, so that it reads /usr/share's firmware wherever it lies.
configure_flags=(
    --prefix=/usr --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
    --disable-relocatable --target-list=x86_64-softmmu --enable-virtfs --disable-modules
    --disable-docs --disable-user --disable-tools --disable-guest-agent
    --disable-gtk --disable-sdl --disable-vnc --disable-spice --disable-opengl
    --disable-curl --disable-libusb --disable-usb-redir --disable-debug-info
    --disable-install-blobs --disable-werror
)

# The patches are written for this upstream series.
patched_series=10.0

[ -n "$(installed_version qemu-system-x86)" ] || die "qemu-system-x86 is not installed (tests/lib.sh installs it)"
version=$(dpkg-query -W -f='${source:Version}' qemu-system-x86)
upstream=${version#*:}
upstream=${upstream%-*}
[[ $upstream == "$patched_series".* ]] \
    || die "the patches here are for QEMU $patched_series, the installed qemu-system-x86 is $version"
patches=("$here"/*.patch)
hash=$( { echo "$version"; cat "${BASH_SOURCE[0]}" "${patches[@]}"; } | sha256sum | cut -c1-16)
out=$cache/qemu/emulated-host-$hash
binary=$out/qemu-system-x86_64

mkdir -p "$cache/qemu"
exec 9>"$cache/qemu/.lock-$hash"
flock 9
if [ -x "$binary" ]; then
    log "cached at $binary"
    echo "$binary"
    exit 0
fi

# The upstream tarball, by its hash in the mirror's signed Sources index,
# read into a list and cache of this script's own: the system's apt
# sources, lists and cache stay as they are. Builds of other patches share
# it, hence a lock of its own.
tarball=$cache/src/qemu_$upstream.orig.tar.xz
mkdir -p "$cache/src"
exec 8>"$cache/src/.lock-qemu"
flock 8
if [ ! -f "$tarball" ]; then
    uri=$(debian_mirror) || die "no Debian mirror in apt's sources to take QEMU's source from"
    apt_dir=$cache/apt-src
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache"
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
        "$uri" "$codename" "$uri" "$codename-backports" >"$apt_dir/sources.list"
    # Root's cache, which apt's unprivileged download user cannot write.
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
    log "fetching QEMU's source $version"
    apt-get "${apt_opts[@]}" update -qq
    # Backports keep only their latest version: an older installed one has
    # no source left there.
    line=$(apt-get "${apt_opts[@]}" source --print-uris -qq "qemu=$version" 2>/dev/null \
        | tr -d "'" | grep "\.orig\.tar\.xz " || true)
    read -r src_uri _ _ src_hash <<<"$line" || true
    [ -n "${src_hash:-}" ] \
        || die "no source of qemu $version in $uri ($codename, $codename-backports): upgrade qemu-system-x86"
    /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$src_uri" "$tarball.part" "$src_hash" >/dev/null
    mv "$tarball.part" "$tarball"
fi
exec 8>&-

build=$cache/build/qemu-$hash
rm -rf "$build" && mkdir -p "$build"
tar -xf "$tarball" -C "$build" --strip-components=1
for p in "${patches[@]}"; do
    log "applying $(basename "$p")"
    patch -d "$build" -p1 --quiet <"$p"
done
log "configuring qemu $upstream"
(cd "$build" && mkdir bin && cd bin && ../configure --python=/usr/bin/python3 "${configure_flags[@]}" \
    --with-pkgversion="kata-rs emulated host $hash") \
    >"$build/configure.log" 2>&1 || { tail -n 20 "$build/configure.log" >&2; die "configure failed (log: $build/configure.log)"; }
log "building qemu-system-x86_64 on $(nproc) cores"
ninja -C "$build/bin" qemu-system-x86_64 >"$build/ninja.log" 2>&1 \
    || { tail -n 20 "$build/ninja.log" >&2; die "build failed (log: $build/ninja.log)"; }
staging=$out.tmp.$$
rm -rf "$staging" && mkdir -p "$staging"
cp "$build/bin/qemu-system-x86_64" "$staging/"
rm -rf "$out" && mv "$staging" "$out"
rm -rf "$build"
log "built into $out"
echo "$binary"
