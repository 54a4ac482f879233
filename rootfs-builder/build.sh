#!/usr/bin/env bash
# Builds the guest initrd: the statically linked kata-rs-agent as /init plus
# the entries of initrd.list, packed as an uncompressed newc cpio.
#
# Output: $TARGET_DIR/kata-rs/initrd.img (TARGET_DIR: $CARGO_TARGET_DIR or
# <repo>/target); the path is printed on stdout, everything else goes to
# stderr. The same sources and toolchain give the same bytes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/static-initrd.sh"
target_dir=${CARGO_TARGET_DIR:-$static_initrd_root/target}
build_static_initrd kata-rs-agent kata-rs-agent "$here/initrd.list" "$target_dir/kata-rs/initrd.img"
