//! What in an edgecore.yaml this edgecore accepts but does not act on, so that start-up can say
//! so in one line instead of silently ignoring it: keys set to something other than KubeEdge's
//! default that no part of edgecore reads, and modules enabled that edgecore does not run.

use serde_yaml_ng::Value;

use crate::types::EdgeCoreConfig;

/// Keys edgecore reads and acts on (a path covers its whole subtree). Everything else is kept
/// (and printed back) for KubeEdge's sake but changes nothing here.
const HONOURED: &[&str] = &[
    "apiVersion",
    "kind",
    "database.dataSource",
    "modules.edgeHub.enable",
    "modules.edgeHub.heartbeat",
    "modules.edgeHub.messageQPS",
    "modules.edgeHub.messageBurst",
    "modules.edgeHub.projectID",
    "modules.edgeHub.tlsCaFile",
    "modules.edgeHub.tlsCertFile",
    "modules.edgeHub.tlsPrivateKeyFile",
    "modules.edgeHub.token",
    "modules.edgeHub.httpServer",
    "modules.edgeHub.rotateCertificates",
    "modules.edgeHub.tlsServerName",
    "modules.edgeHub.failover",
    "modules.edgeHub.websocket.enable",
    "modules.edgeHub.websocket.server",
    "modules.edgeHub.websocket.handshakeTimeout",
    "modules.edgeHub.websocket.writeDeadline",
    "modules.metaManager.enable",
    "modules.metaManager.remoteQueryTimeout",
    "modules.metaManager.metaServer.enable",
    "modules.metaManager.metaServer.server",
    "modules.metaManager.metaServer.dummyServer",
    "modules.metaManager.metaServer.serviceAccountIssuers",
    "modules.metaManager.metaServer.apiAudiences",
    "modules.metaManager.metaServer.serviceAccountKeyFiles",
    "modules.metaManager.metaServer.certificatesDir",
    "featureGates.requireAuthorization",
    "modules.edgeStream.enable",
    "modules.edgeStream.server",
    "modules.edgeStream.handshakeTimeout",
    "modules.edgeStream.readDeadline",
    "modules.edgeStream.tlsTunnelCAFile",
    "modules.edgeStream.tlsTunnelCertFile",
    "modules.edgeStream.tlsTunnelPrivateKeyFile",
    "modules.edged.enable",
    "modules.edged.hostnameOverride",
    "modules.edged.nodeIP",
    "modules.edged.nodeLabels",
    "modules.edged.rootDirectory",
    "modules.edged.tailoredKubeletConfig.containerRuntimeEndpoint",
    "modules.edged.tailoredKubeletConfig.imageServiceEndpoint",
    "modules.edged.tailoredKubeletConfig.nodeStatusUpdateFrequency",
    "modules.edged.tailoredKubeletConfig.nodeStatusReportFrequency",
    "modules.edged.tailoredKubeletConfig.nodeLeaseDurationSeconds",
    "modules.edged.tailoredKubeletConfig.syncFrequency",
    "modules.edged.tailoredKubeletConfig.runtimeRequestTimeout",
    "modules.edged.tailoredKubeletConfig.maxPods",
    "modules.edged.tailoredKubeletConfig.podLogsDir",
    "modules.edged.tailoredKubeletConfig.clusterDNS",
    "modules.edged.tailoredKubeletConfig.clusterDomain",
    "modules.edged.tailoredKubeletConfig.resolvConf",
    "modules.edged.tailoredKubeletConfig.cgroupDriver",
    "modules.edged.tailoredKubeletConfig.cgroupsPerQOS",
    "modules.edged.tailoredKubeletConfig.cgroupRoot",
    "modules.health",
];

/// Modules (or parts) KubeEdge's edgecore can run and this one does not, by the path of their
/// `enable` switch's parent.
const NOT_RUN: &[&str] = &[
    "modules.deviceTwin",
    "modules.eventBus",
    "modules.serviceBus",
    "modules.taskManager",
    "modules.dbTest",
    "modules.edgeHub.quic",
];

/// What a configuration asks for that this edgecore does not do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inert {
    /// Keys set to something other than KubeEdge's default that nothing here reads
    /// (`modules.edged.tailoredKubeletConfig.cpuManagerPolicy`), in file order.
    pub keys: Vec<String>,
    /// Modules enabled that edgecore does not run (`modules.eventBus`).
    pub modules: Vec<String>,
}

impl Inert {
    /// Nothing to say.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.modules.is_empty()
    }
}

