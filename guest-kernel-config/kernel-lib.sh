# Shared by the guest kernel build and the emulated KVM host's kernel build:
# merges config fragments on tinyconfig of Debian's linux-source-6.12 and
# caches vmlinux, bzImage and .config by content hash outside the checkout.
# Source it, then call: build_kernel NAME FRAGMENT...
# It prints the cache directory holding the result on stdout.

KERNEL_SOURCE_PACKAGE=linux-source-6.12
KATA_RS_CACHE=${KATA_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kata-rs}

kernel_log() { echo "kernel-build: $*" >&2; }

kernel_source_version() {
    dpkg-query -W -f='${Version}' "$KERNEL_SOURCE_PACKAGE" 2>/dev/null
}

# The tarball Debian installs under /usr/src, extracted once per version.
kernel_source_tree() {
    local version=$1 tree="$KATA_RS_CACHE/src/linux-$1"
    if [ ! -f "$tree/.extracted" ]; then
        local tarball
        tarball=$(ls /usr/src/linux-source-6.12.tar.* 2>/dev/null | head -n1)
        [ -n "$tarball" ] || { kernel_log "no /usr/src/linux-source-6.12.tar.* (install $KERNEL_SOURCE_PACKAGE)"; return 1; }
        kernel_log "extracting $tarball"
        rm -rf "$tree" && mkdir -p "$tree"
        tar -xf "$tarball" -C "$tree" --strip-components=1 || return 1
        touch "$tree/.extracted"
    fi
    echo "$tree"
}

build_kernel() {
    local name=$1; shift
    local version hash out src build f
    version=$(kernel_source_version)
    [ -n "$version" ] || { kernel_log "$KERNEL_SOURCE_PACKAGE is not installed"; return 1; }
    hash=$( { echo "$version"; cat "${BASH_SOURCE[0]}"; for f in "$@"; do echo "== $(basename "$f")"; cat "$f"; done; } | sha256sum | cut -c1-16)
    out="$KATA_RS_CACHE/kernels/$name-$hash"
    if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
        kernel_log "$name: cached at $out"
        echo "$out"
        return 0
    fi
    src=$(kernel_source_tree "$version") || return 1
    build="$KATA_RS_CACHE/build/$name-$hash"
    rm -rf "$build" && mkdir -p "$build"
    kernel_log "$name: configuring (tinyconfig + $(for f in "$@"; do basename "$f" .config; done | paste -sd,))"
    make -s -C "$src" O="$build" tinyconfig >&2 || return 1
    (cd "$build" && "$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$@") >/dev/null || return 1
    make -s -C "$src" O="$build" olddefconfig >&2 || return 1
    check_fragments "$build/.config" "$@" || return 1
    kernel_log "$name: building vmlinux and bzImage on $(nproc) cores"
    make -s -C "$src" O="$build" -j"$(nproc)" vmlinux bzImage >&2 || return 1
    local staging="$out.tmp.$$"
    rm -rf "$staging" && mkdir -p "$staging"
    cp "$build/vmlinux" "$build/arch/x86/boot/bzImage" "$build/.config" "$staging/" || return 1
    mv "$staging/.config" "$staging/config"
    rm -rf "$out" && mv "$staging" "$out"
    rm -rf "$build"
    kernel_log "$name: built into $out"
    echo "$out"
}

# Every option a fragment sets must survive olddefconfig; a silently dropped
# option (a typo, a missing dependency) would otherwise surface as a guest
# that boots without the feature.
check_fragments() {
    local config=$1; shift
    local missing=0 line
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=n) grep -q "^${line%=n}=" "$config" && { kernel_log "option not disabled: $line"; missing=1; } ;;
            CONFIG_*=*) grep -qx "$line" "$config" || { kernel_log "option did not stick: $line (got: $(grep "^${line%%=*}=" "$config" || echo unset))"; missing=1; } ;;
        esac
    done < <(cat "$@")
    return $missing
}
