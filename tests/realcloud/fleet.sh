#!/usr/bin/env bash
# Fleet benchmark on the real cloud (not part of the test suite): N edge agents on the two real
# CloudCore replicas, a VIP move, and how fast and how completely they come back.
#   tests/realcloud/fleet.sh N [rust|go]     e.g. tests/realcloud/fleet.sh 100 rust
# Prints one JSON line of results (also kept in $REALCLOUD_ROOT/run/results/fleet-KIND-N.json).
# Uses run.sh's setup (binaries, packages, release build); the lab is stopped afterwards unless
# REALCLOUD_KEEP=1.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
n=${1:?usage: fleet.sh N [rust|go]}; kind=${2:-rust}
if [ "$kind" = go ]; then
  # Every Go kubelet takes inotify instances (cAdvisor); the default 128 stops at ~30 of them.
  old=$(sysctl -n fs.inotify.max_user_instances)
  trap 'sysctl -qw fs.inotify.max_user_instances="$old"' EXIT
  sysctl -qw fs.inotify.max_user_instances=$((old > 8192 ? old : 8192))
fi
REALCLOUD_SCENARIOS_CMD="python3 $HERE/fleet.py $n $kind" "$HERE/run.sh" --fleet
