# Builds one binary of the workspace as a static executable and packs it as
# /init of a reproducible newc cpio. Sourced by build.sh (the agent's
# initrd) and by the tests (the guest probe's initrd).
#
#   build_static_initrd PACKAGE BIN LIST OUTPUT
#
# LIST is a mkcpio.py list whose /init entry takes its source from the key
# "init". Everything but the output path goes to stderr.

static_initrd_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
static_initrd_root=$(cd "$static_initrd_here/.." && pwd)

build_static_initrd() {
    local package=$1 bin=$2 list=$3 output=$4
    local target_dir=${CARGO_TARGET_DIR:-$static_initrd_root/target}
    mkdir -p "$target_dir"
    target_dir=$(cd "$target_dir" && pwd)
    local cargo_home=${CARGO_HOME:-$HOME/.cargo}
    local triple=x86_64-unknown-linux-gnu

    # crt-static links glibc in: no dynamic loader in the guest. --target
    # keeps these flags off build scripts and proc macros, which run on the
    # host. The remaps keep checkout, target and cargo paths (embedded in
    # panic locations) out of the binary, so where it is built does not
    # change it. Stripping symbols matters for that too: ThinLTO names
    # promoted locals with a `.llvm.<hash>` suffix that differs between
    # target directories, and only the symbol table carries those names (it
    # also saves ~16% of size).
    # libcontainer's seccomp support links libseccomp; Debian's
    # libseccomp-dev ships the static archive libseccomp-sys is pointed at.
    local seccomp_lib=/usr/lib/x86_64-linux-gnu
    if [ ! -f "$seccomp_lib/libseccomp.a" ]; then
        echo "static-initrd: $seccomp_lib/libseccomp.a is missing (apt-get install libseccomp-dev)" >&2
        return 1
    fi
    (cd "$static_initrd_root" && LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$seccomp_lib RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols \
--remap-path-prefix=$static_initrd_root=/kata-rs \
--remap-path-prefix=$target_dir=/target \
--remap-path-prefix=$cargo_home=/cargo" \
        cargo build --release --locked -p "$package" --bin "$bin" --target "$triple" >&2) || return 1

    local exe=$target_dir/$triple/release/$bin
    # The kernel execs /init with no loader and no libraries: insist on a
    # static (PIE) executable without an interpreter or needed libraries.
    local headers
    headers=$(readelf --program-headers --dynamic "$exe") || return 1
    if grep -q INTERP <<<"$headers" || grep -q '(NEEDED)' <<<"$headers"; then
        echo "static-initrd: $exe is dynamically linked" >&2
        return 1
    fi
    mkdir -p "$(dirname "$output")"
    python3 "$static_initrd_here/mkcpio.py" "$list" "$output" --file "init=$exe" >&2 || return 1
    echo "$output"
}
