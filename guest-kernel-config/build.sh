#!/usr/bin/env bash
# Builds (or finds in the cache) the guest kernel from the fragments beside
# this script and prints the directory holding vmlinux, bzImage and config.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/kernel-lib.sh"
build_kernel guest "$here"/fragments/*.config
