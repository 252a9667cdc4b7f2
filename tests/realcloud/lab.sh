#!/usr/bin/env bash
# The real cloud on loopback for the real-cloud stage: etcd, a real kube-apiserver (with an audit
# log), KubeEdge's CRDs, two real CloudCore replicas sharing CA, certificate and token through the
# kubeedge Secrets, haproxy as the VIP 127.0.0.9 in front of them, and a private containerd.
# Adapted from ../shared/lab/realcloud (its README explains the wiring); the binaries come from
# $REALCLOUD_BIN.
#
#   lab.sh up        start everything (idempotent per component)
#   lab.sh down      stop what this script started (recorded PIDs only), unmount, stop containerd
#   lab.sh vip a|b|auto|none|status   move the VIP (haproxy runtime API), see vip_usage below
#   lab.sh replica   which replica holds an edge session through the VIP: a, b or none
#   lab.sh sessions a|b   how many edge sessions haproxy holds on that replica
#   lab.sh status    one screen of state
#
# Everything listens on 127.0.0.1-.3 and .9, which are already on lo: no address is added to any
# interface. State lives under $REALCLOUD_ROOT (default /tmp/edgecore-rc).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RC_ROOT=${REALCLOUD_ROOT:-/tmp/edgecore-rc}
RC_BIN=${REALCLOUD_BIN:-$RC_ROOT/bin}
RC_RUN=$RC_ROOT/run
RC_LOG=$RC_RUN/log
RC_CERTS=$RC_RUN/certs
RC_PIDS=$RC_RUN/pids
RC_KUBECONFIG=$RC_RUN/admin.kubeconfig
RC_VIP=127.0.0.9
RC_CC_A=127.0.0.2
RC_CC_B=127.0.0.3
export KUBECONFIG=$RC_KUBECONFIG
export EDGECORE_CRI_DIR=$RC_ROOT/cri

