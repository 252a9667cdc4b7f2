#!/usr/bin/env bash
# The real-cloud stage: a real kube-apiserver on etcd and two real CloudCore replicas behind a
# loopback VIP, a private containerd, and the release edgecore, checked through kubectl, the
# API server's audit log and the edge's SQLite file.
#
#   tests/realcloud/run.sh [scenario...]     (no argument: every scenario; `--list` lists them)
#
# Binaries: $REALCLOUD_BIN (default /tmp/edgecore-rc/bin) holds kube-apiserver, cloudcore,
# edgecore-go and crds/; when it does not, they are unpacked from the shared lab
# ($REALCLOUD_LAB, default ../shared/lab/realcloud beside the project). With neither, the stage
# says so and is skipped. Everything it starts is stopped on every exit path.
# Knobs: REALCLOUD_ROOT (state, default /tmp/edgecore-rc), EDGECORE_BIN (a prebuilt edgecore
# instead of `cargo build --release`), REALCLOUD_KEEP=1 (leave the lab up after the run).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export REALCLOUD_ROOT=${REALCLOUD_ROOT:-/tmp/edgecore-rc}
export REALCLOUD_BIN=${REALCLOUD_BIN:-$REALCLOUD_ROOT/bin}
LAB=${REALCLOUD_LAB:-$ROOT/../shared/lab/realcloud}
started=$(date +%s)

say() { echo "realcloud: $*"; }
skip() { say "skipped: $*"; exit 0; }

if [ "${1:-}" = --list ]; then exec python3 "$HERE/scenarios.py" --list; fi

have_bins() {
  local b
  for b in kube-apiserver cloudcore edgecore-go; do [ -x "$REALCLOUD_BIN/$b" ] || return 1; done
  [ -d "$REALCLOUD_BIN/crds" ]
}

apt_install() {
  local need=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  [ ${#need[@]} -eq 0 ] && return 0
  say "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null
  }
}

if ! have_bins; then
  if compgen -G "$LAB/bin/*.xz" >/dev/null && [ -d "$LAB/crds" ]; then
    command -v xz >/dev/null || apt_install xz-utils
    mkdir -p "$REALCLOUD_BIN"
    for z in "$LAB"/bin/*.xz; do
      b=$(basename "$z" .xz)
      [ -x "$REALCLOUD_BIN/$b" ] && continue
      xz -dc "$z" >"$REALCLOUD_BIN/.new-$b" && chmod +x "$REALCLOUD_BIN/.new-$b" && mv -f "$REALCLOUD_BIN/.new-$b" "$REALCLOUD_BIN/$b"
      say "unpacked $b into $REALCLOUD_BIN"
    done
    rm -rf "$REALCLOUD_BIN/crds" && cp -r "$LAB/crds" "$REALCLOUD_BIN/crds"
  else
    skip "no kube-apiserver, cloudcore, edgecore-go and crds/ in REALCLOUD_BIN=$REALCLOUD_BIN, and no shared lab at $LAB to unpack them from (see tests/realcloud/README.md)"
  fi
fi
[ "$(id -u)" = 0 ] || skip "needs root (containerd, mounts); run as root"
command -v kubectl >/dev/null || skip "no kubectl on PATH (the assertions go through it)"
apt_install etcd-server haproxy openssl curl python3-yaml python3-venv libsqlite3-0 iproute2
# The scenarios run in a venv that adds the official Kubernetes Python client (MetaServer's
# real-client check) to the system's packages; made once, kept beside the lab's state.
VENV="${REALCLOUD_ROOT:-/tmp/edgecore-rc}/venv"
[ -x "$VENV/bin/python3" ] || python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/python3" -c 'import kubernetes' 2>/dev/null || {
  say "pip install kubernetes (into $VENV)"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'kubernetes==31.0.0'
}

if [ -z "${EDGECORE_BIN:-}" ]; then
  say "building the release edgecore"
  cargo build --release --locked -p edgecore
  EDGECORE_BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/edgecore
fi
export EDGECORE_BIN

cleanup() {
  local rc=$?
  if [ "${REALCLOUD_KEEP:-0}" = 1 ]; then
    say "REALCLOUD_KEEP=1: the lab stays up (tests/realcloud/lab.sh down stops it)"
  else
    "$VENV/bin/python3" "$HERE/scenarios.py" --stop-edges >/dev/null 2>&1 || true
    "$HERE/lab.sh" down || true
  fi
  say "took $(( $(date +%s) - started ))s (exit $rc)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$HERE/lab.sh" up
if [ "${1:-}" = --fleet ]; then
  # fleet.sh: the benchmark instead of the scenarios, with more open files for N agents.
  ulimit -n 65536 2>/dev/null || true
  $REALCLOUD_SCENARIOS_CMD
else
  "$VENV/bin/python3" "$HERE/scenarios.py" "$@"
fi