/// The keys and modules of `config` that have no effect in this edgecore (see [`Inert`]).
/// Keys inside a module that is off, or one this edgecore does not run, are not listed (the
/// module line covers the latter).
pub fn inert(config: &EdgeCoreConfig) -> Inert {
    let mut defaults = crate::defaults::default_config(&config.modules.edged.hostname_override);
    // An empty value is the same as the default for these (KubeEdge fills them in).
    defaults
        .modules
        .edged
        .node_ip
        .clone_from(&config.modules.edged.node_ip);
    let (Ok(have), Ok(want)) = (
        serde_yaml_ng::to_value(config),
        serde_yaml_ng::to_value(&defaults),
    ) else {
        return Inert::default();
    };
    let mut out = Inert::default();
    for module in NOT_RUN {
        if enabled(&have, module) {
            out.modules.push((*module).to_owned());
        }
    }
    let mut path = Vec::new();
    differing(&have, Some(&want), &mut path, &mut out.keys);
    out.keys.retain(|k| {
        !HONOURED.iter().any(|h| covers(h, k))
            && !NOT_RUN.iter().any(|m| covers(m, k))
            && !inside_disabled_module(&have, k)
    });
    out
}

/// `prefix` is `key` or one of its parents.
fn covers(prefix: &str, key: &str) -> bool {
    key == prefix
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |node, part| node.get(part))
}

fn enabled(v: &Value, module: &str) -> bool {
    lookup(v, &format!("{module}.enable")).and_then(Value::as_bool) == Some(true)
}

/// `modules.<name>.…` where that module's `enable` is false.
fn inside_disabled_module(v: &Value, key: &str) -> bool {
    let mut parts = key.split('.');
    match (parts.next(), parts.next()) {
        (Some("modules"), Some(name)) => {
            lookup(v, &format!("modules.{name}.enable")).and_then(Value::as_bool) == Some(false)
        }
        _ => false,
    }
}

/// Leaf paths where `have` differs from `want` (a whole subtree that `want` lacks counts as one).
fn differing(have: &Value, want: Option<&Value>, path: &mut Vec<String>, out: &mut Vec<String>) {
    match (have, want) {
        (Value::Mapping(h), Some(Value::Mapping(w))) => {
            for (k, v) in h {
                let Some(name) = k.as_str() else { continue };
                path.push(name.to_owned());
                differing(v, w.get(name), path, out);
                path.pop();
            }
        }
        (h, Some(w)) if h == w => {}
        _ => out.push(path.join(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::from_yaml;

    const HEAD: &str = "apiVersion: edgecore.config.kubeedge.io/v1alpha2\nkind: EdgeCore\n";

    #[test]
    fn kubeedges_defaults_enable_modules_this_edgecore_does_not_run_and_nothing_else() {
        let c = crate::default_config("n1");
        let i = inert(&c);
        assert_eq!(i.keys, Vec::<String>::new());
        // KubeEdge's defaults switch on the device twin and the event bus.
        assert_eq!(i.modules, ["modules.deviceTwin", "modules.eventBus"]);
        assert!(inert(&crate::minimal_config("n1")).is_empty());
    }

    #[test]
    fn keys_set_away_from_the_default_that_nothing_reads_are_named() {
        let c = from_yaml(&format!(
            "{HEAD}modules:\n  edgeHub:\n    heartbeat: 20\n    websocket:\n      readDeadline: 9\n  \
             eventBus:\n    enable: false\n    mqttQOS: 2\n  edged:\n    hostnameOverride: n1\n    \
             podSandboxImage: my/pause:1\n    tailoredKubeletConfig:\n      cgroupDriver: systemd\n      \
             cpuManagerPolicy: static\n      maxPods: 20\n      clusterDNS: [10.96.0.10]\n      someNewKubeletKey: 1\n  \
             metaManager:\n    metaServer:\n      enable: true\n"
        ))
        .unwrap()
        .config;
        let i = inert(&c);
        assert_eq!(
            i.keys,
            [
                "modules.edgeHub.websocket.readDeadline",
                "modules.edged.podSandboxImage",
                "modules.edged.tailoredKubeletConfig.cpuManagerPolicy",
                "modules.edged.tailoredKubeletConfig.someNewKubeletKey",
            ],
            "heartbeat, cgroupDriver, maxPods and clusterDNS act; a disabled module's keys are not listed"
        );
        assert_eq!(i.modules, ["modules.deviceTwin"], "metaServer runs");
    }

    #[test]
    fn keys_of_a_disabled_edged_are_not_listed() {
        let c = from_yaml(&format!(
            "{HEAD}modules:\n  edged:\n    enable: false\n    hostnameOverride: n1\n    \
             tailoredKubeletConfig:\n      cgroupDriver: systemd\n"
        ))
        .unwrap()
        .config;
        assert!(inert(&c).keys.is_empty());
    }
}
