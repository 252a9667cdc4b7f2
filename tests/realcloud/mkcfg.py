#!/usr/bin/env python3
"""Turn `cloudcore --defaultconfig` (stdin) into one replica's config (stdout) for the real-cloud stage.
(Adapted from ../shared/lab/realcloud/mkcfg.py.)
usage: mkcfg.py NAME LISTEN_IP MONITOR_PORT KUBECONFIG RUNDIR VIP"""
import os, sys, yaml
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
for mod in ("router", "iptablesManager"):
    if mod in m:
        m[mod]["enable"] = False
# cloudStream on (EdgeStream: kubectl logs): it listens on all addresses, so the replicas' ports
# differ; haproxy puts both behind the VIP with the same primary
# and backup as 10000 (tunnel on VIP:10024, stream on VIP:10351), so the API server's stream
# reaches the replica holding the tunnel.
# Tunnel certificate paths point nowhere: cloudStream then takes CloudHub's CA and pair.
# Stream server: any certificate (kube-apiserver does not verify kubelets here), the cluster CA.
certs = os.path.join(os.path.dirname(rundir), "certs")
# cloudStream writes the tunnel port CloudCore negotiates (10351 for the first host address,
# kept in the kubeedge/tunnelport ConfigMap) into each node's kubeletEndpoint: the VIP's stream
# port is that one.
if "cloudStream" in m:
    m["cloudStream"].update(
        enable=True,
        tunnelPort=10004 if name == "a" else 10014,
        streamPort=10003 if name == "a" else 10013,
        tlsTunnelCAFile=f"{rundir}/ca/none.crt",
        tlsTunnelCertFile=f"{rundir}/certs/none.crt",
        tlsTunnelPrivateKeyFile=f"{rundir}/certs/none.key",
        tlsStreamCAFile=f"{certs}/ca.crt",
        tlsStreamCertFile=f"{certs}/apiserver.crt",
        tlsStreamPrivateKeyFile=f"{certs}/apiserver.key",
    )
# MetaServer's applications (writes, reads of what the edge does not hold) are answered by
# dynamicController, which KubeEdge ships disabled; both replicas run it so that a VIP move
# keeps them answered.
if "dynamicController" in m:
    m["dynamicController"]["enable"] = True
yaml.safe_dump(c, sys.stdout, default_flow_style=False, sort_keys=False)
