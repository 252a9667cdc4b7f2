#!/usr/bin/env bash
# session.sh — a real edgecore session under qemu-user against the host cloud simulator.
#
#   cross/session.sh TARGET...      (binaries from cross/build.sh, in cross/out/TARGET/)
#
# Per TARGET, all on 127.0.0.1 with free ports and a fresh temp dir:
#   1. cloudsim pki: CA, server and edge certificates (SAN 127.0.0.1)
#   2. two cloudsim replicas (cloud1, cloud2) sharing one state file
#   3. edgecore (under qemu) with websocket.server = cloud1, failover.servers = [cloud2]
#   4. feed N configmaps, wait until `cloudsim check` agrees with edgecore's database
#   5. kill cloud1 (the VIP moves to cloud2): feed N secrets, check again
#   6. restart cloud1, kill cloud2 (edgecore must reconnect): update the N configmaps,
#      check again
# Processes it started are killed by pid and the temp dir removed on any exit.
#
# Exit: 0 passed, 3 skipped (cloudsim cannot run a session yet: the reason is printed),
#       anything else failed. Env: CROSS_CI_OBJECTS=N (default 20),
#       CROSS_SESSION_TIMEOUT=S per wait (default 120; qemu is slow), CROSS_KEEP_TMP=1,
#       CROSS_CLOUDSIM=PATH to use a cloudsim binary instead of building one.
set -euo pipefail
# shellcheck source=cross/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 1 ] || die "usage: cross/session.sh TARGET..."
OBJECTS="${CROSS_CI_OBJECTS:-20}"
WAIT="${CROSS_SESSION_TIMEOUT:-120}"
NODE=edge-qemu-1
PIDS=()
TMP=""

