#!/usr/bin/env bash
# tests/vip/vip-failover.sh — CloudCore failover behind a VIP, end to end, with the real
# daemons: keepalived (VRRP) holding a virtual IP, haproxy (`balance source`, as in
# KubeEdge's HA guide) on every cloud host, one `cloudsim serve` CloudHub replica per cloud
# host (they share the cluster state through one SQLite file), and `edgecore` on two edge
# hosts dialing VIP:10010. It crashes the VIP master's keepalived and its replica, feeds
# more objects, and measures how long until each edgecore is connected again and its
# store equals the cluster again.
#
#   tests/vip/vip-failover.sh          run the test (what tests/run.sh / .ci/run call)
#   tests/vip/vip-failover.sh down     remove whatever a killed run left behind
#
# Prints one line per edge, `failover_reconnect_ms=N converge_ms=N` (the worst edge), then
# one JSON line (also in $STATE/result.json). Exit 0 = passed (or SKIP, see below), non-zero = failed.
#
# Topology (all of it exists ONLY inside network namespaces this script creates):
#   ${P}sw       bridge br0, one veth end per host (c1 c2 c3 e1 e2); stp off, no mcast snooping
#   ${P}cloudN   eth0 NET.1N/24: cloudsim :10000, haproxy :10010 -> cloud1..N:10000,
#                keepalived VRID 53 (cloud1 priority 150 MASTER, cloud2 100, cloud3 75),
#                vrrp_script = "haproxy :10010 accepts"
#   ${P}edge1    eth0 NET.22/24: edgecore (node edge-vip-1) -> VIP:10010
#   ${P}edge2    eth0 NET.21/24: edgecore (node edge-vip-2) -> VIP:10010
#   VIP = NET.242 (default NET 10.10.103)
# haproxy's source hash sends edge1 (.22) to cloud1 and edge2 (.21) to cloud2 (with 2 or 3
# clouds), so one crash covers both cases: edge1's session is on the crashed replica
# (haproxy closes it at once), edge2's is on a surviving replica reached through the
# crashed host's haproxy (it breaks when the VIP moves: the new holder answers with RST).
# The veth pairs are created inside ${P}sw with the peer moved straight into the host's
# namespace, so nothing ever exists in the root namespace; the root namespace is
# snapshotted before and compared after.
#
# Times are from the crash, taken from $EPOCHREALTIME stamps put on every log line as it
# is read: reconnect = edgehub's first "connected" line; converge = the first
# `cloudsim check` pass after that connection. Then a settle period (3 s) after which
# every edge must again be connected and converged.
#
# Failure injected (VIPTEST_MODE):
#   kill (default)  SIGSTOP+SIGKILL the master's keepalived (parent and VRRP child, so it
#                   can neither respawn nor send a priority-0 advert: a crash) and SIGKILL
#                   its cloudsim. Its haproxy keeps running and it keeps the VIP address
#                   (a crashed keepalived does not remove it); the backup takes over by
#                   VRRP timeout and gratuitous ARP.
#   host            power cut: SIGSTOP everything in the master's namespace, eth0 down, SIGKILL.
#
# Binaries: EDGECORE_BIN and CLOUDSIM_BIN, or built with
# `cargo build --profile $VIPTEST_PROFILE --locked -p edgecore -p edgecore-tests`
# (CARGO_TARGET_DIR honoured). The default profile is dev: after `cargo test` (tests/run.sh)
# that is an incremental build of seconds, while the release profile (fat LTO) took more
# than 15 minutes from scratch on the shared build machine. VIPTEST_PROFILE=release for
# release binaries.
# If they cannot be built or do not implement the interface yet, the same topology and
# failover run with tests/vip/standin.py (python3) in their place, the stand-in numbers
# are printed, and the script prints "SKIP: ..." and exits 0 (VIPTEST_STRICT=1: exit 1).
#
# Env (defaults): VIPTEST_PREFIX (ekv-)  VIPTEST_NET (10.10.103)  VIPTEST_CLOUDS (3)
#   VIPTEST_VRID (53)  VIPTEST_VRRP_VERSION (3)  VIPTEST_ADVERT (0.2 s; VRRPv2 needs whole s)
#   VIPTEST_MODE (kill)  VIPTEST_BOUND (30 s per wait)  VIPTEST_SETTLE (3 s)
#   VIPTEST_FEED (20 objects before)  VIPTEST_FEED_AFTER (20 objects after the kill)
#   VIPTEST_PROFILE (dev)  VIPTEST_EDGE_HOSTS ("22 21": one edge per entry)
#   VIPTEST_NODE_PREFIX (edge-vip-)  VIPTEST_STATE (tests/vip/run)  VIPTEST_KEEP (0: 1 = leave
#   it all running for inspection; clean up with `down`)  VIPTEST_STANDIN (0: 1 = force the
#   stand-ins)  VIPTEST_NO_APT (0)  VIPTEST_STRICT (0)  VIPTEST_RUST_LOG (info)
#   VIPTEST_CONNECTED_RE / VIPTEST_LOST_RE: how a link transition looks in edgecore's log.
set -euo pipefail
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
P="${VIPTEST_PREFIX:-ekv-}"
NET="${VIPTEST_NET:-10.10.103}"
NCLOUD="${VIPTEST_CLOUDS:-3}"
VIP="$NET.242"
read -r -a EDGE_HOSTS <<< "${VIPTEST_EDGE_HOSTS:-22 21}"   # host part of each edge's address
VRID="${VIPTEST_VRID:-53}"
VRRP_VERSION="${VIPTEST_VRRP_VERSION:-3}"
ADVERT="${VIPTEST_ADVERT:-0.2}"
MODE="${VIPTEST_MODE:-kill}"
BOUND="${VIPTEST_BOUND:-30}"
SETTLE="${VIPTEST_SETTLE:-3}"
FEED1="${VIPTEST_FEED:-20}"
FEED2="${VIPTEST_FEED_AFTER:-20}"
NODE_PREFIX="${VIPTEST_NODE_PREFIX:-edge-vip-}"
STATE="${VIPTEST_STATE:-$HERE/run}"
# edgehub logs "edgehub::link: connected endpoint=..." (metamanager's "connected; draining
# outbox" follows it and is not a second connection); the stand-in "connected to cloudN"
CONNECTED_RE="${VIPTEST_CONNECTED_RE:-(^|: )connected( |$)}"
LOST_RE="${VIPTEST_LOST_RE:-(^|[^a-z])(lost|disconnected)([^a-z]|$)}"
SW="${P}sw"
PORT_HUB=10000 PORT_HA=10010
LOCK="/run/lock/${P}vip-failover.lock"

