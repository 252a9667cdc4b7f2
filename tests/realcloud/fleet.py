#!/usr/bin/env python3
"""Fleet benchmark against the real cloud (not a test): N edge agents, each its own node, on the
two real CloudCore replicas behind the VIP; the VIP moves, and the numbers say how fast and how
completely the fleet comes back, and what it costs CloudCore.

    tests/realcloud/fleet.sh N [rust|go]        (fleet.sh brings the lab up and down)

Every edge runs edged: ours with no container runtime at its socket (it still registers the
Node, renews the Lease, reports status and takes its pod), KubeEdge's Go edgecore on the lab's
containerd (its kubelet will not start without one). Each node gets one pod that mounts the
ConfigMap fleet-cm, so CloudCore pushes changes of that ConfigMap to every node. Node status is reported
every 10 s (nodeStatusReportFrequency 10s) so that every node sends a nodepatch after the move.

Measured after `vip b` (a VIP move with every session cut):
  sessions_back_s       until haproxy holds N edge sessions on replica b
  nodepatch_all_s       until every node's status patch has reached the API server again
  lease_all_s           until every node's Lease has been renewed again
  configmap_all_s       a ConfigMap change made right after the move, until every edge stored it
  lost                  edges whose store lacks that change after the wait (nothing lost: 0)
  cloudcore CPU and RSS of both replicas from the move until all caught up, sampled every 0.5 s
"""

import json
import os
import sys
import threading
import time

import rc
from rc import Edge, kget, kubectl, wait_for

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50
KIND = sys.argv[2] if len(sys.argv) > 2 else "rust"
PREFIX = f"fleet-{KIND}"
NOWHERE = "unix:///tmp/edgecore-rc/no-runtime/containerd.sock"


def log(msg):
    print(f"[{time.strftime('%T')}] fleet: {msg}", flush=True)


def pids(name):
    for line in open(os.path.join(rc.RUN, "pids")):
        n, p = line.split()
        if n == name:
            last = int(p)
    return last


class Sampler(threading.Thread):
    """CPU seconds and peak RSS of the CloudCore replicas."""

    def __init__(self):
        super().__init__(daemon=True)
        self.pids = {r: pids(f"cloudcore-{r}") for r in ("a", "b")}
        self.start_cpu = {r: self.cpu(p) for r, p in self.pids.items()}
        self.peak_rss = {r: 0 for r in self.pids}
        self.halt = threading.Event()

    @staticmethod
    def cpu(pid):
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def rss_kb(pid):
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def run(self):
        while not self.halt.is_set():
            for r, p in self.pids.items():
                try:
                    self.peak_rss[r] = max(self.peak_rss[r], self.rss_kb(p))
                except OSError:
                    pass
            self.halt.wait(0.5)

    def stop(self):
        self.halt.set()
        self.join(timeout=5)
        return {r: {"cpu_s": round(self.cpu(p) - self.start_cpu[r], 1),
                    "peak_rss_mb": round(self.peak_rss[r] / 1024, 1)} for r, p in self.pids.items()}


def configure(e, i):
    e.write_config(with_token=True, read_only_port=20000 + i)
    import yaml
    c = yaml.safe_load(open(e.config_path))
    t = c["modules"]["edged"]["tailoredKubeletConfig"]
    t["nodeStatusReportFrequency"] = "10s"
    if KIND == "rust":
        t["containerRuntimeEndpoint"] = NOWHERE
        t["imageServiceEndpoint"] = NOWHERE
    with open(e.config_path, "w") as f:
        yaml.safe_dump(c, f, default_flow_style=False, sort_keys=False)


def edge_rss_mb(edges):
    total = 0
    for e in edges:
        try:
            total += Sampler.rss_kb(e.proc.pid)
        except OSError:
            pass
    return round(total / 1024, 1)


