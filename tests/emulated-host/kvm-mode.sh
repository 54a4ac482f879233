#!/usr/bin/env bash
# Which KVM this machine has, and a way to run VM-mode tests wherever they
# can run: directly on hardware-backed KVM, otherwise inside the emulated KVM
# host (run.sh beside this file).
#
# Executed:  kvm-mode.sh                      prints hardware, pvm or none
#            kvm-mode.sh run [RUN_OPTS --] CMD...   same as run_with_kvm
# Sourced:   defines kvm_mode and run_with_kvm.
#
#   hardware  /dev/kvm, a CPU with vmx or svm, and kvm_intel or kvm_amd loaded
#   pvm       /dev/kvm comes from kvm-pvm, which cannot boot a standard guest
#   none      no usable /dev/kvm

emulated_host_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

kvm_mode() {
    # PVM is checked first: its /dev/kvm looks like any other.
    if [ -d /sys/module/kvm_pvm ]; then
        echo pvm
    elif [ -c /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo \
        && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
        echo hardware
    else
        echo none
    fi
}

# run_with_kvm [RUN_OPTS... --] CMD [ARGS...]
# RUN_OPTS (run.sh's options) are taken only when the first word starts with
# '-', up to the first '--'; they are ignored when the command runs directly.
# Says on stderr which way it went; returns the command's exit status.
run_with_kvm() {
    local run_opts=() mode
    if [[ ${1-} == -* ]]; then
        while [ $# -gt 0 ] && [ "$1" != -- ]; do
            run_opts+=("$1")
            shift
        done
        [ $# -gt 0 ] || { echo "run_with_kvm: run.sh options must end with --" >&2; return 125; }
        shift
    fi
    [ $# -gt 0 ] || { echo "run_with_kvm: no command given" >&2; return 125; }
    mode=$(kvm_mode)
    if [ "$mode" = hardware ]; then
        echo "kvm-mode: hardware KVM: running $1 directly" >&2
        "$@"
    else
        echo "kvm-mode: $mode, not hardware KVM: running $1 inside the emulated KVM host" >&2
        "$emulated_host_dir/run.sh" "${run_opts[@]}" -- "$@"
    fi
}

# Shell options are set only when executed: a sourced file must not change
# its caller's.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case ${1-} in
        "") kvm_mode ;;
        run) shift; run_with_kvm "$@" ;;
        *) echo "usage: $0 [run [RUN_OPTS --] COMMAND [ARGS...]]" >&2; exit 2 ;;
    esac
fi
