"""Helpers of the real-cloud stage: kubectl, bounded waits, edge agents (ours and KubeEdge's
Go edgecore) against the lab's VIP, their SQLite files, the API server's audit log, and
containerd's view of the pods. Used by scenarios.py; lab.sh has started the cloud."""

import json
import os
import signal
import sqlite3
import stat
import subprocess
import threading
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RC_ROOT = os.environ.get("REALCLOUD_ROOT", "/tmp/edgecore-rc")
RC_BIN = os.environ.get("REALCLOUD_BIN", os.path.join(RC_ROOT, "bin"))
RUN = os.path.join(RC_ROOT, "run")
LOG = os.path.join(RUN, "log")
EDGES = os.path.join(RUN, "edges")
KUBECONFIG = os.path.join(RUN, "admin.kubeconfig")
AUDIT = os.path.join(LOG, "audit.log")
CRI_SOCK = os.path.join(RC_ROOT, "cri", "run", "containerd.sock")
CRI = "unix://" + CRI_SOCK
# Our agent's cgroupRoot: the lab containerd's cgroup tree, which `tests/cri/setup.sh down`
# removes (KubeEdge's agent keeps its default, /kubepods at the top).
CGROUP_ROOT = "/edgecore-cri-test"
VIP = "127.0.0.9"
APP_IMAGE = "localhost/app:local"
PAUSE_IMAGE = "localhost/pause:local"


class Failed(Exception):
    """A check that did not hold; the message says what was expected and what was seen."""


def check(cond, what):
    if not cond:
        raise Failed(what)


def now_ms():
    return int(time.time() * 1000)