def main():
    nodes = [f"{PREFIX}-{i:03d}" for i in range(N)]
    rc.apply(rc.configmap("fleet-cm", "start"))
    rc.lab("vip", "a")
    edges = []
    try:
        log(f"starting {N} {KIND} edges")
        t0 = time.time()
        for i, node in enumerate(nodes):
            e = Edge(node, kind=KIND)
            configure(e, i)
            e.start(with_token=False)
            edges.append(e)
        ready = lambda: all(kget("node", n) is not None for n in nodes)
        wait_for("every Node registered", 300, ready, interval=2)
        log(f"{N} nodes registered in {time.time() - t0:.1f} s")
        for node in nodes:
            pod = rc.app_pod(f"{node}-pod", node, cm="fleet-cm")
            rc.apply(pod)
        wait_for("every edge storing its pod", 300,
                 lambda: all(e.row(f"default/pod/{e.node}-pod") for e in edges), interval=2)
        log(f"every pod at its edge after {time.time() - t0:.1f} s")
        time.sleep(15)  # let the sessions settle past the edges' backoff reset
        idle_rss = edge_rss_mb(edges)

        audit = open(rc.AUDIT, errors="replace")
        audit.seek(0, os.SEEK_END)
        partial = ""
        sampler = Sampler()
        sampler.start()
        move = time.time()
        rc.lab("vip", "b")
        kubectl("patch", "cm", "fleet-cm", "--type", "merge", "-p", json.dumps({"data": {"greeting": "moved"}}))
        def has_change(e):
            try:
                return rc.stored_data(e, "default/configmap/fleet-cm", "greeting") == "moved"
            except rc.Failed:
                return False

        res = {"n": N, "kind": KIND}
        patched, renewed = set(), set()
        pending = {"sessions_back_s", "nodepatch_all_s", "lease_all_s", "configmap_all_s"}
        deadline = move + 300
        while pending and time.time() < deadline:
            chunk = partial + audit.read()  # only what the API server wrote since the last look
            lines = chunk.split("\n")
            partial = lines.pop()  # a line still being written
            for line in lines:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                ref = ev.get("objectRef", {})
                if ev.get("stage") != "ResponseComplete" or "cloudcore" not in ev.get("userAgent", ""):
                    continue
                if ev.get("verb") == "patch" and ref.get("subresource") == "status" and ref.get("resource") == "nodes":
                    patched.add(ref.get("name"))
                if ev.get("verb") == "update" and ref.get("resource") == "leases":
                    renewed.add(ref.get("name"))
            now = round(time.time() - move, 2)
            checks = {
                "sessions_back_s": lambda: rc.lab("sessions", "b") == str(N),
                "nodepatch_all_s": lambda: all(n in patched for n in nodes),
                "lease_all_s": lambda: all(n in renewed for n in nodes),
                "configmap_all_s": lambda: all(has_change(e) for e in edges),
            }
            for k in list(pending):
                if checks[k]():
                    res[k] = now
                    pending.discard(k)
            time.sleep(0.2)
        for k in pending:
            res[k] = None

        res["lost"] = sum(1 for e in edges if not has_change(e))
        if KIND == "rust":
            # Each edge's own account: from losing the session to the next one (its log).
            import re
            took = [int(m[-1]) for e in edges
                    if (m := re.findall(r"connected endpoint=\S+ session=\d+ took_ms=\d+ failover_ms=(\d+)", e.log()))]
            res["edge_failover_ms"] = {"max": max(took, default=None), "n": len(took)}
        res["cloudcore"] = sampler.stop()
        res["edges_rss_total_mb"] = {"idle": idle_rss, "after": edge_rss_mb(edges)}
        res["edges_alive"] = sum(1 for e in edges if e.alive())
        print(json.dumps(res), flush=True)
        os.makedirs(os.path.join(rc.RUN, "results"), exist_ok=True)
        with open(os.path.join(rc.RUN, "results", f"fleet-{KIND}-{N}.json"), "w") as f:
            json.dump(res, f, indent=1)
    finally:
        log("stopping the fleet")
        for node in nodes:
            kubectl("delete", "pod", f"{node}-pod", "--force", "--grace-period=0", "--ignore-not-found",
                    check_rc=False)
        for e in edges:
            try:
                e.stop(timeout=20)
            except rc.Failed:
                pass
        for node in nodes:
            kubectl("delete", "node", node, "--ignore-not-found", "--wait=false", check_rc=False)
        rc.lab("vip", "auto")


if __name__ == "__main__":
    main()
