//! The configurations `edgecore --defaultconfig` and `--minconfig` print: KubeEdge's, plus our
//! extra keys.

use crate::types::EdgeCoreConfig;

/// The full configuration with KubeEdge's defaults for node `node_name`, as KubeEdge's
/// `edgecore --defaultconfig` prints it (CloudCore address: the placeholder 192.0.2.2), plus
/// our `tlsServerName`, `failover` and `health` keys.
pub fn default_config(node_name: &str) -> EdgeCoreConfig {
    let mut c = EdgeCoreConfig::default();
    c.modules.edged.hostname_override = node_name.to_owned();
    c
}

/// The configuration KubeEdge's `edgecore --minconfig` describes, as it loads: the defaults,
/// except that the minimal file switches off edgeHub, deviceTwin and eventBus (KubeEdge prints
/// `enable: false` for them). Print it with [`minimal_yaml`](crate::minimal_yaml) to get the
/// short file.
pub fn minimal_config(node_name: &str) -> EdgeCoreConfig {
    let mut c = default_config(node_name);
    c.modules.edge_hub.enable = false;
    c.modules.device_twin.enable = false;
    c.modules.event_bus.enable = false;
    c
}

/// Key paths KubeEdge leaves out of the minimal file (they load with their defaults).
pub(crate) const LEFT_OUT_OF_MINIMAL: &[&[&str]] = &[
    &["database", "aliasName"],
    &["database", "driverName"],
    &["modules", "dbTest"],
    &["modules", "edgeStream"],
    &["modules", "metaManager"],
    &["modules", "serviceBus"],
    &["modules", "taskManager"],
    &["modules", "edgeHub", "messageBurst"],
    &["modules", "edgeHub", "messageQPS"],
    &["modules", "edgeHub", "projectID"],
    &["modules", "edgeHub", "quic"],
    &["modules", "edgeHub", "rotateCertificates"],
    &["modules", "eventBus", "eventBusTLS"],
    &["modules", "eventBus", "mqttSessionQueueSize"],
];
