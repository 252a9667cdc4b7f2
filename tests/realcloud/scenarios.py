#!/usr/bin/env python3
"""The real-cloud scenarios (lab.sh has started the cloud and containerd; run.sh drives this).

    scenarios.py [name...]     run these (default: all, in order); prints one PASS/FAIL line
                               per check and exits non-zero when any failed
    scenarios.py --list        the scenario names
    scenarios.py --stop-edges  stop every edge agent a scenario started (cleanup)

Each scenario uses its own node name, tears its pods down through its own edge, and stops its
edge agents before the next one starts (one edged per containerd, as with KubeEdge)."""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import rc
from rc import Edge, Failed, check, kget, kubectl, wait_for  # noqa: F401


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def ok(self, scenario, what, detail=""):
        self.passed += 1
        print(f"PASS {scenario}: {what}{' (' + detail + ')' if detail else ''}", flush=True)

    def fail(self, scenario, what):
        self.failed.append(f"{scenario}: {what}")
        print(f"FAIL {scenario}: {what}", flush=True)


R = Report()


def step(scenario, what, fn, *args, **kw):
    """Runs one check; a Failed stops the scenario (raised again after it is reported)."""
    try:
        detail = fn(*args, **kw)
    except Failed as e:
        R.fail(scenario, f"{what}: {e}")
        e.reported = True
        raise
    R.ok(scenario, what, detail if isinstance(detail, str) else "")
    return detail


def teardown(edge, pods, node):
    """Deletes the scenario's pods through its running edge, stops the edge, and removes the
    Node and what is left in the API. Never raises: the next scenario must start clean."""
    try:
        _teardown(edge, pods, node)
    except Exception as e:  # noqa: BLE001 - reported, then the edge is killed
        print(f"note: teardown of {node}: {e!r}", flush=True)
        if edge and edge.alive():
            edge.proc.kill()


def _teardown(edge, pods, node):
    for p in pods:
        kubectl("delete", "pod", p, "--wait=false", "--ignore-not-found", check_rc=False)
    if edge and edge.alive():
        try:
            wait_for("the scenario's pods gone", 60, lambda: all(kget("pod", p) is None for p in pods))
        except Failed as e:
            print(f"note: teardown: {e}", flush=True)
    if edge:
        edge.stop()
    for p in pods:
        kubectl("delete", "pod", p, "--force", "--grace-period=0", "--ignore-not-found", check_rc=False)
    kubectl("delete", "node", node, "--ignore-not-found", check_rc=False)
    kubectl("delete", "lease", "-n", "kube-node-lease", node, "--ignore-not-found", check_rc=False)


# ---------------------------------------------------------------------------------------------
def bootstrap():
    s, node = "bootstrap", "rc-boot"
    e = Edge(node)
    try:
        e.start(with_token=True)
        cert = os.path.join(e.dir, "certs", "server.crt")
        step(s, "token exchanged for a certificate", wait_for, "the edge certificate", 30,
             lambda: os.path.exists(cert) and os.path.exists(os.path.join(e.dir, "ca", "rootCA.crt")))

        def key_0600():
            mode = e.key_mode()
            check(mode == 0o600, f"key mode {oct(mode)}")
            return "0600"
        step(s, "private key is 0600", key_0600)

        def signed_by_cloud_ca():
            out = rc.run("openssl", "verify", "-CAfile", os.path.join(e.dir, "ca", "rootCA.crt"), cert,
                         check_rc=False)
            check(out.returncode == 0, f"openssl verify: {out.stdout}{out.stderr}")
            subj = rc.run("openssl", "x509", "-noout", "-subject", "-in", cert).stdout.strip()
            check(f"system:node:{node}" in subj, subj)
            return subj
        step(s, "certificate issued by the cloud CA for system:node:<node>", signed_by_cloud_ca)

        def token_removed():
            import yaml
            c = yaml.safe_load(open(e.config_path))
            check(c["modules"]["edgeHub"].get("token", "") == "", "token still in edgecore.yaml")
        step(s, "bootstrap token removed from edgecore.yaml", wait_for, "token removal", 10,
             lambda: token_removed() is None)
        step(s, "node registered with the certificate", wait_for, "the Node", 30,
             lambda: kget("node", node) is not None)
        e.stop()
        before = open(cert, "rb").read()
        e.start(with_token=False)

        def reconnects_without_token():
            wait_for("a session", 30, lambda: "connected" in e.log())
            check(open(cert, "rb").read() == before, "the certificate was replaced on restart")
            check("applying for one with the bootstrap token" not in e.log(), "bootstrapped again")
        step(s, "restart without a token reuses the certificate", reconnects_without_token)
    finally:
        teardown(e, [], node)


# ---------------------------------------------------------------------------------------------
def node_scenario():
    s, node = "node", "rc-node"
    e = Edge(node)
    try:
        e.start()
        n = step(s, "Node Ready=True", wait_for, "Ready", 60,
                 lambda: (lambda n: n if (rc.condition(n, "Ready") or {}).get("status") == "True" else None)(kget("node", node)))
        n = kget("node", node)
        ready = rc.condition(n, "Ready")
        check(ready.get("reason") == "EdgeReady", f"Ready reason {ready}")

        def addresses():
            kinds = {a["type"]: a["address"] for a in n["status"].get("addresses", [])}
            check("InternalIP" in kinds and kinds.get("Hostname") == node, f"addresses {kinds}")
            return f"{kinds}"
        step(s, "addresses InternalIP and Hostname", addresses)

        def resources():
            cap, alloc = n["status"].get("capacity", {}), n["status"].get("allocatable", {})
            for k in ("cpu", "memory", "pods"):
                check(k in cap and k in alloc, f"{k} missing: capacity {cap} allocatable {alloc}")
            ki = lambda q: int(q.rstrip("Ki"))
            check(ki(alloc["memory"]) <= ki(cap["memory"]), f"allocatable {alloc} > capacity {cap}")
            return f"cpu {cap['cpu']} memory {cap['memory']} pods {cap['pods']}"
        step(s, "capacity and allocatable", resources)

        def labels():
            lb = n["metadata"].get("labels", {})
            for k in ("node-role.kubernetes.io/edge", "kubernetes.io/hostname", "kubernetes.io/os",
                      "kubernetes.io/arch"):
                check(k in lb, f"label {k} missing: {lb}")
        step(s, "edge role and kubernetes.io labels", labels)

        def versions():
            info = n["status"]["nodeInfo"]
            kv, cv = info.get("kubeletVersion", ""), info.get("containerRuntimeVersion", "")
            check(kv.startswith("v1.") and "kubeedge" in kv, f"kubeletVersion {kv!r}")
            check(cv.startswith("containerd://"), f"containerRuntimeVersion {cv!r}")
            return f"kubelet {kv}, runtime {cv}"
        step(s, "kubelet and runtime versions", versions)

        def lease_owned():
            le = rc.lease(node)
            check(le is not None, "no Lease in kube-node-lease")
            spec = le["spec"]
            check(spec.get("holderIdentity") == node, f"holder {spec}")
            check(spec.get("leaseDurationSeconds") == 40, f"duration {spec}")
            refs = le["metadata"].get("ownerReferences", [])
            check(refs and refs[0]["kind"] == "Node" and refs[0]["uid"] == n["metadata"]["uid"],
                  f"owner {refs}")
            return le
        first = step(s, "Lease created, held by the node, owned by the Node", wait_for, "the Lease", 30, lease_owned)
        t0 = first["spec"]["renewTime"]

        def renewed():
            le = rc.lease(node)
            return le["spec"]["renewTime"] != t0 and le["spec"]["renewTime"]
        t1 = step(s, "Lease renewed (every 10 s)", wait_for, "a renewal", 25, renewed)

        def store_shape():
            rows = e.rows()
            for key in (f"null/node/{node}", f"kube-node-lease/lease/{node}", f"null/nodepatch/{node}"):
                check(key in rows, f"{key} not stored; keys {sorted(rows)}")
            check(not any(k.startswith("default/node/") or k.startswith("default/nodepatch/") for k in rows),
                  "rows under default/node")
            patch = json.loads(rows[f"null/nodepatch/{node}"][1])
            check("status" in patch and "metadata" not in patch, "the nodepatch row is not the patch sent")
            stored_node = json.loads(rows[f"null/node/{node}"][1])
            check(stored_node["metadata"]["uid"] == n["metadata"]["uid"], "stored Node is another object")
            return f"{len(rows)} rows"
        step(s, "store rows as KubeEdge keeps them (null/node, nodepatch = the patch, lease)", wait_for,
             "the store rows", 20, store_shape)
    finally:
        teardown(e, [], node)


