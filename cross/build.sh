#!/usr/bin/env bash
# build.sh — release builds of the edgecore binary for devices, statically linked with
# musl, and (optionally) the host cloud simulator.
#
#   cross/build.sh TARGET...        build `-p edgecore --bin edgecore` for each TARGET
#   cross/build.sh all              the three targets below
#   cross/build.sh cloudsim         host build of the simulator (package edgecore-tests,
#                                   bin cloudsim) with the project's rustup toolchain,
#                                   dev profile, in the host target/ dir
#
# TARGETs (all static musl, linked by zig through cargo-zigbuild, std rebuilt with
# -Zbuild-std by Debian's rustc 1.96 — see cross/README.md for why):
#   aarch64-unknown-linux-musl        64-bit ARM: Raspberry Pi 3/4/5 on a 64-bit OS, most ARM boxes
#   armv7-unknown-linux-musleabihf    32-bit ARMv7 hard-float: Raspberry Pi 2/3/4 on a 32-bit OS
#   x86_64-unknown-linux-musl         x86_64 gateways and VMs
#
# Results: cross/out/<target>/edgecore (stripped); its size is printed on stdout as
#   <target> <path> <bytes>
# Cargo's build dir: $CROSS_TARGET_DIR (default <repo>/target-cross), kept apart from
# the host target/ (different compiler). Keep it between runs: std + dependencies are
# most of a cold build.
#
# Env: CROSS_LOCKED=1 adds --locked (default when CI=true); CROSS_CARGO_ARGS="..." extra cargo arguments;
#      CROSS_TARGET_DIR, CROSS_VENV (see lib.sh). Runs setup.sh first (idempotent).
set -euo pipefail
# shellcheck source=cross/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# --locked in CI (a stale Cargo.lock is a bug there); not by default on a work tree that
# others are editing.
want_locked() {
  local v="${CROSS_LOCKED:-${CI:-0}}"
  [ "$v" = 1 ] || [ "$v" = true ]
}

build_cloudsim() {
  # The host toolchain (rust-toolchain.toml) and the host target/ dir: the same
  # artifacts the workspace tests use, so CI builds it once. --workspace, not -p: cargo unifies
  # dependency features over the packages it is asked for, and `-p edgecore-tests` alone
  # resolved them differently and rebuilt half the tree (77 s in CI).
  local t0; t0="$(now)"
  log "building cloudsim for the host (cargo build --workspace --bin cloudsim)"
  local locked=(); want_locked && locked=(--locked)
  ( cd "$REPO_DIR" && PATH="${PATH//$TOOLBIN:/}" cargo build "${locked[@]}" -q --workspace --bin cloudsim ) \
    || die "host build of cloudsim failed (package edgecore-tests, bin cloudsim)"
  local exe="${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/cloudsim"
  [ -x "$exe" ] || die "cloudsim built but $exe is missing"
  log "cloudsim built in $(elapsed "$t0")s: $exe"
  echo "host $exe $(stat -c %s "$exe")"
}

build_target() {
  local t="$1" U t0
  target_info "$t"
  U="$(upper_triple "$t")"
  t0="$(now)"
  local locked=(); want_locked && locked=(--locked)
  local extra=(); read -r -a extra <<< "${CROSS_CARGO_ARGS:-}"
  log "building edgecore for $t (release, static musl, build-std) in $CROSS_TARGET_DIR"
  (
    export PATH="$TOOLBIN:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
    # -Zbuild-std on a stable compiler.
    export RUSTC_BOOTSTRAP=1
    # build-std leaves no lib/rustlib/<t>/lib/self-contained (crt1.o, libc.a,
    # libunwind.a); zig supplies musl's crt objects and libc instead.
    export "CARGO_TARGET_${U}_RUSTFLAGS=-C link-self-contained=no ${CROSS_RUSTFLAGS:-}"
    # Plain RUSTFLAGS would override the per-target flags above.
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS RUSTUP_TOOLCHAIN
    # cargo-zigbuild rewrites its zig wrapper scripts at every start; two builds sharing
    # one wrapper dir fail with "Failed to collect `zig cc` options: Text file busy".
    # One wrapper dir per build dir, and one build at a time per build dir (cargo would
    # serialise them anyway).
    mkdir -p "$CROSS_TARGET_DIR"
    export CARGO_ZIGBUILD_CACHE_DIR="$CROSS_TARGET_DIR/zigbuild"
    exec 9> "$CROSS_TARGET_DIR/.cross-build.lock"
    flock -n 9 || { log "waiting for another cross build using $CROSS_TARGET_DIR"; flock 9; }
    cd "$REPO_DIR"
    cargo-zigbuild build -Zbuild-std=std,panic_abort --target "$t" --release \
      "${locked[@]}" --target-dir "$CROSS_TARGET_DIR" -p edgecore --bin edgecore \
      "${extra[@]+"${extra[@]}"}"
  ) || die "build of edgecore for $t failed (see cargo's output above); if a tool is missing run cross/setup.sh"
  local exe="$CROSS_TARGET_DIR/$t/release/edgecore" out="$OUT_DIR/$t/edgecore"
  [ -f "$exe" ] || die "cargo succeeded but $exe is missing"
  mkdir -p "$OUT_DIR/$t"
  "$STRIP" -o "$out.tmp" "$exe" || die "$STRIP failed on $exe (binutils for $t installed? run cross/setup.sh)"
  mv -f "$out.tmp" "$out"
  log "edgecore for $t built in $(elapsed "$t0")s: $out ($(stat -c %s "$out") bytes stripped, $(stat -c %s "$exe") as linked)"
  echo "$t $out $(stat -c %s "$out")"
}

main() {
  [ $# -ge 1 ] || { usage >&2; exit 64; }
  case "$1" in -h|--help|help) usage; exit 0;; esac
  local targets=() a
  for a in "$@"; do
    case "$a" in
      all) targets+=("${TARGETS[@]}");;
      cloudsim) targets+=(cloudsim);;
      *) target_info "$a"; targets+=("$a");;
    esac
  done
  local need_cross=0
  for a in "${targets[@]}"; do [ "$a" = cloudsim ] || need_cross=1; done
  [ $need_cross = 1 ] && "$CROSS_DIR/setup.sh"
  for a in "${targets[@]}"; do
    if [ "$a" = cloudsim ]; then build_cloudsim; else build_target "$a"; fi
  done
}
main "$@"; exit