case "$MODE" in kill|host) ;; *) echo "VIPTEST_MODE must be kill or host" >&2; exit 2;; esac
case "$NCLOUD" in 2|3) ;; *) echo "VIPTEST_CLOUDS must be 2 or 3" >&2; exit 2;; esac
case "$STATE" in /*) ;; *) STATE="$PWD/$STATE";; esac

log() { printf '[vip-failover %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
die() { printf '[vip-failover] FAIL: %s\n' "$*" >&2; exit 1; }

clouds() { local i; for ((i = 1; i <= NCLOUD; i++)); do echo "cloud$i"; done; }
ns_of() { echo "${P}$1"; }
edges() { local i; for ((i = 1; i <= ${#EDGE_HOSTS[@]}; i++)); do echo "edge$i"; done; }
ip_of() { case "$1" in cloud*) echo "$NET.1${1#cloud}";; edge*) echo "$NET.${EDGE_HOSTS[${1#edge} - 1]}";; esac; }
port_of() { case "$1" in cloud*) echo "c${1#cloud}";; edge*) echo "e${1#edge}";; esac; }
node_of() { echo "$NODE_PREFIX${1#edge}"; }          # edgeN -> its node name
prio_of() { case "$1" in cloud1) echo 150;; cloud2) echo 100;; *) echo 75;; esac; }
ns_exists() { [ -e "/run/netns/$1" ]; }
now() { echo "$EPOCHREALTIME"; }
ms_since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 + 0.5 }'; }

# ------------------------------------------------------------------ prerequisites ---
need_tools() {
  local missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v keepalived >/dev/null || missing+=(keepalived)
  command -v haproxy >/dev/null || missing+=(haproxy)
  { command -v setsid >/dev/null && command -v flock >/dev/null; } || missing+=(util-linux)
  [ "${1:-}" = python ] && ! command -v python3 >/dev/null && missing+=(python3)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "${VIPTEST_NO_APT:-0}" = 1 ] && { echo "missing: ${missing[*]}"; return 1; }
  log "installing ${missing[*]} (policy-rc.d / no systemd: services are not started)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
    apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
      { echo "apt-get install ${missing[*]} failed"; return 1; }
  fi
}

# ------------------------------------------------------------- process tracking ---
# A tracked process: pid file $STATE/pid/NAME.pid; before any signal we check that the
# process's command line contains $STATE (every command we start names it).
pid_alive() {
  local f="$STATE/pid/$1.pid" pid cl
  [ -s "$f" ] || return 1
  pid="$(head -n1 "$f" | tr -dc 0-9)"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  cl="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cl" == *"$STATE"* ]] || return 1
  echo "$pid"
}
signal_tracked() { local pid; pid="$(pid_alive "$1")" || return 0; kill "-$2" "$pid" 2>/dev/null || true; }
# start_bg NAME NS CMD... — detached, inside NS. stdout+stderr go to $STATE/log/NAME.log,
# each line prefixed with the epoch time it was read ($EPOCHREALTIME), which is what the
# failover times are computed from. The pid file holds CMD's own pid (exec).
start_bg() {
  local name="$1" ns="$2"; shift 2
  rm -f "$STATE/pid/$name.pid"
  setsid -f ip netns exec "$ns" env NO_COLOR=1 RUST_LOG="${VIPTEST_RUST_LOG:-info}" bash -c '
    pidf=$1 logf=$2; shift 2
    { echo $BASHPID > "$pidf"; exec "$@"; } 2>&1 < /dev/null |
      while IFS= read -r l || [ -n "$l" ]; do printf "%s %s\n" "$EPOCHREALTIME" "$l"; done >> "$logf"
  ' ekv-start "$STATE/pid/$name.pid" "$STATE/log/$name.log" "$@" > /dev/null 2>&1 < /dev/null 9>&-
  local i; for ((i = 0; i < 100; i++)); do pid_alive "$name" >/dev/null && return 0; sleep 0.05; done
  log "$name did not start; tail of its log:"; tail -n 15 "$STATE/log/$name.log" >&2 || true
  return 1
}

# ---------------------------------------------------------- root namespace guard ---
root_snapshot() { { ip -br addr; ip route; ip -6 route; ip -br link | awk '{print $1, $3}'; } 2>/dev/null || true; }
root_ns_ours() { # prints anything of OURS visible in the root namespace
  local a r l; a="$(ip -br addr 2>/dev/null || true)"; r="$(ip route 2>/dev/null || true)"; l="$(ip -br link 2>/dev/null || true)"
  [[ "$a" == *" $NET."* ]] && echo "address in $NET.0/24"
  [[ "$r" == *"$NET."* ]] && echo "route to $NET.0/24"
  awk -v p="$P" 'index($1, p) == 1 {print "interface " $1}' <<< "$l"
  awk '$1 ~ /^[ce][0-9]+@/ {print "veth end " $1 " in the root namespace"}' <<< "$l"
  return 0
}

# ------------------------------------------------------------------- teardown ---
teardown() {
  local f name pid n ns
  mkdir -p "$STATE/pid"
  for f in "$STATE"/pid/*.pid; do
    [ -e "$f" ] || continue
    name="$(basename "$f" .pid)"
    signal_tracked "$name" CONT; signal_tracked "$name" TERM
  done
  for ((n = 0; n < 20; n++)); do
    pid=""; for f in "$STATE"/pid/*.pid; do [ -e "$f" ] && pid_alive "$(basename "$f" .pid)" >/dev/null && pid=1; done
    [ -z "$pid" ] && break; sleep 0.1
  done
  for f in "$STATE"/pid/*.pid; do [ -e "$f" ] && signal_tracked "$(basename "$f" .pid)" KILL; done
  # Whatever still runs inside OUR namespaces (keepalived children, the log stampers)
  # can only be ours: we created these namespaces.
  local all=() sig
  for f in /run/netns/"$P"*; do [ -e "$f" ] && all+=("$(basename "$f")"); done
  for sig in TERM KILL; do
    for ns in "${all[@]+"${all[@]}"}"; do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "-$sig" "$pid" 2>/dev/null || true; done
    done
    [ "$sig" = TERM ] && [ ${#all[@]} -gt 0 ] && sleep 0.3
  done
  for ns in "${all[@]+"${all[@]}"}"; do ip netns del "$ns" 2>/dev/null || log "WARN: could not delete netns $ns"; done
  rm -f "$STATE"/pid/*.pid
}

# ---------------------------------------------------------------------- config ---
render() { # render TEMPLATE OUT KEY=VALUE...
  local t="$1" out="$2" kv k v; shift 2
  t="$(< "$t")"
  for kv in "$@"; do k="${kv%%=*}" v="${kv#*=}"; t="${t//@$k@/$v}"; done
  if grep -qE '@[A-Z_]+@' <<< "$t"; then die "unrendered placeholder in $out: $(grep -oE '@[A-Z_]+@' <<< "$t" | sort -u | xargs)"; fi
  printf '%s\n' "$t" > "$out"
}

write_files() {
  mkdir -p "$STATE"/{pid,log,conf,bin,run,edge}
  chmod 755 "$STATE" "$STATE"/{pid,log,conf,bin,run}
  # keepalived's enable_script_security wants root-owned scripts in non-writable dirs
  cat > "$STATE/bin/check.sh" <<'EOF'
#!/bin/bash
# vrrp_script: healthy iff every given local port accepts TCP within 1 s
for p in "$@"; do timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null || exit 1; done
EOF
  cat > "$STATE/bin/notify.sh" <<EOF
#!/bin/bash
# keepalived notify: \$1 = node, then keepalived appends: TYPE NAME STATE PRIORITY
export LC_ALL=C
echo "\$EPOCHREALTIME \$1 \$2 \$3 \$4 \$5" >> "$STATE/log/vrrp-events.log"
EOF
  chmod 755 "$STATE/bin/check.sh" "$STATE/bin/notify.sh"
  local c servers="" b
  for b in $(clouds); do servers+="  server $b $(ip_of "$b"):$PORT_HUB"$'\n'; done
  for c in $(clouds); do
    local st=BACKUP; [ "$c" = cloud1 ] && st=MASTER
    render "$HERE/keepalived.conf.in" "$STATE/conf/keepalived-$c.conf" NODE="$c" STATE="$STATE" \
      HA_PORT="$PORT_HA" STATE_INIT="$st" VRID="$VRID" PRIO="$(prio_of "$c")" ADVERT="$ADVERT" \
      VIP="$VIP" VRRP_VERSION="$VRRP_VERSION"
    render "$HERE/haproxy.cfg.in" "$STATE/conf/haproxy-$c.cfg" NODE="$c" HA_PORT="$PORT_HA" SERVERS="${servers%$'\n'}"
  done
  local e
  for e in $(edges); do
    render "$HERE/edgecore.yaml.in" "$STATE/conf/edgecore-$e.yaml" EDGE_DB="$STATE/edge/$e.db" \
      VIP="$VIP" HA_PORT="$PORT_HA" PKI="$STATE/pki" EDGE_NODE="$(node_of "$e")"
  done
}

# -------------------------------------------------------------------- topology ---
make_topology() {
  ip netns add "$SW"
  ip -n "$SW" link set lo up
  ip -n "$SW" link add br0 type bridge stp_state 0 mcast_snooping 0
  ip -n "$SW" link set br0 up
  local n ns port
  for n in $(clouds) $(edges); do
    ns="$(ns_of "$n")"; port="$(port_of "$n")"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # created inside $SW, the peer goes straight into $ns: never in the root namespace
    ip -n "$SW" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "$port" master br0 up
    ip -n "$ns" addr add "$(ip_of "$n")/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

has_vip() { local a; a="$(ip -n "$(ns_of "$1")" -4 -o addr show dev eth0 2>/dev/null || true)"; [[ "$a" == *" $VIP/"* ]]; }
vip_holders() { local c; for c in $(clouds); do has_vip "$c" && echo "$c"; done; return 0; }
vrrp_state() { awk -v c="$1" '$2 == c {s = $5} END {print s}' "$STATE/log/vrrp-events.log" 2>/dev/null || true; }
edge_tcp_ok() { local e; for e in $(edges); do timeout 1 ip netns exec "$(ns_of "$e")" bash -c "exec 3<>/dev/tcp/$VIP/$PORT_HA" 2>/dev/null || return 1; done; }

start_clouds() {
  local c ns
  for c in $(clouds); do
    ns="$(ns_of "$c")"
    if [ "$REAL" = 1 ]; then
      start_bg "hub-$c" "$ns" "$CLOUDSIM_BIN" serve --listen "0.0.0.0:$PORT_HUB" --state "$STATE/cluster.db" \
        --pki "$STATE/pki" --name "$c"
    else
      start_bg "hub-$c" "$ns" python3 "$HERE/standin.py" serve --name "$c" --port "$PORT_HUB" --tag "$STATE"
    fi
    start_bg "haproxy-$c" "$ns" haproxy -db -f "$STATE/conf/haproxy-$c.cfg"
    echo "$(now) $c INSTANCE VI_EKV STARTING 0" >> "$STATE/log/vrrp-events.log"
    # -n foreground (setsid detaches), -l -D log to our file, -G no syslog, -P VRRP only.
    # Its own pid files must differ from our tracking file (else "daemon is already running").
    start_bg "keepalived-$c" "$ns" keepalived -n -l -D -G -P -f "$STATE/conf/keepalived-$c.conf" \
      -p "$STATE/run/keepalived-$c.main.pid" -r "$STATE/pid/keepalived-vrrp-$c.pid" \
      -c "$STATE/run/keepalived-$c.chk.pid"
  done
}

wait_vip_converged() { # every keepalived MASTER/BACKUP, cloud1 the only holder, edge reaches VIP:10010
  local deadline c st ok h
  deadline=$(( $(date +%s) + BOUND ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    ok=1
    for c in $(clouds); do st="$(vrrp_state "$c")"; case "$st" in MASTER|BACKUP) ;; *) ok=0;; esac; done
    h="$(vip_holders | xargs)"
    [ "$h" = cloud1 ] || ok=0
    [ $ok = 1 ] && edge_tcp_ok && { log "VIP $VIP on cloud1; every edge reaches VIP:$PORT_HA (haproxy)"; return 0; }
    sleep 0.2
  done
  for c in $(clouds); do log "  $c: vrrp=$(vrrp_state "$c") vip=$(has_vip "$c" && echo yes || echo no)"; done
  return 1
}

# ------------------------------------------------------------------ edge + checks ---
# edge_event_after EDGE T0 RE [last] — epoch of the first (or last) line of EDGE's log after
# T0 matching RE (case-insensitive, ANSI colours stripped); empty if none.
edge_event_after() {
  awk -v t0="$2" -v re="$3" -v last="${4:-}" '
    { line = $0; gsub(/\033\[[0-9;]*m/, "", line); t = $1 + 0
      if (t >= t0 && tolower(substr(line, length($1) + 2)) ~ re) { r = $1; if (!last) { print r; exit } } }
    END { if (last && r != "") print r }' "$STATE/log/$1.log" 2>/dev/null || true
}
edge_count_after() { # EDGE T0 RE
  awk -v t0="$2" -v re="$3" '{ line = $0; gsub(/\033\[[0-9;]*m/, "", line)
    if ($1 + 0 >= t0 && tolower(substr(line, length($1) + 2)) ~ re) n++ } END { print n + 0 }' "$STATE/log/$1.log" 2>/dev/null || echo 0
}
edge_connected_now() { # EDGE — the last link transition in its log is "connected"
  awk -v c="$CONNECTED_RE" -v l="$LOST_RE" '{ line = $0; gsub(/\033\[[0-9;]*m/, "", line); m = tolower(substr(line, length($1) + 2))
    if (m ~ c) s = 1; else if (m ~ l || m ~ /connecting/) s = 0 } END { exit !s }' "$STATE/log/$1.log" 2>/dev/null
}
check_once() { # EDGE — its store equals the cluster
  if [ "$REAL" = 1 ]; then
    timeout 10 "$CLOUDSIM_BIN" check --state "$STATE/cluster.db" --edge-db "$STATE/edge/$1.db" --node "$(node_of "$1")" \
      >> "$STATE/log/check-$1.log" 2>&1 < /dev/null
  else
    edge_connected_now "$1"   # stand-in: nothing to compare, "converged" = connected
  fi
}
feed() { [ "$REAL" = 1 ] || return 0
  timeout 30 "$CLOUDSIM_BIN" feed --state "$STATE/cluster.db" --count "$1" --kind mixed >> "$STATE/log/feed.log" 2>&1 < /dev/null ||
    die "cloudsim feed failed: $(tail -n 3 "$STATE/log/feed.log")"; }
# session_holder EDGE — which replica its session is on (for the report).
session_holder() {
  if [ "$REAL" = 0 ]; then
    awk '{ if (match($0, /connected to cloud[0-9]+/)) w = substr($0, RSTART + 13, RLENGTH - 13) } END { print w }' "$STATE/log/$1.log" 2>/dev/null
    return 0
  fi
  # cloudsim logs "session started" / "session ended" with node=NAME ... conn=N; the holder
  # is the live replica with the most recently started session that has not ended
  local c best="" bt=0 t node; node="$(node_of "$1")"
  for c in $(clouds); do
    pid_alive "hub-$c" >/dev/null || continue
    t="$(awk -v n="node=$node " 'index($0, n) && match($0, / conn=[0-9]+/) { id = substr($0, RSTART + 6, RLENGTH - 6)
        if (/session started/) open[id] = $1; else if (/session ended/) delete open[id] }
      END { m = 0; for (i in open) if (open[i] + 0 > m) m = open[i] + 0; printf "%.6f\n", m }' "$STATE/log/hub-$c.log" 2>/dev/null || echo 0)"
    awk -v a="$t" -v b="$bt" 'BEGIN { exit !(a > b) }' && { best="$c"; bt="$t"; }
  done
  echo "${best:-none}"
}

start_edge() { # EDGE
  if [ "$REAL" = 1 ]; then
    start_bg "$1" "$(ns_of "$1")" "$EDGECORE_BIN" --config "$STATE/conf/edgecore-$1.yaml"
  else
    start_bg "$1" "$(ns_of "$1")" python3 "$HERE/standin.py" edge --host "$VIP" --port "$PORT_HA" \
      --max-seconds $((BOUND * 3 + 30)) --tag "$STATE"
  fi
}

# ------------------------------------------------------------------- binaries ---
resolve_bins() { # sets EDGECORE_BIN CLOUDSIM_BIN, or returns 1 with the reason in $WHY
  WHY=""
  if [ -z "${EDGECORE_BIN:-}" ] || [ -z "${CLOUDSIM_BIN:-}" ]; then
    command -v cargo >/dev/null || { WHY="cargo not found and EDGECORE_BIN/CLOUDSIM_BIN not set"; return 1; }
    local prof="${VIPTEST_PROFILE:-dev}" sub
    sub="$prof"; [ "$prof" = dev ] && sub=debug
    log "building edgecore and cloudsim (cargo build --profile $prof)"
    (cd "$ROOT" && timeout "${VIPTEST_BUILD_TIMEOUT:-1800}" cargo build --profile "$prof" --locked -p edgecore -p edgecore-tests >&2) ||
      { WHY="cargo build --profile $prof -p edgecore -p edgecore-tests failed"; return 1; }
    local td; td="${CARGO_TARGET_DIR:-$ROOT/target}"; case "$td" in /*) ;; *) td="$ROOT/$td";; esac
    EDGECORE_BIN="${EDGECORE_BIN:-$td/$sub/edgecore}" CLOUDSIM_BIN="${CLOUDSIM_BIN:-$td/$sub/cloudsim}"
  fi
  [ -x "$EDGECORE_BIN" ] || { WHY="no executable $EDGECORE_BIN"; return 1; }
  [ -x "$CLOUDSIM_BIN" ] || { WHY="no executable $CLOUDSIM_BIN"; return 1; }
  local h; h="$(timeout 10 "$CLOUDSIM_BIN" --help 2>&1 || true)"
  [[ "$h" == *pki* && "$h" == *serve* && "$h" == *feed* && "$h" == *check* ]] ||
    { WHY="cloudsim does not implement pki/serve/feed/check yet"; return 1; }
  h="$(timeout 10 "$EDGECORE_BIN" --help 2>&1 || true)"
  [[ "$h" == *--config* ]] || { WHY="edgecore has no --config option yet"; return 1; }
}

# ------------------------------------------------------------------------ main ---
cmd_down() {
  mkdir -p "${LOCK%/*}"; exec 9> "$LOCK"; flock -w 60 9 || die "another run holds $LOCK"
  teardown
  local bad; bad="$(root_ns_ours)"; [ -z "$bad" ] || die "root namespace has: $bad"
  log "down: done"
}

cmd_run() {
  local t_start; t_start="$(now)"
  [ "$(id -u)" = 0 ] || { echo "SKIP: vip-failover needs root (network namespaces)"; exit "$SKIP_RC"; }
  local why=""
  REAL=1
  if [ "${VIPTEST_STANDIN:-0}" = 1 ]; then REAL=0; why="VIPTEST_STANDIN=1"
  elif ! resolve_bins; then REAL=0; why="$WHY"; fi
  if [ "$REAL" = 0 ]; then log "real binaries unavailable ($why): running the topology with stand-ins"; fi
  local build_s; build_s="$(awk -v a="$t_start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"; t_start="$(now)"
  local miss extra=""; [ "$REAL" = 0 ] && extra=python
  miss="$(need_tools $extra)" || { echo "SKIP: cannot install tools: $miss"; exit "$SKIP_RC"; }

  mkdir -p "${LOCK%/*}"; exec 9> "$LOCK"; flock -w 120 9 || die "another run holds $LOCK"
  teardown                                  # leftovers of a killed run
  local bad; bad="$(root_ns_ours)"; [ -z "$bad" ] && [ ! -e "/run/netns/$SW" ] ||
    die "SAFETY: root namespace already has: $bad — refusing to start"
  ROOT_BEFORE="$(root_snapshot)"
  rm -rf "$STATE/log" "$STATE/edge" "$STATE/pki" "$STATE"/cluster.db* "$STATE/result.json"
  write_files
  trap on_exit EXIT
  trap 'exit 130' INT TERM

  if ! ip netns add "${P}probe" 2>/dev/null; then echo "SKIP: cannot create network namespaces here"; exit "$SKIP_RC"; fi
  ip netns del "${P}probe"
  make_topology
  bad="$(root_ns_ours)"; [ -z "$bad" ] || die "SAFETY: root namespace has: $bad"
  if [ "$REAL" = 1 ]; then
    local pki_nodes=() e
    for e in $(edges); do pki_nodes+=(--extra-node "$(node_of "$e")"); done
    timeout 30 "$CLOUDSIM_BIN" pki --dir "$STATE/pki" --node "$(node_of edge1)" --san "$VIP" "${pki_nodes[@]}" > "$STATE/log/pki.log" 2>&1 ||
      die "cloudsim pki failed: $(tail -n 5 "$STATE/log/pki.log")"
  fi
  start_clouds
  wait_vip_converged || die "VRRP/haproxy did not converge within ${BOUND}s"
  local t_up; t_up="$(now)"
  feed "$FEED1"

  local e t_edge deadline pending; t_edge="$(now)"
  for e in $(edges); do start_edge "$e"; done
  deadline=$(( $(date +%s) + BOUND ))
  while :; do
    pending=""
    for e in $(edges); do
      { [ -n "$(edge_event_after "$e" "$t_edge" "$CONNECTED_RE")" ] && check_once "$e"; } || pending+=" $e"
    done
    [ -z "$pending" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || die "not connected and converged within ${BOUND}s (before the failover):$pending"
    for e in $pending; do pid_alive "$e" >/dev/null || die "$e: edge process exited before the failover"; done
    sleep 0.2
  done
  local initial_ms; initial_ms="$(ms_since "$t_edge" "$(now)")"
  sleep 1                                    # steady sessions before the break
  local victim; victim="$(vip_holders | xargs)"
  [ "$victim" = cloud1 ] || die "expected cloud1 to hold the VIP, holders: '$victim'"
  declare -A SESS_BEFORE T_CONN T_CONV
  for e in $(edges); do SESS_BEFORE[$e]="$(session_holder "$e")"; done
  log "edges connected and converged in ${initial_ms} ms (sessions:$(for e in $(edges); do printf ' %s@%s' "$e" "${SESS_BEFORE[$e]}"; done)); crashing $victim (mode $MODE)"

  # ---- the break
  local vns; vns="$(ns_of "$victim")"
  local t0; t0="$(now)"
  case "$MODE" in
    kill)
      # freeze first, so the parent can neither respawn the VRRP child nor make it
      # send a priority-0 advert on the way out: this is a crash, not a stop
      signal_tracked "keepalived-$victim" STOP; signal_tracked "keepalived-vrrp-$victim" STOP
      signal_tracked "hub-$victim" KILL
      signal_tracked "keepalived-vrrp-$victim" KILL; signal_tracked "keepalived-$victim" KILL ;;
    host)
      local pids; pids="$(ip netns pids "$vns" 2>/dev/null | xargs)"
      # freeze, pull the cable, then kill: the dying sockets' FIN/RST never leave the host
      [ -n "$pids" ] && kill -STOP $pids 2>/dev/null || true
      ip -n "$vns" link set eth0 down
      [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true ;;
  esac
  log "crashed $victim"
  feed "$FEED2"
  local t_fed; t_fed="$(now)"

  # ---- measure, per edge: the first new connection after the break, and the first time
  # after it that the edge's store equals the cluster (which has the post-crash writes)
  deadline=$(( $(date +%s) + BOUND ))
  while :; do
    pending=""
    for e in $(edges); do
      [ -n "${T_CONN[$e]:-}" ] || T_CONN[$e]="$(edge_event_after "$e" "$t0" "$CONNECTED_RE")"
      if [ -z "${T_CONV[$e]:-}" ] && [ -n "${T_CONN[$e]}" ] && check_once "$e"; then T_CONV[$e]="$(now)"; fi
      [ -n "${T_CONV[$e]:-}" ] || pending+=" $e"
    done
    [ -z "$pending" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || break
    for e in $pending; do pid_alive "$e" >/dev/null || { log "$e: edge process exited"; break 2; }; done
    sleep 0.05
  done
  # ---- settle: a crashed keepalived leaves the VIP on the old master too, and the new
  # master's gratuitous ARPs (again 1 s later) can break a session made through it in
  # the meantime. Watch a little longer, then require every edge connected and converged.
  local stable=1
  if [ -z "$pending" ]; then
    sleep "$SETTLE"
    deadline=$(( $(date +%s) + BOUND ))
    while :; do
      pending=""
      for e in $(edges); do { edge_connected_now "$e" && check_once "$e"; } || pending+=" $e"; done
      [ -z "$pending" ] && break
      [ "$(date +%s)" -lt "$deadline" ] || { stable=0; break; }
      sleep 0.1
    done
  else stable=0; fi

  local new_master holders_after
  new_master="$(awk -v t0="$t0" -v v="$victim" '$1 >= t0 && $5 == "MASTER" && $2 != v { printf "%s@%d", $2, ($1 - t0) * 1000; exit }' "$STATE/log/vrrp-events.log")"
  holders_after="$(vip_holders | xargs)"
  local what; [ "$REAL" = 1 ] && what=edgecore || what=standin
  local worst_conn=0 worst_conv=0 missing="" ejson="" lines=""
  for e in $(edges); do
    local rc_ms=null cv_ms=null lost_ms=null last_ms=null fo=null t_lost last_conn
    t_lost="$(edge_event_after "$e" "$t0" "$LOST_RE")"
    last_conn="$(edge_event_after "$e" "$t0" "$CONNECTED_RE" last)"
    [ -n "$t_lost" ] && lost_ms="$(ms_since "$t0" "$t_lost")"
    [ -n "$last_conn" ] && last_ms="$(ms_since "$t0" "$last_conn")"
    if [ -n "${T_CONN[$e]:-}" ]; then
      rc_ms="$(ms_since "$t0" "${T_CONN[$e]}")"; [ "$rc_ms" -gt "$worst_conn" ] && worst_conn="$rc_ms"
      # edgehub's own number: from noticing the loss to the new session (failover_ms=)
      fo="$(awk -v t="${T_CONN[$e]}" '$1 == t && match($0, /failover_ms=(Some\()?[0-9]+/) { s = substr($0, RSTART, RLENGTH); gsub(/[^0-9]/, "", s); print s; exit }' "$STATE/log/$e.log")"
      [ -n "$fo" ] || fo=null
    else missing+=" $e:reconnect"; fi
    if [ -n "${T_CONV[$e]:-}" ]; then
      cv_ms="$(ms_since "$t0" "${T_CONV[$e]}")"; [ "$cv_ms" -gt "$worst_conv" ] && worst_conv="$cv_ms"
    else missing+=" $e:converge"; fi
    local sb="${SESS_BEFORE[$e]}" sa; sa="$(session_holder "$e")"
    lines+="$e node=$(node_of "$e") ip=$(ip_of "$e") session_before=$sb$([ "$sb" = "$victim" ] && echo '(crashed)') session_after=$sa lost_ms=$lost_ms failover_reconnect_ms=$rc_ms converge_ms=$cv_ms reconnects=$(edge_count_after "$e" "$t0" "$CONNECTED_RE") last_reconnect_ms=$last_ms"$'\n'
    ejson+="$([ -n "$ejson" ] && echo ,)$(printf '{"edge":"%s","node":"%s","ip":"%s","session_before":"%s","session_on_crashed_replica":%s,"session_after":"%s","lost_ms":%s,"edge_reported_failover_ms":%s,"failover_reconnect_ms":%s,"converge_ms":%s,"reconnects":%d,"last_reconnect_ms":%s}' \
      "$e" "$(node_of "$e")" "$(ip_of "$e")" "$sb" "$([ "$sb" = "$victim" ] && echo true || echo false)" "$sa" \
      "$lost_ms" "$fo" "$rc_ms" "$cv_ms" "$(edge_count_after "$e" "$t0" "$CONNECTED_RE")" "$last_ms")"
  done
  local out_conn=$worst_conn out_conv=$worst_conv
  [[ "$missing" == *:reconnect* ]] && out_conn=null
  [[ "$missing" == *:converge* ]] && out_conv=null
  printf '%s' "$lines"
  echo "failover_reconnect_ms=$out_conn converge_ms=$out_conv"
  local json
  json="$(printf '{"test":"vip-failover","edge":"%s","mode":"%s","clouds":%d,"vrrp_version":%s,"advert_int_s":%s,"vip":"%s","crashed":"%s","new_master_at":"%s","vip_holders_after":"%s","failover_reconnect_ms":%s,"converge_ms":%s,"stable":%s,"edges":[%s],"initial_connect_converge_ms":%s,"writes_before":%d,"writes_after":%d,"feed_done_ms":%s,"build_s":%s,"test_s":%s}' \
    "$what" "$MODE" "$NCLOUD" "$VRRP_VERSION" "$ADVERT" "$VIP" "$victim" "${new_master:-}" "$holders_after" \
    "$out_conn" "$out_conv" "$([ $stable = 1 ] && echo true || echo false)" "$ejson" "$initial_ms" "$FEED1" "$FEED2" \
    "$(ms_since "$t0" "$t_fed")" "$build_s" "$(awk -v a="$t_start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')")"
  echo "$json"; echo "$json" > "$STATE/result.json"

  [ -n "$new_master" ] || die "no other keepalived became MASTER after the crash (logs: $STATE/log)"
  [[ "$missing" != *:reconnect* ]] || die "no reconnect within ${BOUND}s of the crash:$missing (logs: $STATE/log)"
  [ -z "$missing" ] || die "store did not converge within ${BOUND}s of the crash:$missing (logs: $STATE/log)"
  [ "$stable" = 1 ] || die "not connected+converged ${SETTLE}s after the failover:$pending (logs: $STATE/log)"
  if [ "$REAL" = 0 ]; then
    echo "SKIP: edgecore/cloudsim failover not run ($why); keepalived+haproxy topology checked with stand-ins"
    [ "${VIPTEST_STRICT:-0}" = 1 ] && exit 1
    exit 0
  fi
  log "PASS"
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ $rc -ne 0 ] && [ -d "$STATE/log" ]; then
    local f
    for f in "$STATE"/log/edge*.log "$STATE"/log/hub-cloud*.log "$STATE"/log/vrrp-events.log "$STATE"/log/check-*.log; do
      [ -s "$f" ] && { log "--- tail $f"; tail -n 12 "$f" >&2; }
    done
  fi
  if [ "${VIPTEST_KEEP:-0}" = 1 ]; then
    log "VIPTEST_KEEP=1: leaving it running; clean up with: $0 down"
  else
    teardown
    local bad after; bad="$(root_ns_ours)"; after="$(root_snapshot)"
    if [ -n "$bad" ]; then log "SAFETY FAIL: root namespace has: $bad"; rc=1
    elif [ "$after" != "$ROOT_BEFORE" ]; then
      log "WARN: root namespace changed during the run, but nothing of ours (another process?):"
      diff <(echo "$ROOT_BEFORE") <(echo "$after") >&2 || true
    else log "teardown done; root namespace unchanged"; fi
  fi
  exit $rc
}

SKIP_RC=0; [ "${VIPTEST_STRICT:-0}" = 1 ] && SKIP_RC=1
ROOT_BEFORE=""
REAL=0 WHY=""
case "${1:-run}" in
  run) cmd_run;;
  down) cmd_down;;
  -h|--help|help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}";;
  *) echo "usage: $0 [run|down]" >&2; exit 2;;
esac