# ---------------------------------------------------------------------------------------------
def pod_scenario():
    s, node, pod, kpod = "pod", "rc-pod", "rc-pod-app", "rc-pod-kubelet"
    e = Edge(node)
    try:
        rc.apply(rc.configmap("rc-pod-cm", "hello-from-real-cloud"))
        rc.apply(rc.secret("rc-pod-secret", "s3cr3t"))
        e.start()
        wait_for("Node Ready", 60, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")
        t0 = time.time()
        rc.apply(rc.app_pod(pod, node, cm="rc-pod-cm", secret="rc-pod-secret"))
        p = step(s, "pod Running and Ready", wait_for, "Running/Ready", 90, lambda: rc.pod_running(pod))
        p = kget("pod", pod)
        uid = p["metadata"]["uid"]

        def conditions():
            conds = {c["type"]: c for c in p["status"]["conditions"]}
            want = {"PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"}
            check(set(conds) == want, f"condition types {sorted(conds)}")
            for c in conds.values():
                check(c["status"] == "True", f"{c}")
                check("reason" not in c and "message" not in c, f"a true condition keeps a reason: {c}")
                check(c.get("lastTransitionTime"), f"no lastTransitionTime: {c}")
            return ", ".join(sorted(want))
        step(s, "all five conditions True, no stale reason (as the kubelet reports)", conditions)

        def statuses():
            st = p["status"]
            cs = st["containerStatuses"][0]
            check(cs["ready"] and cs["started"], f"{cs}")
            check(cs["containerID"].startswith("containerd://") and cs["imageID"], f"{cs}")
            check("running" in cs["state"], f"{cs['state']}")
            for k in ("hostIP", "podIP", "startTime"):
                check(st.get(k), f"{k} missing")
            return f"podIP {st['podIP']}"
        step(s, "container status, podIP, hostIP, startTime", statuses)

        def env_and_volume():
            out = e.container_log(pod)
            check("env-greeting=hello-from-real-cloud env-password=s3cr3t" in out, f"container output {out[-300:]!r}")
            check("file-greeting=hello-from-real-cloud" in out, f"volume file not read: {out[-300:]!r}")
            return True
        step(s, "ConfigMap and Secret env and volume reach the container", wait_for, "the container output", 20, env_and_volume)

        def service_account_volume():
            out = e.container_log(pod)
            check("sa-namespace=default" in out and "sa-ca=pem" in out, f"container output {out[:400]!r}")
            check("sa-token-bytes=0" not in out and "sa-token-bytes=" in out, "no token in the container")
            vol = [v["name"] for v in p["spec"]["volumes"] if v["name"].startswith("kube-api-access-")]
            check(vol, "the pod has no kube-api-access volume")
            path = os.path.join(e.root_dir, "pods", uid, "volumes", "kubernetes.io~projected", vol[0], "token")
            tok = open(path).read()
            who = rc.run("kubectl", "--kubeconfig=/dev/null", "--server=https://127.0.0.1:6443",
                         f"--certificate-authority={rc.RUN}/certs/ca.crt", f"--token={tok}",
                         "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
            check(who == "system:serviceaccount:default:default", f"the API server says the token is {who!r}")
            rows = e.rows()
            check("default/configmap/kube-root-ca.crt" in rows, "no kube-root-ca.crt row")
            keys = [k for k, (t, _) in rows.items() if t == "serviceaccounttoken"]
            check(len(keys) == 1 and keys[0].startswith('"default"/"default"/[]string{') and uid in keys[0],
                  f"token rows {keys}")
            return who
        step(s, "service-account volume: token valid for the API server, ca.crt, namespace; rows as KubeEdge's",
             wait_for, "the kube-api-access files", 20, service_account_volume)

        def podpatch_row():
            row = e.row(f"default/podpatch/{pod}")
            check(row, "no podpatch row")
            v = json.loads(row)
            check(v.get("metadata", {}).get("uid") == uid and "status" in v and "spec" not in v,
                  f"podpatch row is not the patch sent: {row[:200]}")
            return f"{len(row)} bytes"
        step(s, "podpatch row holds the patch sent", podpatch_row)

        marker = f"updated-{int(time.time())}"
        t_cm = time.time()
        rc.patch_cm("rc-pod-cm", "greeting", marker)
        vol = os.path.join(e.root_dir, "pods", uid, "volumes", "kubernetes.io~configmap", "cm", "greeting")

        def cm_in_file():
            return open(vol).read() == marker
        step(s, "ConfigMap update reaches the volume file", wait_for, "the new file content", 30, cm_in_file)
        step(s, "the running container reads the new file", wait_for, "the new value in the container output",
             15, lambda: f"file-greeting={marker}" in e.container_log(pod))
        R.ok(s, "ConfigMap update to container", f"{time.time() - t_cm:.1f} s")

        since = time.time()
        kubectl("delete", "pod", pod, "--wait=false")
        step(s, "graceful kubectl delete completes", wait_for, "the pod gone from the API", 60,
             lambda: kget("pod", pod) is None)
        time.sleep(6)  # a late second delete would come within the edge's sync period

        def one_delete():
            dels = rc.audit_events(verb="delete", resource="pods", name=pod, namespace="default", since=since)
            check(len(dels) == 1, f"{len(dels)} deletes by CloudCore: {[d.get('requestReceivedTimestamp') for d in dels]}")
            check(e.log().count(f"pod removed pod=default/{pod}") == 1, "the edge removed the pod more than once")
            return "1 delete"
        step(s, "exactly one upstream delete", one_delete)

        def store_clean():
            rows = e.rows()
            check(f"default/pod/{pod}" not in rows and f"default/podpatch/{pod}" not in rows,
                  "pod or podpatch row left")
            check(not any(t == "serviceaccounttoken" for t, _ in rows.values()), "the pod's token row left")
            left = [c for c in rc.pod_containers(uid) if c["running"]]
            check(not left, f"containers left running: {left}")
        step(s, "store rows and containers gone", wait_for, "cleanup", 20, lambda: store_clean() is None)

        # What the kubelet does beyond volumes and env, through the real API server.
        rc.apply(rc.kubelet_pod(kpod, node))
        step(s, "init container, probe, resources, DNS: pod Running and Ready", wait_for,
             "Running/Ready", 90, lambda: rc.pod_running(kpod))
        k = kget("pod", kpod)

        def kubelet_status():
            st = k["status"]
            init = st["initContainerStatuses"][0]
            check(init["state"].get("terminated", {}).get("reason") == "Completed" and init["ready"],
                  f"init container status {init}")
            check((rc.condition(k, "Initialized") or {}).get("status") == "True", "Initialized not True")
            check(st.get("qosClass") == "Burstable", f"qosClass {st.get('qosClass')}")
            cs = st["containerStatuses"][0]
            check(cs["ready"] and cs["started"], f"{cs}")
            return "init Completed, Initialized, Burstable, ready by its probe"
        step(s, "initContainerStatuses and readiness as the kubelet reports them", kubelet_status)

        def kubelet_view():
            out = e.container_log(kpod)
            for want in ("dns=192.0.2.53", "mem=67108864", "cpu-millis=500"):
                check(want in out, f"{want} not in the container output {out[-300:]!r}")
            check("init-done" in e.container_log(kpod, "init"), "the init container's output")
            return "nameserver, memory limit and CPU limit seen inside"
        step(s, "the container sees its dnsConfig, its memory limit and its CPU limit",
             wait_for, "the container output", 20, kubelet_view)

        def pod_cgroup():
            rel = f"{rc.CGROUP_ROOT.strip('/')}/kubepods/burstable/pod{k['metadata']['uid']}"
            v1 = f"/sys/fs/cgroup/memory/{rel}/memory.limit_in_bytes"
            path = v1 if os.path.exists(v1) else f"/sys/fs/cgroup/{rel}/memory.max"
            got = open(path).read().strip() if os.path.exists(path) else None
            check(got == "67108864", f"pod cgroup memory limit {got!r} at {path}")
            return f"{path} = {got}"
        step(s, "the pod's own cgroup (cgroupRoot/kubepods/burstable/pod<uid>) holds its memory limit",
             pod_cgroup)
    finally:
        teardown(e, [pod, kpod], node)


# ---------------------------------------------------------------------------------------------
def failover():
    s, node, pod = "failover", "rc-fo", "rc-fo-app"
    e = Edge(node)
    watch = rc.NodeWatch(node)
    made = [pod]
    try:
        rc.apply(rc.configmap("rc-fo-cm", "before"))
        rc.lab("vip", "a")
        # An unchanged node status goes up every nodeStatusReportFrequency (5 min by default,
        # the Lease being the heartbeat): 10 s here, so that nodepatches show after each break.
        e.start(kubelet={"nodeStatusReportFrequency": "10s"})
        wait_for("Node Ready", 60, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")
        rc.apply(rc.app_pod(pod, node, cm="rc-fo-cm"))
        wait_for("pod Running", 90, lambda: rc.pod_running(pod))
        wait_for("session on replica a", 30, lambda: rc.lab("replica") == "a")
        watch.start()
        time.sleep(11)  # a session older than the edge's backoff reset (10 s)

        def flowing(label):
            marker = f"{label}-{int(time.time())}"
            t0 = time.time()
            rc.patch_cm("rc-fo-cm", "greeting", marker)
            wait_for(f"{label}: ConfigMap change in the edge store", 60,
                     lambda: rc.stored_data(e, "default/configmap/rc-fo-cm", "greeting") == marker)
            took = time.time() - t0
            renew = rc.lease(node)["spec"]["renewTime"]
            wait_for(f"{label}: Lease renewed", 30, lambda: rc.lease(node)["spec"]["renewTime"] != renew)
            wait_for(f"{label}: a node status patched through the new replica", 45,
                     lambda: rc.audit_events(verb="patch", resource="nodes/status", name=node, since=t0))
            name = f"rc-fo-{label}"
            made.append(name)
            rc.apply(rc.app_pod(name, node, cm="rc-fo-cm"))
            wait_for(f"{label}: a new pod Running (pod status patched)", 90, lambda: rc.pod_running(name))
            return f"cloud change at the edge {took:.1f} s after kubectl; Lease renewed, nodepatch and a new pod's status through the new replica"

        def edge_failover_ms():
            """The edge's own account of the last failover (session lost -> next session)."""
            import re
            found = re.findall(r"connected endpoint=\S+ session=\d+ took_ms=\d+ failover_ms=(\d+)", e.log())
            return f"{found[-1]} ms by the edge's log" if found else "no failover line in the edge's log"

        t0 = time.time()
        rc.lab("vip", "b")
        wait_for("session on replica b", 60, lambda: rc.lab("replica") == "b", interval=0.05)
        R.ok(s, "VIP move a->b: session back on b",
             f"{(time.time() - t0) * 1000:.0f} ms polled, {edge_failover_ms()}")
        step(s, "after the move: changes, Lease, nodepatches and pod status flow", flowing, "moved")

        rc.lab("vip", "auto")
        time.sleep(11)
        pid = None
        for line in open(os.path.join(rc.RUN, "pids")):
            name, p = line.split()
            if name == "cloudcore-b":
                pid = int(p)
        check(pid, "no cloudcore-b pid recorded")
        t0 = time.time()
        os.kill(pid, signal.SIGKILL)
        wait_for("session on replica a", 60, lambda: rc.lab("replica") == "a", interval=0.05)
        R.ok(s, "kill -9 of the replica holding the session: back on a",
             f"{(time.time() - t0) * 1000:.0f} ms polled, {edge_failover_ms()}")
        step(s, "after the kill: changes, Lease, nodepatches and pod status flow", flowing, "killed")
        rc.lab("start-cc", "b")
        watch.stop()

        def never_not_ready():
            check(watch.samples > 10, f"only {watch.samples} samples")
            check(not watch.bad, f"not Ready at {watch.bad}")
            return f"{watch.samples} samples"
        step(s, "node never NotReady", never_not_ready)
        check(e.alive(), "edgecore exited")
    finally:
        watch.stop()
        try:
            rc.lab("vip", "auto")
        finally:
            teardown(e, made, node)


# ---------------------------------------------------------------------------------------------
def offline():
    s, node, pod, late = "offline", "rc-off", "rc-off-app", "rc-off-late"
    e = Edge(node)
    try:
        rc.apply(rc.configmap("rc-off-cm", "online"))
        e.start()
        wait_for("Node Ready", 60, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")
        rc.apply(rc.app_pod(pod, node, cm="rc-off-cm"))
        wait_for("pod Running", 90, lambda: rc.pod_running(pod))
        uid = kget("pod", pod)["metadata"]["uid"]
        rc.lab("vip", "none")
        t_off = time.time()
        wait_for("the edge to notice the cloud is gone", 30, lambda: "session lost" in e.log())

        # Changes in the cloud while the edge is away.
        rc.patch_cm("rc-off-cm", "greeting", "changed-offline")
        rc.apply(rc.app_pod(late, node, cm="rc-off-cm"))

        def keeps_running():
            before = len(e.container_log(pod))
            time.sleep(3)
            check(len(e.container_log(pod)) > before, "the container stopped writing")
            check(any(c["running"] and c["kind"] == "container" for c in rc.pod_containers(uid)),
                  "no running container")
        step(s, "pods keep running with the cloud gone", keeps_running)

        # An edgecore restart while offline: the pod comes back from the store.
        e.stop()
        e.start(with_token=False)

        def back_from_store():
            log = e.log()
            check("stored pods fed to edged pods=1" in log, "the stored pod was not fed to edged")
            check("adopted the running sandbox" in log or "container started" in log, "the pod was not taken up")
            return True
        step(s, "restart offline brings the pod back from the store", wait_for, "the pod taken up", 30, back_from_store)
        step(s, "and it keeps running", keeps_running)
        remaining = 60 - (time.time() - t_off)
        if remaining > 0:
            time.sleep(remaining)
        R.ok(s, "cloud unreachable", f"{time.time() - t_off:.0f} s")

        t_on = time.time()
        rc.lab("vip", "auto")
        step(s, "the change made offline arrives after reconnect", wait_for, "the ConfigMap in the store", 60,
             lambda: rc.stored_data(e, "default/configmap/rc-off-cm", "greeting") == "changed-offline")
        vol = os.path.join(e.root_dir, "pods", uid, "volumes", "kubernetes.io~configmap", "cm", "greeting")
        step(s, "and reaches the running pod's volume", wait_for, "the volume file", 30,
             lambda: open(vol).read() == "changed-offline")
        step(s, "the pod created offline runs after reconnect", wait_for, "the late pod Running", 90,
             lambda: rc.pod_running(late))
        R.ok(s, "reconnect to all caught up", f"{time.time() - t_on:.1f} s")
        step(s, "the first pod is still Running in the API", rc.pod_running, pod)
    finally:
        try:
            rc.lab("vip", "auto")
        finally:
            teardown(e, [pod, late], node)


# ---------------------------------------------------------------------------------------------
def shared_db():
    """One edgecore.db, both agents: KubeEdge's Go edgecore runs a pod, then ours takes over its
    directory (database, certificates, pod volumes and logs) with the cloud up and with it down,
    and the Go agent takes it back each time. The pod keeps running (adopted, not duplicated),
    nothing stored is fetched again, and no row is lost or corrupted."""
    s, node, pod = "shared-db", "rc-share", "rc-share-app"
    go = Edge(node, kind="go")
    ours = Edge(node, kind="rust", fresh=False)
    current = None
    try:
        rc.apply(rc.configmap("rc-share-cm", "from-go"))
        rc.apply(rc.secret("rc-share-secret", "s3cr3t"))
        current = go.start()
        wait_for("Go: Node Ready", 90, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")
        rc.apply(rc.app_pod(pod, node, cm="rc-share-cm", secret="rc-share-secret"))
        wait_for("Go: pod Running", 90, lambda: rc.pod_running(pod))
        uid = kget("pod", pod)["metadata"]["uid"]
        wait_for("Go: the pod's rows stored", 30, lambda: f"default/pod/{pod}" in go.rows())
        time.sleep(3)

        def snapshot(agent):
            rows = agent.rows()
            check(agent.integrity() == "ok", f"integrity_check: {agent.integrity()}")
            return rows

        def running_once(who):
            live = [c for c in rc.pod_containers(uid) if c["running"]]
            sandboxes = [c for c in live if c["kind"] == "sandbox"]
            apps = [c for c in live if c["kind"] == "container"]
            check(len(sandboxes) == 1 and len(apps) == 1,
                  f"{who}: {len(sandboxes)} sandboxes, {len(apps)} app containers running: {live}")
            return apps[0]["id"]

        def kept(before, after, who, as_on_its_own=()):
            lost = [k for k in before if k not in after]
            # Rows of a type the Go agent also drops on its own database (the baseline below)
            # are its behaviour, not a loss the shared database caused.
            own = [k for k in lost if before[k][0] in as_on_its_own]
            lost = [k for k in lost if k not in own]
            check(not lost, f"{who}: rows lost {lost}")
            for k, (t, v) in after.items():
                if t not in ("podpatch", "nodepatch"):
                    try:
                        json.loads(v)
                    except ValueError:
                        raise Failed(f"{who}: row {k} is not JSON")
            return f"{len(before)} -> {len(after)} rows" + (
                f" ({len(own)} {sorted(as_on_its_own)} row dropped as on its own database)" if own else "")

        go_rows = snapshot(go)
        go_container = running_once("Go")
        R.ok(s, "Go edgecore runs the pod", f"{len(go_rows)} rows, container {go_container[:12]}")
        go.stop()

        # Baseline: the Go agent restarted offline on its own database. Its kubelet tears the
        # pod's volumes down at start-up and remounts them; tearing down the projected volume
        # deletes the pod's serviceaccounttoken rows (KubeEdge's DeleteServiceAccountToken),
        # which it cannot fetch again while offline.
        rc.lab("vip", "none")
        current = go.start(with_token=False)
        wait_for("Go offline on its own database: the pod", 90, lambda: running_once("Go offline, own"))
        time.sleep(3)
        own_rows = snapshot(go)
        go.stop()
        go_drops = {go_rows[k][0] for k in go_rows if k not in own_rows}
        R.ok(s, "baseline: Go offline on its own database",
             f"{len(go_rows)} -> {len(own_rows)} rows, drops {sorted(go_drops) or 'nothing'}")
        rc.lab("vip", "auto")
        current = go.start(with_token=False)
        wait_for("Go online again: its rows back", 90,
                 lambda: rc.pod_running(pod) and set(go_rows) <= set(go.rows()))
        go_rows = snapshot(go)
        go.stop()

        # Ours on the Go agent's database, cloud up.
        since = time.time()
        current = ours.start(with_token=False)
        step(s, "ours: session on the Go agent's certificate", wait_for, "a session", 30, lambda: "connected" in ours.log())
        step(s, "ours: pod taken over (adopted, still one copy)", wait_for, "adoption", 60,
             lambda: "adopted the running sandbox" in ours.log() and running_once("ours"))
        step(s, "ours: pod Running and node Ready", wait_for, "Running", 60,
             lambda: rc.pod_running(pod) and (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")

        def nothing_fetched_again():
            queries = [l for l in ours.log().splitlines() if "request to the cloud operation=query" in l
                       and ("/configmap/" in l or "/secret/" in l)]
            check(not queries, f"stored objects fetched again: {queries}")
        step(s, "ours: stored ConfigMap and Secret not fetched again", nothing_fetched_again)
        rows = snapshot(ours)
        step(s, "ours: no row lost or corrupted", kept, go_rows, rows, "ours")
        ours.stop()

        # The Go agent back on the database ours wrote, cloud up.
        current = go.start(with_token=False)
        step(s, "Go: back on our database, pod Running", wait_for, "Running", 90,
             lambda: rc.pod_running(pod) and running_once("Go again"))
        rows2 = snapshot(go)
        step(s, "Go: no row lost or corrupted", kept, rows, rows2, "Go")
        go.stop()

        # Cloud down: ours starts offline on the Go agent's database.
        rc.lab("vip", "none")
        current = ours.start(with_token=False)
        step(s, "ours offline: pod taken over from the store", wait_for, "the pod", 60,
             lambda: "stored pods fed to edged pods=1" in ours.log() and running_once("ours offline"))
        rows3 = snapshot(ours)
        step(s, "ours offline: no row lost or corrupted", kept, rows2, rows3, "ours offline")
        ours.stop()
        current = go.start(with_token=False)
        step(s, "Go offline: back on our database, pod running", wait_for, "the pod", 90,
             lambda: running_once("Go offline"))
        rows4 = snapshot(go)
        step(s, "Go offline: no row lost or corrupted (beyond what it drops on its own database)",
             kept, rows3, rows4, "Go offline", go_drops)
        rc.lab("vip", "auto")
        step(s, "Go: reconnects and the pod is Running", wait_for, "Running", 90, lambda: rc.pod_running(pod))
        go.stop()
        current = ours.start(with_token=False)
        step(s, "ours: final takeover, pod Running", wait_for, "Running", 90,
             lambda: "adopted the running sandbox" in ours.log() and rc.pod_running(pod) and running_once("ours final"))

        # The reverse with a pod ours started: the Go agent takes it over from our database.
        kubectl("delete", "pod", pod, "--wait=false")
        wait_for("the Go-made pod deleted through ours", 60, lambda: kget("pod", pod) is None)
        rc.apply(rc.app_pod(pod, node, cm="rc-share-cm", secret="rc-share-secret"))
        wait_for("ours: new pod Running", 90, lambda: rc.pod_running(pod))
        uid = kget("pod", pod)["metadata"]["uid"]
        mine = running_once("ours, new pod")
        rows5 = snapshot(ours)
        ours.stop()
        current = go.start(with_token=False)

        def go_takes_ours():
            app = running_once("Go on our pod")
            return rc.pod_running(pod) and f"container {app[:12]} ({'same' if app == mine else 'recreated once'})"
        step(s, "Go: takes over a pod ours started (one copy)", wait_for, "Running", 90, go_takes_ours)
        time.sleep(5)
        step(s, "Go: still one copy a little later", running_once, "Go later")
        step(s, "Go: no row lost or corrupted", kept, rows5, snapshot(go), "Go on ours")
    finally:
        try:
            rc.lab("vip", "auto")
        finally:
            if current is go and go.alive():
                go.stop()
                current = ours.start(with_token=False)
            teardown(current, [pod], node)


# ---------------------------------------------------------------------------------------------
def compare():
    """KubeEdge's Go edgecore and ours on the same pod, one after the other: what each stores
    (row keys and types) and what each makes CloudCore write (pod and node status patches, Lease
    writes, deletes, from the audit log). Prints the differences, keeps them in
    $REALCLOUD_ROOT/run/results/compare.json, and checks the store shape and the deletes."""
    s = "compare"
    seen = {}
    rc.apply(rc.configmap("rc-cmp-cm", "hello"))
    rc.apply(rc.secret("rc-cmp-secret", "s3cr3t"))
    for kind in ("go", "rust"):
        node, pod = f"rc-cmp-{kind}", f"rc-cmp-{kind}-app"
        e = Edge(node, kind=kind)
        try:
            since = time.time()
            e.start()
            wait_for(f"{kind}: Node Ready", 90, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")
            rc.apply(rc.app_pod(pod, node, cm="rc-cmp-cm", secret="rc-cmp-secret"))
            wait_for(f"{kind}: pod Running", 90, lambda: rc.pod_running(pod))
            uid = kget("pod", pod)["metadata"]["uid"]
            time.sleep(25)  # two Lease renewals and a few status computations
            rows = e.rows()
            window = time.time() - since
            kubectl("delete", "pod", pod, "--wait=false")
            wait_for(f"{kind}: pod gone", 60, lambda: kget("pod", pod) is None)
            time.sleep(6)

            def norm(k):
                return k.replace(uid, "<uid>").replace(pod, "<pod>").replace(node, "<node>")
            ev = lambda **kw: rc.audit_events(since=since, **kw)
            pod_patches = [x["requestObject"] for x in ev(verb="patch", resource="pods/status", name=pod)]
            seen[kind] = {
                "rows": sorted(f"{t} {norm(k)}" for k, (t, _) in rows.items()),
                "window_s": round(window),
                "node_status_patches": len(ev(verb="patch", resource="nodes/status", name=node)),
                "lease_creates": len(ev(verb="create", resource="leases", name=node)),
                "lease_updates": len(ev(verb="update", resource="leases", name=node)),
                "pod_status_patches": len(pod_patches),
                "pod_deletes": len(ev(verb="delete", resource="pods", name=pod)),
                "first_pod_patch": pod_patches[0] if pod_patches else None,
                "running_pod_patch": next((p for p in pod_patches if '"running"' in json.dumps(p)), None),
                "node_create": next((x["requestObject"] for x in ev(verb="create", resource="nodes", name=node)), None),
                "lease_create": next((x["requestObject"] for x in ev(verb="create", resource="leases", name=node)), None),
            }
        finally:
            teardown(e, [pod], node)
    go, ours = seen["go"], seen["rust"]
    os.makedirs(os.path.join(rc.RUN, "results"), exist_ok=True)
    with open(os.path.join(rc.RUN, "results", "compare.json"), "w") as f:
        json.dump(seen, f, indent=1, sort_keys=True)

    def shape(patch):
        """status keys, then per condition type the keys it carries."""
        if not patch:
            return None
        st = patch.get("status", {})
        conds = {c.get("type"): sorted(k for k in c if k != "type") for c in st.get("conditions", [])}
        cs = st.get("containerStatuses", [{}])
        return {"status": sorted(st), "conditions": conds, "containerStatus": sorted(cs[0]) if cs else []}

    print("    store rows, Go only:   ", sorted(set(go["rows"]) - set(ours["rows"])), flush=True)
    print("    store rows, ours only: ", sorted(set(ours["rows"]) - set(go["rows"])), flush=True)
    for k in ("window_s", "node_status_patches", "lease_creates", "lease_updates", "pod_status_patches", "pod_deletes"):
        print(f"    {k:22s} Go {go[k]:>4}   ours {ours[k]:>4}", flush=True)
    print("    Running pod patch, Go:  ", json.dumps(shape(go["running_pod_patch"])), flush=True)
    print("    Running pod patch, ours:", json.dumps(shape(ours["running_pod_patch"])), flush=True)

    def same_rows():
        only_go = sorted(set(go["rows"]) - set(ours["rows"]))
        only_ours = sorted(set(ours["rows"]) - set(go["rows"]))
        check(not only_go and not only_ours, f"Go only {only_go}; ours only {only_ours}")
        return f"{len(go['rows'])} row kinds"
    step(s, "same store rows (keys and types) as KubeEdge's agent", same_rows)

    def deletes():
        check(go["pod_deletes"] == 1 and ours["pod_deletes"] == 1, f"Go {go['pod_deletes']}, ours {ours['pod_deletes']}")
    step(s, "one pod delete each", deletes)

    def lease_like():
        for who, d in (("Go", go), ("ours", ours)):
            lc = d["lease_create"]
            check(lc and lc["spec"]["holderIdentity"] and lc["spec"]["leaseDurationSeconds"] == 40, f"{who}: {lc}")
            check(d["lease_updates"] >= 2, f"{who}: {d['lease_updates']} renewals in {d['window_s']} s")
    step(s, "both create the Lease and renew it every 10 s", lease_like)

    def conditions_like():
        g, o = shape(go["running_pod_patch"]), shape(ours["running_pod_patch"])
        check(g and o, "a Running patch is missing")
        for t, keys in g["conditions"].items():
            check(t in o["conditions"], f"ours lacks condition {t}")
            if "reason" in keys:
                check("reason" in o["conditions"][t], f"{t}: Go sets reason (null), ours does not")
    step(s, "the Running patch names the conditions KubeEdge's does, clearing reasons the same way", conditions_like)


# ---------------------------------------------------------------------------------------------
def bench_pod(name, node, group):
    """The smallest pod a user runs: one container that sleeps (hostNetwork, local image)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"bench": group}},
            "spec": {"nodeName": node, "hostNetwork": True, "terminationGracePeriodSeconds": 1,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "app", "image": rc.APP_IMAGE, "imagePullPolicy": "Never",
                                     "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}]}}


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def podbench():
    """Time from `kubectl apply` of N pods at once to each Running and Ready, for our edgecore
    and KubeEdge's, and the agent's RSS with the N pods running (PODBENCH_COUNTS, default
    1,10,50). A benchmark: prints numbers, fails only when pods do not come up."""
    s = "podbench"
    counts = [int(x) for x in os.environ.get("PODBENCH_COUNTS", "1,10,50").split(",")]
    for kind in ("rust", "go"):
        node = f"rc-bench-{kind}"
        e = Edge(node, kind=kind)
        try:
            e.start()
            wait_for("Node Ready", 90, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")
            time.sleep(3)
            for n in counts:
                group = f"{kind}-{n}"
                items = [bench_pod(f"bench-{group}-{i}", node, group) for i in range(n)]
                t0 = time.time()
                kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
                running, ready = {}, {}
                deadline = t0 + 60 + 6 * n
                while len(ready) < n:
                    if time.time() > deadline:
                        raise Failed(f"{kind}: {len(running)} of {n} Running, {len(ready)} Ready after {deadline - t0:.0f} s")
                    out = kubectl("get", "pods", "-l", f"bench={group}", "-o", "json")
                    at = time.time() - t0
                    for p in json.loads(out)["items"]:
                        name = p["metadata"]["name"]
                        if p.get("status", {}).get("phase") == "Running":
                            running.setdefault(name, at)
                        if (rc.condition(p, "Ready") or {}).get("status") == "True":
                            ready.setdefault(name, at)
                    time.sleep(0.2)
                rss = vm_rss_kb(e.proc.pid)
                r, d = sorted(running.values()), sorted(ready.values())
                R.ok(s, f"{kind} edgecore, {n} pods",
                     f"Running: median {r[len(r) // 2]:.1f} s, last {r[-1]:.1f} s; Ready: median {d[len(d) // 2]:.1f} s, "
                     f"last {d[-1]:.1f} s; agent VmRSS {rss / 1024:.1f} MiB")
                kubectl("delete", "pods", "-l", f"bench={group}", "--wait=false")
                wait_for("the bench pods gone", 120 + 2 * n,
                         lambda: not json.loads(kubectl("get", "pods", "-l", f"bench={group}", "-o", "json"))["items"])
        finally:
            kubectl("delete", "pods", "-l", "bench", "--force", "--grace-period=0", check_rc=False)
            teardown(e, [], node)


# ---------------------------------------------------------------------------------------------
def metaserver():
    """MetaServer with real clients: kubectl, and the official Python client's list-then-watch
    loop (as a reflector: watches that end after 5 s, each resumed from the last
    resourceVersion), across a VIP move and an offline period."""
    import threading

    from kubernetes import client, watch
    from kubernetes.client.rest import ApiException

    s, node, pod, cm = "metaserver", "rc-ms", "rc-ms-app", "rc-ms-cm"
    port = 10560
    server = f"http://127.0.0.1:{port}"
    e = Edge(node)
    stop = threading.Event()
    seen, errors, calls = [], [], {"list": 0, "watch": 0}
    thread = None
    try:
        rc.apply(rc.configmap(cm, "v0"))
        e.start(meta_server={"enable": True, "server": f"127.0.0.1:{port}"})
        wait_for("Node Ready", 60, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")
        rc.apply(rc.app_pod(pod, node, cm=cm))
        wait_for("pod Running", 90, lambda: rc.pod_running(pod))

        def local(*args):
            # The lab's kubeconfig is for kube-apiserver: none for MetaServer.
            return rc.run("kubectl", "--kubeconfig", "/dev/null", "--server", server, *args).stdout

        def kubectl_reads():
            pods = json.loads(local("get", "pods", "-A", "-o", "json"))
            mine = [p for p in pods["items"] if p["metadata"]["name"] == pod]
            check(mine and mine[0]["status"].get("phase") == "Running", f"{pod} not Running in MetaServer's list")
            got = local("get", "configmap", cm, "-o", "jsonpath={.data.greeting}")
            check(got == "v0", f"configmap greeting {got!r}")
            table = local("get", "pods", "-n", "default", "--field-selector", f"spec.nodeName={node}")
            check(pod in table, f"kubectl's table: {table!r}")
            return f"{len(pods['items'])} pods listed; get, jsonpath, field selector, table"
        step(s, "kubectl get/list through MetaServer", wait_for, "the pod in MetaServer", 30, kubectl_reads)

        written = "rc-ms-written"

        def writes():
            # kubectl against MetaServer; the result is read from kube-apiserver itself.
            local("create", "configmap", written, "--from-literal=k=v1")
            got = (kget("configmap", written) or {}).get("data", {})
            check(got == {"k": "v1"}, f"created configmap in kube-apiserver: {got}")
            local("patch", "configmap", written, "--type=merge", "-p", '{"data":{"k":"v2"}}')
            got = (kget("configmap", written) or {}).get("data", {})
            check(got == {"k": "v2"}, f"patched configmap in kube-apiserver: {got}")
            dup = rc.run("kubectl", "--kubeconfig", "/dev/null", "--server", server, "create",
                         "configmap", written, check_rc=False)
            check(dup.returncode != 0 and "already exists" in dup.stderr, f"second create: {dup.stderr!r}")
            local("delete", "configmap", written)
            check(kget("configmap", written) is None, "deleted configmap still in kube-apiserver")
            return "create, patch, a second create (already exists) and delete answered by kube-apiserver"
        step(s, "kubectl writes through MetaServer reach kube-apiserver", writes)

        def not_held():
            raw = json.loads(local("get", "--raw", "/api/v1/namespaces"))
            names = [n["metadata"]["name"] for n in raw.get("items", [])]
            check(raw.get("kind") == "NamespaceList" and "default" in names, f"namespaces: {raw.get('kind')} {names}")
            one = json.loads(local("get", "--raw", "/api/v1/namespaces/kube-system"))
            check(one.get("kind") == "Namespace", f"get namespace: {one.get('kind')}")
            return f"{len(names)} namespaces listed by the cloud"
        step(s, "a resource the edge does not hold is answered by the cloud", not_held)

        # A Deployment (no controller-manager here: it stays an object) watched through
        # MetaServer: the watch registers a dynamicController listener for the node.
        deploy = "rc-ms-deploy"
        rc.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": deploy, "namespace": "default", "annotations": {"v": "1"}},
                  "spec": {"replicas": 0, "selector": {"matchLabels": {"app": deploy}},
                           "template": {"metadata": {"labels": {"app": deploy}},
                                        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
        dcfg = client.Configuration()
        dcfg.host = server
        apps = client.AppsV1Api(client.ApiClient(dcfg))
        deployed = apps.list_namespaced_deployment("default")
        check(any(d.metadata.name == deploy for d in deployed.items), "the Deployment in the cloud's list")

        def watch_deployments():
            rv = deployed.metadata.resource_version
            while not stop.is_set():
                try:
                    for ev in watch.Watch().stream(apps.list_namespaced_deployment, "default",
                                                   resource_version=rv, timeout_seconds=300):
                        o = ev["object"]
                        rv = o.metadata.resource_version
                        if o.metadata.name == deploy:
                            d_seen.append((ev["type"], (o.metadata.annotations or {}).get("v")))
                except Exception as x:  # noqa: BLE001 - reported by the steps
                    d_errors.append(repr(x))
                    return
        d_seen, d_errors = [], []
        d_thread = threading.Thread(target=watch_deployments, daemon=True)
        d_thread.start()

        def deployment_change(v, within=60):
            kubectl("annotate", "deployment", deploy, f"v={v}", "--overwrite")
            try:
                # ADDED when the change raced the listener's registration: its first dump of
                # the current objects then carries it (client-go takes it as an update).
                wait_for(f"the Deployment watch to see v={v}", within,
                         lambda: ("MODIFIED", v) in d_seen or ("ADDED", v) in d_seen)
            except Failed as x:
                raise Failed(f"{x}; events {d_seen}, errors {d_errors}") from None
            return f"seen through the node's listener ({len(d_seen)} events)"
        step(s, "a watch of what the edge does not hold (Deployments) through dynamicController",
             deployment_change, "2")

        cfg = client.Configuration()
        cfg.host = server
        api = client.CoreV1Api(client.ApiClient(cfg))
        listed = api.list_namespaced_config_map("default")
        calls["list"] += 1
        start_rv = listed.metadata.resource_version

        def reflect():
            rv = start_rv
            while not stop.is_set():
                calls["watch"] += 1
                try:
                    for ev in watch.Watch().stream(api.list_namespaced_config_map, "default",
                                                   resource_version=rv, timeout_seconds=5):
                        o = ev["object"]
                        rv = o.metadata.resource_version
                        if o.metadata.name == cm:
                            seen.append((ev["type"], (o.data or {}).get("greeting")))
                except ApiException as x:
                    errors.append(x.status)
                    return
                except Exception as x:  # the connection itself
                    errors.append(repr(x))
                    return
        thread = threading.Thread(target=reflect, daemon=True)
        thread.start()

        def arrives(value, within=60):
            rc.patch_cm(cm, "greeting", value)
            try:
                wait_for(f"the watch to see {value}", within, lambda: ("MODIFIED", value) in seen)
            except Failed as x:
                stored = rc.stored_data(e, f"default/configmap/{cm}", "greeting")
                raise Failed(f"{x}; events {seen}, errors {errors}, watches {calls['watch']}, "
                             f"edge store has {stored!r}") from None
            return f"seen after {calls['watch']} watch requests"
        step(s, "a cloud change reaches the Python client's watch", arrives, "p1")
        rc.lab("vip", "b")
        wait_for("session on replica b", 60, lambda: rc.lab("replica") == "b")
        step(s, "after a VIP move", arrives, "p2")

        def write_on_b():
            local("create", "configmap", "rc-ms-written", "--from-literal=k=b")
            got = (kget("configmap", "rc-ms-written") or {}).get("data", {})
            check(got == {"k": "b"}, f"created on replica b: {got}")
            local("delete", "configmap", "rc-ms-written")
            return "create and delete answered through replica b's dynamicController"
        step(s, "a write after the VIP move", write_on_b)
        def deployment_after_move():
            detail = deployment_change("3")
            check("watch applications synced with the cloud" in e.log(), "no watchapp/sync in the edge's log")
            return detail + "; watchapp/sync sent to b"
        step(s, "the Deployment watch after the VIP move (listener registered again on b)",
             deployment_after_move)

        rc.lab("vip", "none")
        wait_for("the edge to notice the cloud is gone", 30, lambda: "session lost" in e.log())
        rc.patch_cm(cm, "greeting", "p3")
        watches = calls["watch"]

        def serves_offline():
            got = local("get", "configmap", cm, "-o", "jsonpath={.data.greeting}")
            check(got == "p2", f"offline read {got!r}")
            w = rc.run("kubectl", "--kubeconfig", "/dev/null", "--server", server, "create",
                       "configmap", "rc-ms-offline", check_rc=False)
            check(w.returncode != 0 and "not connected to CloudCore" in w.stderr, f"offline write: {w.stderr!r}")
            time.sleep(11)
            check(calls["watch"] >= watches + 2, f"watches {watches} -> {calls['watch']}")
            check(not errors, f"watch errors {errors}")
            return f"reads answered, a write refused with 503, watches resumed ({calls['watch'] - watches} while offline)"
        step(s, "offline: MetaServer answers reads, refuses writes, and the watch keeps resuming", serves_offline)
        rc.lab("vip", "auto")
        step(s, "the change made offline reaches the watch after reconnect", wait_for,
             "p3 in the watch", 90, lambda: ("MODIFIED", "p3") in seen)

        def no_relist():
            check(calls["list"] == 1 and not errors, f"lists {calls['list']}, errors {errors}")
            values = [v for t, v in seen if t == "MODIFIED"]
            check(values == ["p1", "p2", "p3"], f"changes seen {values}")
            return f"1 list, {calls['watch']} watches, each change seen once"
        step(s, "one list, every change once, no 410", no_relist)
        check(e.alive(), "edgecore exited")
    finally:
        stop.set()
        try:
            rc.lab("vip", "auto")
        finally:
            if thread:
                thread.join(timeout=10)
            kubectl("delete", "configmap", "rc-ms-written", "rc-ms-offline", "--ignore-not-found", check_rc=False)
            kubectl("delete", "deployment", "rc-ms-deploy", "--ignore-not-found", check_rc=False)
            teardown(e, [pod], node)


def meta_v2():
    """KubeEdge's `meta_v2` table shared both ways: the rows ours writes are what KubeEdge's
    MetaServer serves offline, and the rows KubeEdge's writes are what ours serves offline."""
    import sqlite3
    import urllib.error
    import urllib.request

    s, node, pod = "meta-v2", "rc-v2", "rc-v2-app"
    port = 10562
    ms = {"enable": True, "server": f"127.0.0.1:{port}"}
    ours = Edge(node)
    go = Edge(node, kind="go", fresh=False)
    current = None

    def v2_row(agent, key):
        c = sqlite3.connect(f"file:{agent.db}?mode=ro", uri=True, timeout=5)
        try:
            r = c.execute("select group_version_resource, resource_version, value from meta_v2 where key = ?",
                          (key,)).fetchone()
        finally:
            c.close()
        return r

    def get(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError) as e:
            raise Failed(f"MetaServer on :{port}: {e}")

    try:
        current = ours.start(meta_server=ms)
        wait_for("Node Ready", 60, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")
        rc.apply(rc.app_pod(pod, node))
        wait_for("pod Running", 90, lambda: rc.pod_running(pod))
        key = f"/core/v1/pods/default/{pod}"

        def written():
            r = v2_row(ours, key)
            check(r is not None, f"no meta_v2 row {key}")
            gvr, rv, value = r
            obj = json.loads(value)
            check(gvr == "/v1, Resource=pods" and obj.get("kind") == "Pod", f"row {gvr!r} kind {obj.get('kind')!r}")
            check(str(rv) == obj["metadata"]["resourceVersion"], f"resource_version {rv} vs {obj['metadata']['resourceVersion']}")
            return f"{key}: {gvr}, resource_version {rv}"
        step(s, "ours writes the pod's meta_v2 row (v1.23 columns)", wait_for, "the meta_v2 row", 30, written)
        rv = v2_row(ours, key)[1]
        ours.stop()

        rc.lab("vip", "none")
        current = go.start(with_token=False, meta_server=ms)

        def go_serves_ours():
            code, body = get(f"/api/v1/namespaces/default/pods/{pod}")
            check(code == 200, f"KubeEdge's MetaServer answered {code}: {str(body)[:200]}")
            check(body["metadata"]["resourceVersion"] == str(rv), f"rv {body['metadata']['resourceVersion']} vs {rv}")
            return f"KubeEdge's MetaServer, offline, serves our row (rv {rv})"
        step(s, "KubeEdge's edgecore reads ours back", wait_for, "KubeEdge's MetaServer", 60, go_serves_ours)

        rc.lab("vip", "auto")
        ns_key = "/core/v1/namespaces/null/kube-system"

        def go_writes():
            code, body = get("/api/v1/namespaces/kube-system")
            check(code == 200 and body.get("kind") == "Namespace", f"KubeEdge's get through the cloud: {code}")
            check(v2_row(go, ns_key) is not None, f"KubeEdge stored no {ns_key}")
            return f"KubeEdge stored {ns_key} from the cloud"
        step(s, "KubeEdge's MetaServer stores a namespace it got from the cloud", wait_for,
             "KubeEdge online", 90, go_writes)
        go.stop()

        rc.lab("vip", "none")
        current = ours.start(with_token=False, meta_server=ms)

        def ours_serves_go():
            code, body = get("/api/v1/namespaces/kube-system")
            check(code == 200 and isinstance(body, dict) and body.get("metadata", {}).get("name") == "kube-system",
                  f"ours answered {code}: {str(body)[:200]}")
            return "ours, offline, serves KubeEdge's row"
        step(s, "ours reads KubeEdge's meta_v2 row offline", wait_for, "our MetaServer", 60, ours_serves_go)
        check(current.alive(), "edgecore exited")
    finally:
        try:
            rc.lab("vip", "auto")
        finally:
            teardown(current, [pod], node)


def metaserver_auth():
    """MetaServer with `requireAuthorization`: HTTPS with a kubelet-serving certificate
    requested through the cloud (this test approves and signs it, as kube-controller-manager
    and an approver would), service-account tokens checked at the edge, RBAC from the cluster."""
    import base64
    import ssl
    import subprocess
    import tempfile
    import urllib.error
    import urllib.request

    s, node, pod = "metaserver-auth", "rc-msa", "rc-msa-app"
    port, dummy = 10563, "127.0.0.22"
    certs = os.path.join(rc.RUN, "certs")
    e = Edge(node)
    sa, role = "rc-msa-reader", "rc-msa-pod-reader"
    try:
        kubectl("create", "serviceaccount", sa, check_rc=False)
        kubectl("create", "role", role, "--verb=get,list,watch", "--resource=pods", check_rc=False)
        kubectl("create", "rolebinding", role, f"--role={role}", f"--serviceaccount=default:{sa}", check_rc=False)
        issuer = "https://kubernetes.default.svc.cluster.local"
        e.start(meta_server={"enable": True, "server": f"127.0.0.1:{port}", "dummyServer": f"{dummy}:{port}",
                             "serviceAccountKeyFiles": [os.path.join(certs, "sa.pub")],
                             "serviceAccountIssuers": [issuer], "apiAudiences": [issuer],
                             "certificatesDir": os.path.join(e.dir, "pki-metaserver")},
                feature_gates={"requireAuthorization": True})
        wait_for("Node Ready", 60, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")

        def pending_csr():
            for c in json.loads(kubectl("get", "csr", "-o", "json"))["items"]:
                if c["spec"].get("signerName") == "kubernetes.io/kubelet-serving" and not c.get("status", {}).get("certificate"):
                    req = base64.b64decode(c["spec"]["request"]).decode()
                    subj = subprocess.run(["openssl", "req", "-noout", "-subject"], input=req,
                                          capture_output=True, text=True).stdout
                    if f"system:node:{node}" in subj:
                        return c
            return None
        csr = wait_for("the serving certificate request", 60, pending_csr)
        name = csr["metadata"]["name"]

        def sign():
            kubectl("certificate", "approve", name)
            with tempfile.TemporaryDirectory() as d:
                open(os.path.join(d, "csr.pem"), "w").write(base64.b64decode(csr["spec"]["request"]).decode())
                open(os.path.join(d, "ext"), "w").write("extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
                rc.run("openssl", "x509", "-req", "-in", os.path.join(d, "csr.pem"), "-CA", os.path.join(certs, "ca.crt"),
                       "-CAkey", os.path.join(certs, "ca.key"), "-CAcreateserial", "-days", "2",
                       "-copy_extensions", "copy", "-extfile", os.path.join(d, "ext"), "-out", os.path.join(d, "crt.pem"))
                obj = json.loads(kubectl("get", "csr", name, "-o", "json"))
                obj["status"]["certificate"] = base64.b64encode(open(os.path.join(d, "crt.pem"), "rb").read()).decode()
                kubectl("replace", "--raw", f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}/status",
                        "-f", "-", input=json.dumps(obj))
            wait_for("MetaServer on HTTPS", 60, lambda: "metaserver listening (HTTPS" in e.log())
            return f"{name} approved and signed; MetaServer serves HTTPS"
        step(s, "a kubelet-serving certificate through the cloud", sign)

        ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))

        def call(path, token=None, host="127.0.0.1"):
            req = urllib.request.Request(f"https://{host}:{port}{path}")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as x:
                return x.code, json.loads(x.read() or b"null")

        token = kubectl("create", "token", sa, "--audience", issuer).strip()

        def authz():
            got = {
                "discovery, anonymous": call("/api/v1")[0],
                "pods, anonymous": call("/api/v1/namespaces/default/pods")[0],
                "pods, the reader": call("/api/v1/namespaces/default/pods", token)[0],
                "pods elsewhere, the reader": call("/api/v1/namespaces/kube-system/pods", token)[0],
                "secrets, the reader": call("/api/v1/namespaces/default/secrets", token)[0],
                "pods, a forged token": call("/api/v1/namespaces/default/pods", token[:-4] + "AAAA")[0],
                "pods on dummyServer, the reader": call("/api/v1/namespaces/default/pods", token, dummy)[0],
            }
            want = {"discovery, anonymous": 200, "pods, anonymous": 403, "pods, the reader": 200,
                    "pods elsewhere, the reader": 403, "secrets, the reader": 403,
                    "pods, a forged token": 401, "pods on dummyServer, the reader": 200}
            check(got == want, f"answers {got}")
            return ", ".join(f"{k} {v}" for k, v in got.items())
        step(s, "tokens checked, RBAC from the cluster (certificate verified against the cluster CA)", authz)

        def with_kubectl():
            out = rc.run("kubectl", "--kubeconfig", "/dev/null", "--server", f"https://127.0.0.1:{port}",
                         "--certificate-authority", os.path.join(certs, "ca.crt"), "--token", token,
                         "get", "pods", "-n", "default", "-o", "name").stdout
            denied = rc.run("kubectl", "--kubeconfig", "/dev/null", "--server", f"https://127.0.0.1:{port}",
                            "--certificate-authority", os.path.join(certs, "ca.crt"), "--token", token,
                            "get", "secrets", "-n", "default", check_rc=False)
            check(denied.returncode != 0 and "forbidden" in denied.stderr, f"secrets: {denied.stderr!r}")
            return f"kubectl --token lists pods ({len(out.split())}), is forbidden secrets"
        step(s, "kubectl over HTTPS with a service-account token", with_kubectl)

        # A pod's own (bound) token: good while the pod is on the node, refused once it is gone.
        import glob
        rc.apply(rc.app_pod(pod, node))
        wait_for("pod Running", 90, lambda: rc.pod_running(pod))
        uid = kget("pod", pod)["metadata"]["uid"]
        pod_token = wait_for("the pod's projected token", 30, lambda: next(iter(glob.glob(
            os.path.join(e.root_dir, "pods", uid, "volumes", "kubernetes.io~projected", "*", "token"))), None))
        pod_token = open(pod_token).read().strip()

        def bound_token():
            alive = call("/api/v1/namespaces/default/pods", pod_token)[0]
            check(alive == 403, f"the live pod's token (default SA, no role): {alive}")
            kubectl("delete", "pod", pod, "--wait=false")
            wait_for("the pod gone from the edge", 90, lambda: not e.row(f"default/pod/{pod}"))
            gone = call("/api/v1/namespaces/default/pods", pod_token)
            check(gone[0] == 401, f"the deleted pod's token: {gone}")
            return "authenticated (403 by RBAC) while the pod runs, 401 once it is deleted"
        step(s, "a pod-bound token lives as long as its pod", bound_token)
        check(e.alive(), "edgecore exited")
    finally:
        kubectl("delete", "rolebinding", role, "--ignore-not-found", check_rc=False)
        kubectl("delete", "role", role, "--ignore-not-found", check_rc=False)
        kubectl("delete", "serviceaccount", sa, "--ignore-not-found", check_rc=False)
        teardown(e, [pod], node)


def edgestream():
    """EdgeStream: `kubectl logs` through the real kube-apiserver and CloudCore's cloudStream
    (the VIP's stream port, the tunnel our edge dialled): plain, --tail, -f while the container
    writes; exec with a command and with stdin, attach; port-forward (which CloudCore does not
    route); then logs and exec again after a VIP move."""
    s, node, pod, crashing, web_pod = "edgestream", "rc-es", "rc-es-app", "rc-es-restarts", "rc-es-web"
    e = Edge(node)
    try:
        e.start(edge_stream=True)
        wait_for("Node Ready", 60, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")
        wait_for("the tunnel", 60, lambda: "edgestream tunnel up" in e.log())
        rc.apply(rc.app_pod(pod, node))
        wait_for("pod Running", 90, lambda: rc.pod_running(pod))

        def logs(*args, timeout=30):
            p = rc.run("kubectl", "--kubeconfig", rc.KUBECONFIG, "logs", pod, *args, check_rc=False, timeout=timeout)
            print(f"    kubectl logs {pod} {' '.join(args)} -> exit {p.returncode}, {len(p.stdout)} bytes", flush=True)
            check(p.returncode == 0, f"kubectl logs {' '.join(args)}: {p.stderr.strip()}")
            return p.stdout

        def plain():
            # cloudStream serves a tunnel that came before the Node once its retry (every 20 s)
            # finds the Node; until then the stream port answers 500 (no session).
            out = wait_for("the pod's first lines", 90, lambda: "sa-token-bytes=" in logs() and logs(), interval=2)
            check("file-greeting=" in out, f"logs: {out[:200]!r}")
            tail = logs("--tail=2").strip().splitlines()
            check(len(tail) == 2, f"--tail=2 gave {tail}")
            return f"{len(out.splitlines())} lines; --tail=2 gave 2"
        step(s, "kubectl logs through cloudStream", plain)

        def follow():
            before = len(logs().splitlines())
            p = subprocess.Popen(["kubectl", "--kubeconfig", rc.KUBECONFIG, "logs", "-f", pod],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                lines = []
                deadline = time.time() + 20
                while time.time() < deadline and len(lines) < before + 3:
                    line = p.stdout.readline()
                    if not line:
                        break
                    lines.append(line)
                print(f"    kubectl logs -f {pod} -> {len(lines)} lines", flush=True)
                check(len(lines) >= before + 3, f"-f gave {len(lines)} lines, {before} were there")
            finally:
                p.kill()
                p.wait(timeout=10)
            return f"-f streamed {len(lines) - before}+ new lines as the container wrote them"
        step(s, "kubectl logs -f while the container writes", follow)

        def previous():
            rc.apply(rc.app_pod(crashing, node,
                                script='read up _ < /proc/uptime; echo "run at $up"; sleep 2; exit 1'))
            wait_for("a restart", 90, lambda: ((kget("pod", crashing) or {}).get("status", {})
                                               .get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 1)
            p = rc.run("kubectl", "--kubeconfig", rc.KUBECONFIG, "logs", crashing, "--previous",
                       check_rc=False, timeout=30)
            print(f"    kubectl logs {crashing} --previous -> exit {p.returncode}, {len(p.stdout)} bytes", flush=True)
            check(p.returncode == 0 and p.stdout.startswith("run at "),
                  f"--previous: exit {p.returncode}, {p.stdout!r}, {p.stderr.strip()!r}")
            return f"the run before the restart: {p.stdout.strip()!r}"
        step(s, "kubectl logs --previous after a restart", previous)

        def kc(*args, input=None, timeout=30):
            p = rc.run("kubectl", "--kubeconfig", rc.KUBECONFIG, *args, input=input, check_rc=False,
                       timeout=timeout)
            err = f": {p.stderr.strip()[:160]!r}" if p.stderr.strip() else ""
            print(f"    kubectl {' '.join(args)} -> exit {p.returncode}, {len(p.stdout)} bytes out, "
                  f"{len(p.stderr)} bytes err{err}", flush=True)
            return p

        def exec_command():
            p = kc("exec", pod, "--", "sh", "-c", "echo exec-ok $((6*7)); echo to-stderr >&2; exit 3")
            check(p.stdout == "exec-ok 42\n", f"stdout {p.stdout!r}, stderr {p.stderr!r}")
            check("to-stderr" in p.stderr, f"stderr {p.stderr!r}")
            check(p.returncode == 3, f"the command's exit code 3 came back as {p.returncode}")
            return "stdout, stderr and exit code 3 came back"
        step(s, "kubectl exec with a command", exec_command)

        def exec_stdin():
            p = kc("exec", "-i", pod, "--", "sh", "-c", 'read a; read b; echo "got $b, $a"',
                   input="hello\nfrom stdin\n")
            check(p.returncode == 0, f"exit {p.returncode}: {p.stderr.strip()}")
            check(p.stdout == "got from stdin, hello\n", f"stdout {p.stdout!r}")
            return "two lines went in on stdin, the shell's answer came back"
        step(s, "kubectl exec -i with stdin", exec_stdin)

        def attach():
            p = subprocess.Popen(["kubectl", "--kubeconfig", rc.KUBECONFIG, "attach", pod],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                lines = []
                deadline = time.time() + 20
                while time.time() < deadline and len(lines) < 2:
                    line = p.stdout.readline()
                    if not line:
                        break
                    if line.startswith("file-greeting="):
                        lines.append(line)
            finally:
                p.kill()
                _, err = p.communicate(timeout=10)
            print(f"    kubectl attach {pod} -> {len(lines)} lines", flush=True)
            check(len(lines) >= 2, f"attach gave {lines}; stderr {err.strip()[:300]!r}")
            return "the running process's output streamed"
        step(s, "kubectl attach", attach)

        def port_forward():
            # cloudStream routes /containerLogs, /exec, /attach, /stats and /metrics only: the
            # API server's port-forward request to it gets 404, whatever the edge serves.
            p = subprocess.Popen(["kubectl", "--kubeconfig", rc.KUBECONFIG, "port-forward", pod, "18089:18089"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate(timeout=10)
            try:
                socket.create_connection(("127.0.0.1", 18089), timeout=2).close()
                forwarded = True
            except OSError:
                forwarded = False
            print(f"    kubectl port-forward {pod} 18089:18089 -> exit {p.returncode}: {err.strip()[:160]}", flush=True)
            check(not forwarded and "404" in err,
                  f"CloudCore's cloudStream answered port-forward differently than recorded: {err.strip()[:300]!r}")
            return "refused by CloudCore's cloudStream (404: it has no /portForward route), as recorded in docs/edgestream.md"
        step(s, "kubectl port-forward (a CloudCore limit)", port_forward)

        def local_port_forward():
            # What cloudStream would relay if it routed port-forward: the edge's own kubelet-style
            # server, over the WebSocket port-forward protocol (v4.channel.k8s.io: per port a data
            # and an error channel, each opened by the port number, every frame led by its
            # channel byte), through containerd's streaming server to a port in the pod.
            import websocket  # websocket-client, from the venv's kubernetes client
            rc.apply(rc.app_pod(web_pod, node,
                                script="echo forwarded-ok > /tmp/index.html; exec busybox httpd -f -p 18089 -h /tmp"))
            wait_for("web pod Running", 90, lambda: rc.pod_running(web_pod))
            ws = websocket.create_connection(
                f"ws://127.0.0.1:10350/portForward/default/{web_pod}?port=18089",
                subprotocols=["v4.channel.k8s.io"], timeout=10)
            try:
                opened = sorted(ws.recv()[:1] for _ in range(2))
                check(opened == [b"\x00", b"\x01"], f"channels opened: {opened}")
                ws.send_binary(b"\x00GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
                got = b""
                while b"forwarded-ok" not in got:
                    frame = ws.recv()
                    if not frame:
                        break
                    check(frame[:1] == b"\x00", f"a frame on channel {frame[:1]!r}: {frame[1:200]!r}")
                    got += frame[1:]
            finally:
                ws.close()
            print(f"    websocket port-forward {web_pod} 18089 via 127.0.0.1:10350 -> {len(got)} bytes", flush=True)
            check(b" 200 " in got.split(b"\r\n", 1)[0] and b"forwarded-ok" in got, f"answer {got[:300]!r}")
            return "HTTP through the pod's port 18089 over the edge's /portForward (WebSocket)"
        step(s, "port-forward on the edge's kubelet-style server", local_port_forward)

        tunnels = e.log().count("edgestream tunnel up")
        rc.lab("vip", "b")
        wait_for("session on replica b", 60, lambda: rc.lab("replica") == "b")

        def after_move():
            # Replica a is in maintenance: its sessions were cut, so the tunnel was dialled again
            # (to b) before these logs could come through.
            check(e.log().count("edgestream tunnel up") > tunnels, "the tunnel was not dialled again")
            check("file-greeting=" in logs(), "no logs after the move")
            p = kc("exec", "-i", pod, "--", "sh", "-c", 'read a; echo "got $a"', input="after the move\n")
            check(p.stdout == "got after the move\n", f"exec -i after the move: {p.stdout!r} {p.stderr.strip()!r}")
            return (f"tunnel dialled again ({e.log().count('edgestream tunnel up') - tunnels}x), "
                    "logs and exec -i through replica b")
        step(s, "kubectl logs and exec after a VIP move (tunnel and stream on replica b)", wait_for,
             "logs through replica b", 60, after_move)

        def rotation():
            # A renewed pair, signed by CloudCore's CA (kubeedge/casecret) with the subject and
            # usages CloudCore gives edge certificates, replaces the files as a rotation does.
            certs = os.path.join(e.dir, "certs")
            data = json.loads(kubectl("-n", "kubeedge", "get", "secret", "casecret", "-o", "json"))["data"]
            with tempfile.TemporaryDirectory() as d:
                f = lambda n: os.path.join(d, n)  # noqa: E731
                open(f("ca.der"), "wb").write(base64.b64decode(data["cadata"]))
                open(f("cakey.der"), "wb").write(base64.b64decode(data["cakeydata"]))
                rc.run("openssl", "x509", "-inform", "DER", "-in", f("ca.der"), "-out", f("ca.pem"))
                if rc.run("openssl", "pkey", "-inform", "DER", "-in", f("cakey.der"), "-out", f("cakey.pem"),
                          check_rc=False).returncode != 0:
                    rc.run("openssl", "ec", "-inform", "DER", "-in", f("cakey.der"), "-out", f("cakey.pem"))
                subj = rc.run("openssl", "x509", "-noout", "-subject", "-nameopt", "compat", "-in",
                              os.path.join(certs, "server.crt")).stdout.strip().removeprefix("subject=")
                rc.run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                       "-keyout", f("new.key"), "-subj", subj, "-out", f("new.csr"))
                open(f("ext"), "w").write("extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
                rc.run("openssl", "x509", "-req", "-in", f("new.csr"), "-CA", f("ca.pem"), "-CAkey", f("cakey.pem"),
                       "-CAcreateserial", "-days", "2", "-extfile", f("ext"), "-out", f("new.crt"))
                fp = rc.run("openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", f("new.crt")).stdout
                fp = fp.strip().split("=", 1)[1].replace(":", "")[:16]
                os.chmod(f("new.key"), 0o600)
                shutil.copy(f("new.key"), os.path.join(certs, "server.key.new"))
                shutil.copy(f("new.crt"), os.path.join(certs, "server.crt.new"))
            os.replace(os.path.join(certs, "server.key.new"), os.path.join(certs, "server.key"))
            os.replace(os.path.join(certs, "server.crt.new"), os.path.join(certs, "server.crt"))
            wait_for("the tunnel dialled with the renewed pair", 30,
                     lambda: f"cert={fp}" in e.log() or f'cert="{fp}"' in e.log())
            def through_new_tunnel():
                check("file-greeting=" in logs(), "no logs after the rotation")
                p = kc("exec", "-i", pod, "--", "sh", "-c", 'read a; echo "got $a"', input="after the rotation\n")
                check(p.stdout == "got after the rotation\n", f"exec -i after the rotation: {p.stdout!r} {p.stderr.strip()!r}")
            wait_for("logs and exec through the new tunnel", 60, lambda: through_new_tunnel() or True, interval=2)
            return f"tunnel dialled again with certificate {fp}…; logs and exec -i through it"
        step(s, "kubectl logs and exec after a certificate rotation", rotation)
        check(e.alive(), "edgecore exited")
    finally:
        try:
            rc.lab("vip", "auto")
        finally:
            teardown(e, [pod, crashing, web_pod], node)


def streambench():
    """EdgeStream through the real kube-apiserver and cloudStream, for our edgecore and
    KubeEdge's: time to the first byte of `pods/log` (STREAMBENCH_RUNS requests), `exec` session
    set-up and the round trip of a line through `exec -i cat`, and the agent's VmRSS with 10
    concurrent `kubectl logs -f`. A benchmark: prints numbers; fails only when a stream fails.
    STREAMBENCH_KINDS (default `rust,go`) picks the agents."""
    from kubernetes import client, config as kconfig
    from kubernetes.stream import stream

    s = "streambench"
    runs = int(os.environ.get("STREAMBENCH_RUNS", "30"))
    kconfig.load_kube_config(rc.KUBECONFIG)
    api = client.CoreV1Api()

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000

    for kind in os.environ.get("STREAMBENCH_KINDS", "rust,go").split(","):
        node, pod = f"rc-sb-{kind}", f"rc-sb-{kind}-app"
        e = Edge(node, kind=kind)
        followers = []
        try:
            e.start(edge_stream=True)
            wait_for("Node Ready", 90, lambda: (rc.condition(kget("node", node), "Ready") or {}).get("status") == "True")
            rc.apply(rc.app_pod(pod, node))
            wait_for("pod Running", 90, lambda: rc.pod_running(pod))
            def tail():
                try:
                    return "file-greeting=" in api.read_namespaced_pod_log(pod, "default", tail_lines=1,
                                                                            _request_timeout=10)
                except client.exceptions.ApiException as err:
                    raise Failed(f"{err.status}: {err.body}") from err
                except Exception as err:  # a read timeout: the stream never answered
                    raise Failed(f"{type(err).__name__}: {err}") from err
            wait_for("logs through the tunnel", 150, tail, interval=2)
            first = []
            for _ in range(runs):
                t0 = time.perf_counter()
                r = api.read_namespaced_pod_log(pod, "default", tail_lines=1, _preload_content=False,
                                                _request_timeout=10)
                check(r.read(1), "an empty log answer")
                first.append(time.perf_counter() - t0)
                r.release_conn()
            setup, rtt = [], []
            for _ in range(max(5, runs // 3)):
                t0 = time.perf_counter()
                # Until the exec's status frame (channel 3), not until the WebSocket closes:
                # cloudStream keeps the API server's side open until that side sends again.
                ws = stream(api.connect_get_namespaced_pod_exec, pod, "default", command=["echo", "ok"],
                            stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
                try:
                    out, status = "", ""
                    while True:
                        ws.update(timeout=10)
                        out += ws.read_stdout(timeout=0) or ""
                        status = ws.read_channel(3, timeout=0)
                        if status:
                            break
                        check(ws.is_open(), f"the exec stream closed before its status; stdout {out!r}")
                finally:
                    ws.close()
                check(out.strip() == "ok" and '"Success"' in status, f"exec answered {out!r}, status {status!r}")
                setup.append(time.perf_counter() - t0)
            ws = stream(api.connect_get_namespaced_pod_exec, pod, "default", command=["cat"],
                        stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
            try:
                for i in range(runs):
                    line = f"line-{i}\n"
                    t0 = time.perf_counter()
                    ws.write_stdin(line)
                    got = ""
                    while not got.endswith(line):
                        ws.update(timeout=10)
                        check(ws.is_open(), "the exec stream closed")
                        got += ws.read_stdout(timeout=0) or ""
                    rtt.append(time.perf_counter() - t0)
            finally:
                ws.close()
            idle = max(vm_rss_kb(e.proc.pid) for _ in range(3))
            for _ in range(10):
                followers.append(subprocess.Popen(["kubectl", "--kubeconfig", rc.KUBECONFIG, "logs", "-f", pod],
                                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
            for f in followers:
                check(f.stdout.readline(), "a logs -f stream gave nothing")
            samples = []
            for _ in range(10):
                time.sleep(0.5)
                samples.append(vm_rss_kb(e.proc.pid))
            check(all(f.poll() is None for f in followers), "a logs -f stream ended")
            R.ok(s, f"{kind} edgecore",
                 f"first log byte p50 {pct(first, 0.5):.0f} ms, p99 {pct(first, 0.99):.0f} ms ({runs} requests); "
                 f"exec set-up p50 {pct(setup, 0.5):.0f} ms; exec -i line round trip p50 {pct(rtt, 0.5):.1f} ms, "
                 f"p99 {pct(rtt, 0.99):.1f} ms; VmRSS idle {idle / 1024:.1f} MiB, with 10 logs -f "
                 f"{max(samples) / 1024:.1f} MiB")
        except Failed as err:
            R.fail(s, f"{kind} edgecore: {err}")
        finally:
            for f in followers:
                f.kill()
                f.wait(timeout=10)
            teardown(e, [pod], node)


BENCHMARKS = {"podbench": podbench, "streambench": streambench}

SCENARIOS = {
    "bootstrap": bootstrap,
    "node": node_scenario,
    "pod": pod_scenario,
    "failover": failover,
    "offline": offline,
    "shared-db": shared_db,
    "compare": compare,
    "metaserver": metaserver,
    "meta-v2": meta_v2,
    "metaserver-auth": metaserver_auth,
    "edgestream": edgestream,
}


def main(argv):
    if argv[:1] == ["--list"]:
        print("\n".join(SCENARIOS))
        print("\n".join(f"{b} (benchmark; only when named)" for b in BENCHMARKS))
        return 0
    if argv[:1] == ["--stop-edges"]:
        rc.stop_recorded_edges()
        return 0
    names = argv or list(SCENARIOS)
    known = {**SCENARIOS, **BENCHMARKS}
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown scenario(s) {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    os.makedirs(rc.EDGES, exist_ok=True)
    rc.stop_recorded_edges()  # a crashed earlier run may have left one
    for name in names:
        t0 = time.time()
        print(f"==> scenario {name}", flush=True)
        try:
            known[name]()
        except Failed as e:
            if not getattr(e, "reported", False):
                R.fail(name, str(e))
        except Exception:
            R.fail(name, "crashed:\n" + traceback.format_exc())
        print(f"    {name} took {time.time() - t0:.0f}s", flush=True)
    print(f"realcloud: {R.passed} checks passed, {len(R.failed)} failed", flush=True)
    for f in R.failed:
        print(f"  FAILED {f}", flush=True)
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
