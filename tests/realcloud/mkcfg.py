#!/usr/bin/env python3
"""Turn `cloudcore --defaultconfig` (stdin) into one replica's config (stdout) for the real-cloud stage.
(Adapted from ../shared/lab/realcloud/mkcfg.py.)
usage: mkcfg.py NAME LISTEN_IP MONITOR_PORT KUBECONFIG RUNDIR VIP"""
import sys, yaml
name, ip, mon, kubeconfig, rundir, vip = sys.argv[1:7]
c = yaml.safe_load(sys.stdin)
c["kubeAPIConfig"]["kubeConfig"] = kubeconfig
c["kubeAPIConfig"]["master"] = ""
c.setdefault("commonConfig", {}).setdefault("monitorServer", {})["bindAddress"] = f"{ip}:{mon}"
m = c["modules"]
h = m["cloudHub"]
h["advertiseAddress"] = [vip]           # lands in the IP SANs of the shared cloudcoresecret cert
h["dnsNames"] = ["cloudcore.rc.lab"]
h["websocket"].update(address=ip, port=10000, enable=True)
h["https"].update(address=ip, port=10002, enable=True)
h["quic"]["enable"] = False
h["unixsocket"].update(enable=True, address=f"unix://{rundir}/cloudhub.sock")
# non-existent local files => CA/cert/key are read from (or first written to) the
# kubeedge/casecret + kubeedge/cloudcoresecret secrets, which is how HA replicas share them
h["tlsCAFile"] = f"{rundir}/ca/rootCA.crt"
h["tlsCAKeyFile"] = f"{rundir}/ca/rootCA.key"
h["tlsCertFile"] = f"{rundir}/certs/server.crt"
h["tlsPrivateKeyFile"] = f"{rundir}/certs/server.key"
for mod in ("cloudStream", "router", "iptablesManager"):
    if mod in m:
        m[mod]["enable"] = False
if "cloudStream" in m:   # never used (disabled) but keep replicas' ports apart anyway
    m["cloudStream"].update(tunnelPort=10004 if name == "a" else 10014, streamPort=10003 if name == "a" else 10013)
# MetaServer's applications (writes, reads of what the edge does not hold) are answered by
# dynamicController, which KubeEdge ships disabled; both replicas run it so that a VIP move
# keeps them answered.
if "dynamicController" in m:
    m["dynamicController"]["enable"] = True
yaml.safe_dump(c, sys.stdout, default_flow_style=False, sort_keys=False)
