#!/usr/bin/env bash
# The main job of tests/setup.sh, and the steps of docs/howto-run.md: a
# bundle with a busybox root filesystem (Debian's busybox-static), made with
# `kata-rs spec`, run by `kata-rs run` with the isolation given (vm by
# default), in a temporary directory that is removed afterwards.
#
# Usage: busybox-demo.sh [vm|namespace] [COMMAND...]
set -euo pipefail

isolation=${1:-vm}
shift || true
[ $# -gt 0 ] || set -- sh -c 'echo "hello from busybox, kernel $(uname -r) on $(nproc) CPU(s)"'

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d /tmp/kata-rs-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

python3 "$here/images/build-busybox.py" "$work/image" >/dev/null
mkdir "$work/bundle"
cp -a "$work/image/rootfs" "$work/bundle/rootfs"
cd "$work/bundle"
kata-rs spec
# `kata-rs spec` writes runc's template: an interactive sh on a terminal.
# The demo runs COMMAND without one, so that it works without a terminal.
python3 - "$@" <<'PY'
import json, sys
config = json.load(open("config.json"))
config["process"]["terminal"] = False
config["process"]["args"] = sys.argv[1:]
json.dump(config, open("config.json", "w"), indent=2)
PY
echo "+ kata-rs run --isolation=$isolation demo-$$" >&2
kata-rs run --isolation="$isolation" "demo-$$"