cleanup() {
  local p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  if [ -n "$TMP" ] && [ "${CROSS_KEEP_TMP:-0}" != 1 ]; then rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

skip() { log "session: skipped: $*"; exit 3; }
fail() { log "session: FAILED: $*"; dump_logs; exit 1; }
dump_logs() {
  local f
  for f in "$TMP"/*.log; do
    [ -f "$f" ] || continue
    printf '[cross] ---- last lines of %s\n' "$(basename "$f")" >&2
    tail -n 25 "$f" >&2
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# eventually SECONDS WHAT CMD...: run CMD until it succeeds, at most SECONDS (bounded poll).
eventually() {
  local limit="$1" what="$2"; shift 2
  local end=$((SECONDS + limit))
  while :; do
    if "$@" > "$TMP/last-try.out" 2>&1; then return 0; fi
    [ "$SECONDS" -lt "$end" ] || { log "gave up after ${limit}s waiting for: $what"; sed 's/^/    /' "$TMP/last-try.out" >&2; return 1; }
    sleep 0.5
  done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { kill -0 "$1" 2>/dev/null; }
stop() { # stop PID: SIGTERM one process we started, reap it, forget it
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}

CLOUDSIM=""
find_cloudsim() {
  if [ -n "${CROSS_CLOUDSIM:-}" ]; then
    CLOUDSIM="$CROSS_CLOUDSIM"
    [ -x "$CLOUDSIM" ] || fail "CROSS_CLOUDSIM=$CLOUDSIM is not an executable"
  else
    local line
    line="$("$CROSS_DIR/build.sh" cloudsim)" || fail "host build of cloudsim failed"
    CLOUDSIM="$(awk '{print $2}' <<< "$line")"
  fi
  local help sub
  help="$("$CLOUDSIM" --help 2>&1 || true)"
  for sub in pki serve feed check; do
    grep -Eq "^ +$sub( |$)" <<< "$help" || skip "cloudsim has no '$sub' subcommand yet (tests/src/bin/cloudsim.rs)"
  done
}

start_replica() { # start_replica NAME PORT -> appends pid, sets REPLICA_PID
  "$CLOUDSIM" serve --listen "127.0.0.1:$2" --state "$TMP/cloud.db" --pki "$TMP/pki" --name "$1" \
    >> "$TMP/$1.log" 2>&1 &
  REPLICA_PID=$!
  PIDS+=("$REPLICA_PID")
  eventually 30 "$1 listening on 127.0.0.1:$2" port_open "$2" || fail "$1 did not listen on 127.0.0.1:$2"
}

write_config() { # write_config PATH PRIMARY_PORT FAILOVER_PORT
  cat > "$1" <<YAML
apiVersion: edgecore.config.kubeedge.io/v1alpha2
kind: EdgeCore
database:
  dataSource: $TMP/edge.db
modules:
  edgeHub:
    enable: true
    rotateCertificates: false
    httpServer: https://127.0.0.1:$2
    tlsCaFile: $TMP/pki/ca.crt
    tlsCertFile: $TMP/pki/edge.crt
    tlsPrivateKeyFile: $TMP/pki/edge.key
    websocket:
      enable: true
      server: 127.0.0.1:$2
    failover:
      servers: ["127.0.0.1:$3"]
  metaManager:
    enable: true
  health:
    enable: true
    address: 127.0.0.1:0
  edged:
    enable: false
    hostnameOverride: $NODE
YAML
}

feed_and_check() { # feed_and_check STEP KIND
  "$CLOUDSIM" feed --state "$TMP/cloud.db" --count "$OBJECTS" --kind "$2" >> "$TMP/feed.log" 2>&1 \
    || fail "$1: cloudsim feed --count $OBJECTS --kind $2 failed"
  local t0; t0="$(now)"
  eventually "$WAIT" "$1: edgecore's database to match the cloud state" \
    "$CLOUDSIM" check --state "$TMP/cloud.db" --edge-db "$TMP/edge.db" --node "$NODE" \
    || fail "$1: edgecore did not sync (cloudsim check)"
  alive "$EDGE_PID" || fail "$1: edgecore exited"
  log "  $1: synced in $(elapsed "$t0")s"
}

session() { # session TARGET
  local t="$1" bin="$OUT_DIR/$1/edgecore" p1 p2 c1 c2 t0
  [ -f "$bin" ] || fail "$bin missing; run cross/build.sh $t"
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/edgecore-session.XXXXXX")"
  t0="$(now)"
  log "session $t in $TMP"
  "$CLOUDSIM" pki --dir "$TMP/pki" --node "$NODE" --san 127.0.0.1 > "$TMP/pki.log" 2>&1 \
    || fail "cloudsim pki failed"
  local f; for f in ca.crt edge.crt edge.key; do
    [ -f "$TMP/pki/$f" ] || fail "cloudsim pki wrote no $f in $TMP/pki ($(ls "$TMP/pki" | xargs))"
  done
  p1="$(free_port)"; p2="$(free_port)"
  start_replica cloud1 "$p1"; c1="$REPLICA_PID"
  start_replica cloud2 "$p2"; c2="$REPLICA_PID"
  write_config "$TMP/edgecore.yaml" "$p1" "$p2"
  "$CROSS_DIR/run.sh" "$t" "$bin" --config "$TMP/edgecore.yaml" > "$TMP/edgecore.log" 2>&1 &
  EDGE_PID=$!
  PIDS+=("$EDGE_PID")

  feed_and_check "1/3 initial sync via cloud1" configmap
  stop "$c1"
  feed_and_check "2/3 cloud1 killed, failover to cloud2" secret
  start_replica cloud1 "$p1"
  stop "$c2"
  feed_and_check "3/3 cloud2 killed, reconnect to cloud1" configmap

  kill -TERM "$EDGE_PID"
  local rc=0; wait "$EDGE_PID" || rc=$?
  [ "$rc" = 0 ] || fail "edgecore exited with $rc after SIGTERM (expected 0)"
  log "session $t passed in $(elapsed "$t0")s ($((2 * OBJECTS)) objects and $OBJECTS updates, a failover and a reconnect)"
  cleanup
}

main() {
  local t
  for t in "$@"; do target_info "$t"; done
  find_cloudsim
  for t in "$@"; do session "$t"; done
}
main "$@"; exit