kc() { kubectl --kubeconfig "$RC_KUBECONFIG" "$@"; }
log() { echo "[$(date +%T)] lab: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
pid_of() { awk -v n="$1" '$1==n{p=$2} END{print p}' "$RC_PIDS" 2>/dev/null; }
wait_tcp() { # host port seconds
  local i; for ((i = 0; i < $3 * 10; i++)); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

start() { # name logfile cmd...
  local name=$1 logf=$2; shift 2
  if pid_alive "$(pid_of "$name")"; then log "$name already running (pid $(pid_of "$name"))"; return 0; fi
  nohup "$@" >>"$logf" 2>&1 </dev/null &
  echo "$name $!" >>"$RC_PIDS"
  log "started $name pid=$!"
}

certs() {
  mkdir -p "$RC_CERTS"
  (
    cd "$RC_CERTS"
    [ -f ca.key ] || openssl genrsa -out ca.key 2048 2>/dev/null
    [ -f ca.crt ] || openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=edgecore-rc-kubernetes-ca" -out ca.crt
    mk() { # name subject sans eku
      [ -f "$1.crt" ] && return 0
      openssl genrsa -out "$1.key" 2048 2>/dev/null
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
      { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$4"; [ -n "$3" ] && echo "subjectAltName=$3"; } >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr"
    }
    mk apiserver "/CN=kube-apiserver" "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" serverAuth
    mk admin "/O=system:masters/CN=rc-admin" "" clientAuth
    mk apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "" clientAuth
    [ -f sa.key ] || { openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null; }
  )
  kubectl config --kubeconfig "$RC_KUBECONFIG" set-cluster rc --server=https://127.0.0.1:6443 \
    --certificate-authority="$RC_CERTS/ca.crt" --embed-certs=true >/dev/null
  kubectl config --kubeconfig "$RC_KUBECONFIG" set-credentials rc-admin --client-certificate="$RC_CERTS/admin.crt" \
    --client-key="$RC_CERTS/admin.key" --embed-certs=true >/dev/null
  kubectl config --kubeconfig "$RC_KUBECONFIG" set-context rc --cluster=rc --user=rc-admin >/dev/null
  kubectl config --kubeconfig "$RC_KUBECONFIG" use-context rc >/dev/null
}

up_etcd() {
  start etcd "$RC_LOG/etcd.log" etcd --name rc --data-dir "$RC_RUN/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster rc=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
  wait_tcp 127.0.0.1 2379 30 || { tail -20 "$RC_LOG/etcd.log" >&2; die "etcd did not come up"; }
}

up_apiserver() {
  certs
  local C=$RC_CERTS
  # The audit log records what CloudCore does in the API on the edges' behalf (their deletes,
  # status patches, lease updates), which the scenarios count.
  start kube-apiserver "$RC_LOG/kube-apiserver.log" "$RC_BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=127.0.0.1 --secure-port=6443 --advertise-address=127.0.0.1 \
    --tls-cert-file="$C/apiserver.crt" --tls-private-key-file="$C/apiserver.key" --client-ca-file="$C/ca.crt" \
    --kubelet-client-certificate="$C/apiserver-kubelet-client.crt" --kubelet-client-key="$C/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$C/sa.pub" --service-account-signing-key-file="$C/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
    --authorization-mode=Node,RBAC --allow-privileged=true --profiling=false --v=1 \
    --audit-policy-file="$HERE/audit-policy.yaml" --audit-log-path="$RC_LOG/audit.log" \
    --audit-log-maxsize=200 --audit-log-mode=blocking
  local i
  for ((i = 0; i < 180; i++)); do
    kc get --raw /readyz >/dev/null 2>&1 && { log "kube-apiserver ready after ${i}s"; return 0; }
    pid_alive "$(pid_of kube-apiserver)" || { tail -30 "$RC_LOG/kube-apiserver.log" >&2; die "kube-apiserver died"; }
    sleep 1
  done
  die "kube-apiserver not ready after 180 s"
}

up_bootstrap() {
  local crds=${REALCLOUD_CRDS:-$RC_BIN/crds}
  [ -d "$crds" ] || die "no KubeEdge CRDs at $crds (run.sh copies them from the shared lab)"
  kc apply -R -f "$crds" >/dev/null
  kc get ns kubeedge >/dev/null 2>&1 || kc create ns kubeedge >/dev/null
  # No controller-manager here: create what its controllers would have made.
  for ns in default kubeedge; do
    kc -n "$ns" get sa default >/dev/null 2>&1 || kc -n "$ns" create sa default >/dev/null
    kc -n "$ns" get cm kube-root-ca.crt >/dev/null 2>&1 ||
      kc -n "$ns" create cm kube-root-ca.crt --from-file=ca.crt="$RC_CERTS/ca.crt" >/dev/null
  done
  kc wait --for condition=established --timeout=60s crd --all >/dev/null
  log "bootstrap done: $(kc get crd -o name | wc -l) CRDs"
}

up_cc() { # a|b ip
  local n=$1 ip=$2 dir=$RC_RUN/cc-$1
  mkdir -p "$dir"
  "$RC_BIN/cloudcore" --defaultconfig >"$dir/default.yaml"
  python3 "$HERE/mkcfg.py" "$n" "$ip" 9091 "$RC_KUBECONFIG" "$dir" "$RC_VIP" <"$dir/default.yaml" >"$dir/cloudcore.yaml"
  start "cloudcore-$n" "$RC_LOG/cloudcore-$n.log" "$RC_BIN/cloudcore" --config "$dir/cloudcore.yaml"
  wait_tcp "$ip" 10002 60 || { tail -30 "$RC_LOG/cloudcore-$n.log" >&2; die "cloudcore-$n :10002 not listening"; }
  wait_tcp "$ip" 10000 30 || { tail -30 "$RC_LOG/cloudcore-$n.log" >&2; die "cloudcore-$n :10000 not listening"; }
  log "cloudcore-$n listening on $ip:10000/10002"
}

up_proxy() {
  sed -e "s#@RUN@#$RC_RUN#g" -e "s#@VIP@#$RC_VIP#g" -e "s#@A@#$RC_CC_A#g" -e "s#@B@#$RC_CC_B#g" \
    "$HERE/haproxy.cfg.in" >"$RC_RUN/haproxy.cfg"
  haproxy -c -q -f "$RC_RUN/haproxy.cfg"
  start haproxy "$RC_LOG/haproxy.log" haproxy -db -f "$RC_RUN/haproxy.cfg"
  wait_tcp "$RC_VIP" 10002 10 || die "haproxy not listening on $RC_VIP"
}

up_cri() {
  # A loopback-only CNI config: containerd then reports NetworkReady (KubeEdge's Go edged waits
  # for it) without touching any interface. Pods of the scenarios use hostNetwork.
  EDGECORE_CRI_LOOPBACK_CNI=1 "$ROOT/tests/cri/setup.sh" up
}

ports_free() {
  local p busy=""
  for p in 127.0.0.1:2379 127.0.0.1:6443 "$RC_CC_A:10000" "$RC_CC_B:10000" "$RC_VIP:10000"; do
    (exec 3<>"/dev/tcp/${p%:*}/${p#*:}") 2>/dev/null && busy="$busy $p"
  done
  [ -z "$busy" ] || die "ports$busy are taken by something this script did not start (another real-cloud lab? \
stop it first: tests/realcloud/lab.sh down, or ../shared/lab/realcloud/down.sh)"
}

up() {
  mkdir -p "$RC_RUN" "$RC_LOG"
  touch "$RC_PIDS"
  pid_alive "$(pid_of kube-apiserver)" || ports_free
  up_etcd
  pid_alive "$(pid_of kube-apiserver)" || up_apiserver
  up_bootstrap
  up_cc a "$RC_CC_A"
  # B after A has written casecret/cloudcoresecret, else both mint their own CA.
  local i
  for i in $(seq 60); do kc -n kubeedge get secret casecret cloudcoresecret tokensecret >/dev/null 2>&1 && break; sleep 1; done
  up_cc b "$RC_CC_B"
  up_proxy
  up_cri
}

stop_pid() { # name pid
  pid_alive "$2" || return 0
  kill "$2" 2>/dev/null || true
  local i; for i in $(seq 150); do pid_alive "$2" || break; sleep 0.1; done
  pid_alive "$2" && kill -9 "$2" 2>/dev/null
  log "stopped $1 ($2)"
}

# Processes whose command line names this lab's state root: what an earlier `up` started even
# when its PID file was lost (a wiped $RC_ROOT, an interrupted run).
strays() {
  local d cmd
  for d in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
    case "$cmd" in *"$RC_ROOT/"*) ;; *) continue ;; esac
    case "$(basename "${cmd%% *}")" in
      etcd | kube-apiserver | cloudcore | haproxy | containerd | edgecore) echo "${d#/proc/}" ;;
    esac
  done
}

