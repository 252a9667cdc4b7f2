#!/usr/bin/env bash
# run.sh — run a binary built for TARGET on this x86_64 machine.
#
#   cross/run.sh TARGET BINARY [ARGS...]
#
# aarch64 runs under qemu-aarch64 and armv7 under qemu-arm, called explicitly: this
# machine has no binfmt_misc, so executing an ARM binary directly fails with
# "cannot execute binary file: Exec format error". The binaries are static (musl),
# so qemu needs no -L sysroot. x86_64 runs natively. Exit status is the binary's.
set -euo pipefail
# shellcheck source=cross/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 2 ] || die "usage: cross/run.sh TARGET BINARY [ARGS...] (TARGET: ${TARGETS[*]})"
t="$1" bin="$2"; shift 2
target_info "$t"
[ -f "$bin" ] || die "no such binary: $bin (build it with cross/build.sh $t)"
if [ -z "$QEMU" ]; then exec "$bin" "$@"; fi
command -v "$QEMU" >/dev/null || die "$QEMU not found; run cross/setup.sh (installs qemu-user)"
exec "$QEMU" "$bin" "$@"
