#!/usr/bin/env bash
# Builds the guest initrd: the statically linked kata-rs-agent as /init plus
# the entries of initrd.list, packed as an uncompressed newc cpio.
#
# Output: $TARGET_DIR/kata-rs/initrd.img (TARGET_DIR: $CARGO_TARGET_DIR or
# <repo>/target); the path is printed on stdout, everything else goes to
# stderr. The same sources and toolchain give the same bytes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$target_dir"
target_dir=$(cd "$target_dir" && pwd)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
triple=x86_64-unknown-linux-gnu

# crt-static links glibc in: no dynamic loader in the guest. --target keeps
# these flags off build scripts and proc macros, which run on the host.
# The remaps keep checkout, target and cargo paths (embedded in panic
# locations) out of the binary, so where it is built does not change it.
# Stripping symbols matters for that too: ThinLTO names promoted locals
# with a `.llvm.<hash>` suffix that differs between target directories, and
# only the symbol table carries those names (it also saves ~16% of size).
export RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols \
--remap-path-prefix=$root=/kata-rs \
--remap-path-prefix=$target_dir=/target \
--remap-path-prefix=$cargo_home=/cargo"
(cd "$root" && cargo build --release --locked -p kata-rs-agent --target "$triple" >&2)

agent=$target_dir/$triple/release/kata-rs-agent

# The kernel execs /init with no loader and no libraries: insist on a static
# (PIE) executable without an interpreter or needed libraries.
headers=$(readelf --program-headers --dynamic "$agent")
if grep -q INTERP <<<"$headers" || grep -q '(NEEDED)' <<<"$headers"; then
    echo "build.sh: $agent is dynamically linked:" >&2
    file "$agent" >&2
    exit 1
fi
file "$agent" >&2

out_dir=$target_dir/kata-rs
mkdir -p "$out_dir"
python3 "$here/mkcpio.py" "$here/initrd.list" "$out_dir/initrd.img" --file "agent=$agent"
echo "$out_dir/initrd.img"