def run(*argv, input=None, check_rc=True, timeout=120, env=None):
    p = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                       env=env)
    if check_rc and p.returncode != 0:
        raise Failed(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def kubectl(*args, input=None, check_rc=True):
    env = dict(os.environ, KUBECONFIG=KUBECONFIG)
    return run("kubectl", *args, input=input, check_rc=check_rc, env=env).stdout


def kget(*args):
    """`kubectl get ... -o json` as a dict, or None when it does not exist."""
    env = dict(os.environ, KUBECONFIG=KUBECONFIG)
    p = run("kubectl", "get", *args, "-o", "json", check_rc=False, env=env)
    if p.returncode != 0:
        if "NotFound" in p.stderr or "not found" in p.stderr:
            return None
        raise Failed(f"kubectl get {' '.join(args)}: {p.stderr.strip()}")
    return json.loads(p.stdout)


def apply(obj):
    kubectl("apply", "-f", "-", input=json.dumps(obj))


def lab(*args):
    return run(os.path.join(HERE, "lab.sh"), *args, timeout=180).stdout.strip()


def wait_for(what, timeout, fn, interval=0.25):
    """Calls fn until it returns a truthy value (returned) or `timeout` seconds pass. fn may
    raise Failed to say why it is not there yet; the last reason is in the error."""
    deadline = time.time() + timeout
    last = "never checked"
    while True:
        try:
            v = fn()
            if v:
                return v
            last = repr(v)
        except Failed as e:
            last = str(e)
        if time.time() >= deadline:
            raise Failed(f"timed out after {timeout}s waiting for {what}; last: {last}")
        time.sleep(interval)


def token():
    out = kubectl("-n", "kubeedge", "get", "secret", "tokensecret", "-o", "jsonpath={.data.tokendata}")
    import base64
    return base64.b64decode(out).decode()


def condition(obj, kind):
    for c in (obj or {}).get("status", {}).get("conditions", []) or []:
        if c.get("type") == kind:
            return c
    return None


def unmount_under(path):
    """Unmounts what a kubelet left mounted below `path` (tmpfs of secret volumes), deepest first."""
    prefix = path.rstrip("/") + "/"
    mounts = [line.split()[1] for line in open("/proc/mounts") if line.split()[1].startswith(prefix)]
    for m in sorted(mounts, reverse=True):
        run("umount", m, check_rc=False)


class Edge:
    """One edge agent on one node: `rust` (the edgecore under test) or `go` (KubeEdge's)."""

    def __init__(self, node, kind="rust", edged=True, directory=None, fresh=True):
        self.node = node
        self.kind = kind
        self.edged = edged
        self.dir = directory or os.path.join(EDGES, node)
        self.proc = None
        if fresh and os.path.isdir(self.dir):
            import shutil
            unmount_under(self.dir)
            shutil.rmtree(self.dir)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(LOG, f"edge-{node}.log")

    @property
    def binary(self):
        if self.kind == "go":
            return os.path.join(RC_BIN, "edgecore-go")
        return os.environ["EDGECORE_BIN"]

    @property
    def db(self):
        return os.path.join(self.dir, "edgecore.db")

    @property
    def config_path(self):
        return os.path.join(self.dir, "edgecore.yaml")

    @property
    def root_dir(self):
        return os.path.join(self.dir, "kubelet")

    @property
    def pod_logs(self):
        return os.path.join(self.dir, "pod-logs")

    def write_config(self, with_token=True, read_only_port=10351):
        """edgecore.yaml from the agent's own `--defaultconfig`, pointed at the VIP."""
        c = yaml.safe_load(run(self.binary, "--defaultconfig").stdout)
        c["database"]["dataSource"] = self.db
        m = c["modules"]
        h = m["edgeHub"]
        h["enable"] = True
        h["websocket"]["server"] = f"{VIP}:10000"
        h["websocket"]["enable"] = True
        h["quic"]["enable"] = False
        h["httpServer"] = f"https://{VIP}:10002"
        h["token"] = token() if with_token else ""
        h["tlsCaFile"] = os.path.join(self.dir, "ca", "rootCA.crt")
        h["tlsCertFile"] = os.path.join(self.dir, "certs", "server.crt")
        h["tlsPrivateKeyFile"] = os.path.join(self.dir, "certs", "server.key")
        e = m["edged"]
        e["hostnameOverride"] = self.node
        e["enable"] = self.edged
        e["rootDirectory"] = self.root_dir
        e["podSandboxImage"] = PAUSE_IMAGE
        t = e.setdefault("tailoredKubeletConfig", {})
        t["containerRuntimeEndpoint"] = CRI
        t["imageServiceEndpoint"] = CRI
        t["staticPodPath"] = os.path.join(self.dir, "manifests")
        t["podLogsDir"] = self.pod_logs
        t["readOnlyPort"] = read_only_port
        if self.kind != "go":
            t["cgroupRoot"] = CGROUP_ROOT
        for k in ("eventBus", "deviceTwin", "edgeStream", "serviceBus", "dbTest", "taskManager"):
            if k in m:
                m[k]["enable"] = False
        if "metaServer" in m.get("metaManager", {}):
            m["metaManager"]["metaServer"]["enable"] = False
        if "health" in m:  # ours only
            m["health"]["address"] = "127.0.0.1:0"
        with open(self.config_path, "w") as f:
            yaml.safe_dump(c, f, default_flow_style=False, sort_keys=False)

    def start(self, with_token=True, kubelet=None, meta_server=None, feature_gates=None, edge_stream=False):
        """Starts the agent; `kubelet` overrides tailoredKubeletConfig keys, `meta_server`
        metaManager.metaServer keys, `feature_gates` featureGates; `edge_stream` turns EdgeStream
        on with the VIP's tunnel port and reports the VIP as the node's address (where
        kube-apiserver finds the stream port, see README)."""
        if not os.path.exists(self.config_path) or with_token or kubelet or meta_server or feature_gates or edge_stream:
            self.write_config(with_token=with_token)
        if kubelet or meta_server or feature_gates or edge_stream:
            c = yaml.safe_load(open(self.config_path))
            if edge_stream:
                h = c["modules"]["edgeHub"]
                c["modules"]["edgeStream"].update(
                    enable=True, server=f"{VIP}:10024", tlsTunnelCAFile=h["tlsCaFile"],
                    tlsTunnelCertFile=h["tlsCertFile"], tlsTunnelPrivateKeyFile=h["tlsPrivateKeyFile"])
                c["modules"]["edged"]["nodeIP"] = VIP
                if self.kind == "go":
                    # KubeEdge's edgestream relays to the kubelet's read-only port, 127.0.0.1:10350.
                    c["modules"]["edged"]["tailoredKubeletConfig"]["readOnlyPort"] = 10350
            c["modules"]["edged"]["tailoredKubeletConfig"].update(kubelet or {})
            c["modules"]["metaManager"]["metaServer"].update(meta_server or {})
            if feature_gates:
                c["featureGates"] = {**(c.get("featureGates") or {}), **feature_gates}
            with open(self.config_path, "w") as f:
                yaml.safe_dump(c, f, default_flow_style=False, sort_keys=False)
        env = dict(os.environ)
        env["RUST_LOG"] = os.environ.get("EDGE_RUST_LOG", "info,edgecore::metamanager=debug")
        log = open(self.log_path, "a")
        log.write(f"\n==== {time.strftime('%T')} start {self.kind} edgecore for {self.node}\n")
        log.flush()
        self.proc = subprocess.Popen([self.binary, "--config", self.config_path], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        with open(os.path.join(EDGES, "pids"), "a") as f:
            f.write(f"{self.proc.pid}\n")
        self.log_offset = os.path.getsize(self.log_path)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if not self.alive():
            return None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise Failed(f"{self.kind} edgecore of {self.node} did not stop within {timeout}s of {sig!r}")

    def log(self, since_start=True):
        with open(self.log_path, errors="replace") as f:
            if since_start:
                f.seek(getattr(self, "log_offset", 0))
            return f.read()

    def rows(self):
        """The meta table as {key: (type, value)}."""
        c = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return {k: (t, v) for k, t, v in c.execute("select key, type, value from meta")}
        finally:
            c.close()

    def row(self, key):
        try:
            r = self.rows().get(key)
        except sqlite3.Error as e:
            raise Failed(f"reading {self.db}: {e}")
        return r[1] if r else None

    def integrity(self):
        c = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return c.execute("pragma integrity_check").fetchone()[0]
        finally:
            c.close()

    def key_mode(self):
        return stat.S_IMODE(os.stat(os.path.join(self.dir, "certs", "server.key")).st_mode)

    def count_in_log(self, needle):
        return self.log().count(needle)

    def container_log(self, pod, container="app"):
        """Everything the pod's container wrote, across its log files (kubelet layout)."""
        base = None
        for d in os.listdir(self.pod_logs) if os.path.isdir(self.pod_logs) else []:
            if d.startswith(f"default_{pod}_"):
                base = os.path.join(self.pod_logs, d, container)
        if not base or not os.path.isdir(base):
            return ""
        out = []
        for f in sorted(os.listdir(base)):
            with open(os.path.join(base, f), errors="replace") as fh:
                out.append(fh.read())
        return "".join(out)


def stop_recorded_edges():
    """Every edge process a scenario started (recorded PIDs still running an edgecore with a
    config under the stage's edge directory), for the stage's cleanup."""
    path = os.path.join(EDGES, "pids")
    if not os.path.exists(path):
        return

    def ours(pid):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            return False
        return "edgecore" in cmd and EDGES in cmd

    pids = [int(line) for line in open(path) if line.strip().isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if ours(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 15
        while time.time() < deadline and any(ours(p) for p in pids):
            time.sleep(0.2)
    os.remove(path)


def audit_events(verb=None, resource=None, name=None, namespace=None, since=None):
    """API audit events (ResponseComplete) matching the filters, made by CloudCore (its user
    agent), in order. `since` is a time.time() lower bound."""
    out = []
    if not os.path.exists(AUDIT):
        return out
    with open(AUDIT, errors="replace") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("stage") != "ResponseComplete" or "cloudcore" not in ev.get("userAgent", ""):
                continue
            ref = ev.get("objectRef", {})
            sub = ref.get("subresource")
            res = ref.get("resource", "") + (f"/{sub}" if sub else "")
            if verb and ev.get("verb") != verb:
                continue
            if resource and res != resource:
                continue
            if name and ref.get("name") != name:
                continue
            if namespace and ref.get("namespace") != namespace:
                continue
            if since is not None:
                ts = ev.get("requestReceivedTimestamp", "")
                if ts and _rfc3339_to_epoch(ts) < since:
                    continue
            out.append(ev)
    return out


def _rfc3339_to_epoch(ts):
    import datetime
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def ctr(*args):
    return run("ctr", "-a", CRI_SOCK, "-n", "k8s.io", *args, timeout=60).stdout


def pod_containers(uid):
    """containerd's containers of the pod with `uid` (sandboxes included), with their kind
    (sandbox/container) and whether their task runs."""
    running = set()
    for line in ctr("tasks", "ls").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "RUNNING":
            running.add(parts[0])
    out = []
    for cid in ctr("containers", "ls", "-q").split():
        try:
            info = json.loads(ctr("containers", "info", cid))
        except (Failed, ValueError):
            continue
        labels = info.get("Labels", {})
        if labels.get("io.kubernetes.pod.uid") != uid:
            continue
        out.append({"id": cid, "kind": labels.get("io.cri-containerd.kind", "?"),
                    "running": cid in running,
                    "name": labels.get("io.kubernetes.container.name", "")})
    return out


class NodeWatch(threading.Thread):
    """Polls the Node's Ready condition in the background and remembers every non-True."""

    def __init__(self, node, every=1.0):
        super().__init__(daemon=True)
        self.node, self.every = node, every
        self.bad = []
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                n = kget("node", self.node)
                ready = condition(n, "Ready")
                self.samples += 1
                if not ready or ready.get("status") != "True":
                    self.bad.append((time.strftime("%T"), ready))
            except Exception as e:  # kubectl hiccup: recorded, not fatal
                self.bad.append((time.strftime("%T"), f"error {e}"))
            self._halt.wait(self.every)

    def stop(self):
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)


def app_pod(name, node, cm=None, secret=None, grace=5, extra_env=None, script=None):
    """A hostNetwork pod that prints its env, then the configmap's `greeting` file every second,
    and exits on SIGTERM; `script` replaces that shell script."""
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    script = script or ("trap 'exit 0' TERM; echo env-greeting=$GREETING env-password=$PASSWORD; "
              f"t=$(cat {sa}/token 2>/dev/null); echo sa-token-bytes=${{#t}}; "
              f"echo sa-namespace=$(cat {sa}/namespace 2>/dev/null); "
              f"c=$(cat {sa}/ca.crt 2>/dev/null); case \"$c\" in '-----BEGIN CERTIFICATE-----'*) echo sa-ca=pem;; *) echo sa-ca=none;; esac; "
              "while true; do echo file-greeting=$(cat /etc/rc-cm/greeting 2>/dev/null); sleep 1; done")
    container = {"name": "app", "image": APP_IMAGE, "imagePullPolicy": "Never",
                 "command": ["/bin/sh", "-c", script], "volumeMounts": [], "env": []}
    volumes = []
    if cm:
        container["env"].append({"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": cm, "key": "greeting"}}})
        container["volumeMounts"].append({"name": "cm", "mountPath": "/etc/rc-cm"})
        volumes.append({"name": "cm", "configMap": {"name": cm}})
    if secret:
        container["env"].append({"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}})
        container["volumeMounts"].append({"name": "sec", "mountPath": "/etc/rc-secret"})
        volumes.append({"name": "sec", "secret": {"secretName": secret}})
    container["env"].extend(extra_env or [])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "rc"}},
            "spec": {"nodeName": node, "hostNetwork": True, "terminationGracePeriodSeconds": grace,
                     "tolerations": [{"operator": "Exists"}], "containers": [container],
                     "volumes": volumes}}


def kubelet_pod(name, node):
    """A hostNetwork pod with what the kubelet handles beyond volumes and env: an init container,
    requests and limits, a resourceFieldRef env var, an exec readiness probe and its own DNS
    (dnsPolicy None). It prints what it sees: nameserver, memory limit, CPU limit."""
    script = ("trap 'exit 0' TERM; "
              "while read k v; do [ \"$k\" = nameserver ] && echo dns=$v; done < /etc/resolv.conf; "
              "echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); "
              "echo cpu-millis=$CPU_MILLIS; while true; do sleep 1; done")
    app = {"name": "app", "image": APP_IMAGE, "imagePullPolicy": "Never",
           "command": ["/bin/sh", "-c", script],
           "resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                         "limits": {"cpu": "500m", "memory": "64Mi"}},
           "env": [{"name": "CPU_MILLIS", "valueFrom": {"resourceFieldRef": {
               "resource": "limits.cpu", "divisor": "1m"}}}],
           "readinessProbe": {"exec": {"command": ["/bin/true"]}, "periodSeconds": 1}}
    init = {"name": "init", "image": APP_IMAGE, "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", "echo init-done"]}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "rc"}},
            "spec": {"nodeName": node, "hostNetwork": True, "terminationGracePeriodSeconds": 2,
                     "tolerations": [{"operator": "Exists"}], "dnsPolicy": "None",
                     "dnsConfig": {"nameservers": ["192.0.2.53"], "searches": ["edge.example"]},
                     "initContainers": [init], "containers": [app]}}


def configmap(name, greeting):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": {"greeting": greeting}}


def secret(name, password):
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
            "stringData": {"password": password}}


def pod_running(name):
    p = kget("pod", name)
    if not p:
        raise Failed(f"pod {name} not in the API")
    ready = condition(p, "Ready")
    phase = p.get("status", {}).get("phase")
    if phase != "Running" or not ready or ready.get("status") != "True":
        raise Failed(f"pod {name}: phase {phase}, Ready {ready}")
    return p


def patch_cm(name, key, value):
    kubectl("patch", "cm", name, "--type", "merge", "-p", json.dumps({"data": {key: value}}))


def stored_data(edge, key, field):
    v = edge.row(key)
    if not v:
        raise Failed(f"{key} not in {edge.db}")
    return json.loads(v).get("data", {}).get(field)


def lease(node):
    return kget("lease", "-n", "kube-node-lease", node)