down() {
  if [ -f "$RC_PIDS" ]; then
    tac "$RC_PIDS" | while read -r name pid; do stop_pid "$name" "$pid"; done
    : >"$RC_PIDS"
  fi
  local pid
  for pid in $(strays); do stop_pid "stray $(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" "$pid"; done
  "$ROOT/tests/cri/setup.sh" down >/dev/null 2>&1 || true
  # A Go edged (kubelet) leaves tmpfs mounts for secret and projected volumes under its root.
  awk -v p="$RC_RUN/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  [ "${WIPE:-0}" = 1 ] && rm -rf "$RC_RUN/etcd" "$RC_RUN"/cc-* "$RC_RUN"/edges
  return 0
}

hap() { # haproxy runtime API command
  python3 - "$RC_RUN/haproxy.sock" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall((sys.argv[2] + "\n").encode())
out = b""
while True:
    d = s.recv(65536)
    if not d: break
    out += d
sys.stdout.write(out.decode())
PY
}

vip() {
  setstate() { local be; for be in ws https tunnel stream; do hap "set server $be/$1 state $2" >/dev/null; done; }
  cut() { local be; for be in ws https tunnel stream; do hap "shutdown sessions server $be/$1" >/dev/null; done; }
  case "${1:-status}" in
    a) setstate a ready; setstate b maint; cut b ;;       # a VIP move to a
    b) setstate b ready; setstate a maint; cut a ;;       # a VIP move to b
    auto) setstate a ready; setstate b ready ;;           # a primary, b backup by health check
    none) setstate a maint; setstate b maint; cut a; cut b ;;  # the cloud unreachable
    status) hap "show servers state" | awk '$1 !~ /^#/ && NF>5 {printf "%s/%s op_state=%s admin_state=%s\n",$2,$4,$6,$7}' ;;
    *) echo "usage: lab.sh vip a|b|auto|none|status" >&2; exit 2 ;;
  esac
}

replica() { # which replica holds the edge session(s) through the VIP: a, b, a+b or none
  # haproxy's own session table (health checks are not sessions), frontend ws only.
  hap "show sess" | awk '/ fe=ws / { for (i = 1; i <= NF; i++) if ($i ~ /^srv=/) { sub("srv=", "", $i); s[$i] = 1 } }
    END { out = ""; if ("a" in s) out = "a"; if ("b" in s) out = out (out ? "+" : "") "b"; print (out ? out : "none") }'
}

sessions() { # how many edge sessions haproxy holds on replica $1
  hap "show sess" | awk -v want="srv=$1" '/ fe=ws / { for (i = 1; i <= NF; i++) if ($i == want) n++ } END { print n + 0 }'
}

status() {
  [ -f "$RC_PIDS" ] && while read -r name pid; do
    printf "%-16s pid=%-8s %s\n" "$name" "$pid" "$(pid_alive "$pid" && echo alive || echo DEAD)"
  done <"$RC_PIDS"
  kc get --raw /readyz >/dev/null 2>&1 && echo "apiserver: ready" || echo "apiserver: not ready"
  [ -S "$RC_RUN/haproxy.sock" ] && vip status
  kc get nodes -o wide 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  vip) vip "${2:-status}" ;;
  replica) replica ;;
  sessions) sessions "${2:?a|b}" ;;
  status) status ;;
  start-cc) up_cc "${2:?a|b}" "$([ "${2}" = a ] && echo "$RC_CC_A" || echo "$RC_CC_B")" ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
