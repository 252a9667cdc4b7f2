# shellcheck shell=bash
# Shared helpers for cross/*.sh. Sourced, never run.

CROSS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$CROSS_DIR/.." && pwd)"
TOOLBIN="$CROSS_DIR/.toolbin"
VENV="${CROSS_VENV:-$CROSS_DIR/.venv}"
OUT_DIR="${CROSS_OUT_DIR:-$CROSS_DIR/out}"
# Kept apart from the host target/ dirs: a different rustc (Debian's) and -Zbuild-std.
CROSS_TARGET_DIR="${CROSS_TARGET_DIR:-$REPO_DIR/target-cross}"
TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf x86_64-unknown-linux-musl)

log() { printf '[cross] %s\n' "$*" >&2; }
die() { printf '[cross] ERROR: %s\n' "$*" >&2; exit 1; }

# target_info TRIPLE: sets QEMU (empty = run natively) and STRIP for TRIPLE.
target_info() {
  case "$1" in
    aarch64-unknown-linux-musl)     QEMU=qemu-aarch64; STRIP=aarch64-linux-gnu-strip;;
    armv7-unknown-linux-musleabihf) QEMU=qemu-arm;     STRIP=arm-linux-gnueabihf-strip;;
    x86_64-unknown-linux-musl)      QEMU="";           STRIP=strip;;
    *) die "unsupported target '$1' (supported: ${TARGETS[*]})";;
  esac
}
upper_triple() { echo "$1" | tr 'a-z-' 'A-Z_'; }

# now: seconds since the epoch with fractions, for timings.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }
