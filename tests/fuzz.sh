#!/usr/bin/env bash
# fuzz.sh — run the project's cargo-fuzz targets (libFuzzer, nightly toolchain).
#
#   tests/fuzz.sh                    both targets, FUZZ_RUNS executions each, one after the other
#   tests/fuzz.sh from_wire          only the message parser (edgehub/fuzz)
#   tests/fuzz.sh from_yaml          only the edgecore.yaml reader (config/fuzz)
#   tests/fuzz.sh --install          only install cargo-fuzz (idempotent)
#
# Targets:
#   from_wire   edgehub::Message::from_wire on any bytes: never panics; whatever decodes
#               re-encodes (to_wire) to a frame that decodes to the same message, the encoding
#               is stable, and the content survives sorted_json unchanged.
#               Seeds: edgehub/fuzz/seeds/from_wire (the wire vectors of tests/fixtures/vectors,
#               copies of ../shared/vectors).
#   from_yaml   config::from_yaml on any text: never panics; whatever loads validates and
#               prints back (to_yaml) to a file that loads equal.
#               Seeds: config/fuzz/seeds/from_yaml (tests/fixtures/config-examples and a few
#               small files).
#
# Not part of tests/run.sh: a run of 10 M executions takes minutes to hours on a shared box.
# The corpus grows in $FUZZ_DIR/corpus/<target> (outside git); the seeds are read, never
# written. Crashes land in <crate>/fuzz/artifacts/<target>/ and stop the run (exit != 0).
# The libFuzzer log is kept in $FUZZ_DIR/logs/<target>.log; the last status line
# (#N execs, cov, ft, corp, exec/s) is printed at the end.
#
# Env: FUZZ_RUNS (default 10000000; 0 = until FUZZ_SECONDS), FUZZ_SECONDS (libFuzzer's
#      -max_total_time, default 0 = no limit), FUZZ_DIR (default <repo>/target-fuzz, also the
#      cargo target dir), FUZZ_ARGS (extra libFuzzer arguments), FUZZ_NICE (default 15),
#      FUZZ_JOBS (parallel workers sharing the corpus, each running FUZZ_RUNS/FUZZ_JOBS;
#      default 1), FUZZ_SANITIZER (cargo fuzz -s: address (default) or none, which
#      runs faster; our crates forbid unsafe code, so ASan watches only dependencies).
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="${FUZZ_DIR:-$REPO_DIR/target-fuzz}"
RUNS="${FUZZ_RUNS:-10000000}"
SECONDS_LIMIT="${FUZZ_SECONDS:-0}"
NICE="${FUZZ_NICE:-15}"

log() { printf '[fuzz] %s\n' "$*" >&2; }
die() { printf '[fuzz] ERROR: %s\n' "$*" >&2; exit 1; }

install_cargo_fuzz() {
  cargo +nightly --version >/dev/null 2>&1 \
    || die "no nightly toolchain: rustup toolchain install nightly"
  if cargo +nightly fuzz --version >/dev/null 2>&1; then
    log "$(cargo +nightly fuzz --version) already installed"
    return
  fi
  log "installing cargo-fuzz from crates.io (cargo install cargo-fuzz --locked)"
  nice -n "$NICE" cargo +nightly install cargo-fuzz --locked
}

# crate_of TARGET: the fuzz crate directory that holds TARGET.
crate_of() {
  case "$1" in
    from_wire) echo "$REPO_DIR/edgehub/fuzz";;
    from_yaml) echo "$REPO_DIR/config/fuzz";;
    *) die "unknown target '$1' (known: from_wire, from_yaml)";;
  esac
}

run_target() {
  local t="$1" dir corpus extra=() jobs="${FUZZ_JOBS:-1}" san="${FUZZ_SANITIZER:-address}"
  dir="$(crate_of "$t")"
  corpus="$FUZZ_DIR/corpus/$t"
  mkdir -p "$corpus" "$FUZZ_DIR/logs"
  read -r -a extra <<< "${FUZZ_ARGS:-}"
  [[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "FUZZ_JOBS must be a positive number, not '$jobs'"
  # Each worker runs its share of the executions; they share the corpus directory, so what
  # one finds the others pick up when they next read it (at their start).
  local per=$(( RUNS / jobs ))
  [ "$RUNS" -eq 0 ] && per=-1  # libFuzzer: -runs=-1 is no limit
  log "$t: $RUNS runs in $jobs worker(s) (max ${SECONDS_LIMIT}s), sanitizer $san, corpus $corpus + seeds $dir/seeds/$t, logs $FUZZ_DIR/logs/$t.*"
  local t0 rc=0; t0=$(date +%s)
  # cargo-fuzz's defaults: release with debug assertions and overflow checks, AddressSanitizer.
  ( cd "$dir" && nice -n "$NICE" cargo +nightly fuzz build -s "$san" --target-dir "$FUZZ_DIR" "$t" ) \
    > "$FUZZ_DIR/logs/$t.build.log" 2>&1 || { tail -n 40 "$FUZZ_DIR/logs/$t.build.log" >&2; die "$t: build failed"; }
  local pids=() w
  for w in $(seq 1 "$jobs"); do
    ( cd "$dir" && exec nice -n "$NICE" \
        cargo +nightly fuzz run -s "$san" --target-dir "$FUZZ_DIR" "$t" "$corpus" "seeds/$t" -- \
        -runs="$per" -max_total_time="$SECONDS_LIMIT" -print_final_stats=1 -seed="$w$t0" \
        "${extra[@]+"${extra[@]}"}" ) > "$FUZZ_DIR/logs/$t.$w.log" 2>&1 &
    pids+=($!)
  done
  for w in "${!pids[@]}"; do wait "${pids[$w]}" || rc=$?; done
  local total=0 n logf
  for w in $(seq 1 "$jobs"); do
    logf="$FUZZ_DIR/logs/$t.$w.log"
    n="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -n 1)"
    total=$(( total + ${n:-0} ))
    log "$t worker $w: ${n:-?} executions; last status: $(grep -E '^#[0-9]+' "$logf" | tail -n 1 || echo none)"
  done
  log "$t: exit $rc after $(( $(date +%s) - t0 ))s; $total executions in all"
  log "$t: corpus $(find "$corpus" -type f | wc -l) files, $(du -sh "$corpus" | cut -f1)"
  if [ $rc -ne 0 ]; then
    for w in $(seq 1 "$jobs"); do tail -n 20 "$FUZZ_DIR/logs/$t.$w.log" >&2; done
    die "$t failed (crash or build error); see $FUZZ_DIR/logs/$t.*.log and $dir/artifacts/$t/"
  fi
}

main() {
  local targets=()
  for a in "$@"; do
    case "$a" in
      -h|--help) sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0;;
      --install) install_cargo_fuzz; exit 0;;
      *) crate_of "$a" >/dev/null; targets+=("$a");;
    esac
  done
  [ ${#targets[@]} -gt 0 ] || targets=(from_wire from_yaml)
  install_cargo_fuzz
  for t in "${targets[@]}"; do run_target "$t"; done
}
main "$@"
