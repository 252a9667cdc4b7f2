//! The top of edgecore.yaml, `database`, `modules`, `modules.metaManager` and our
//! `modules.health`. KubeEdge's defaults live in the `Default` impls at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::de;
use crate::edged::Edged;
use crate::edgehub::EdgeHub;
use crate::other_modules::{DbTest, DeviceTwin, EdgeStream, EventBus, ServiceBus, TaskManager};

/// The `apiVersion` edgecore.yaml must carry.
pub const API_VERSION: &str = "edgecore.config.kubeedge.io/v1alpha2";
/// The `kind` edgecore.yaml must carry.
pub const KIND: &str = "EdgeCore";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EdgeCoreConfig {
    /// `edgecore.config.kubeedge.io/v1alpha2`.
    pub api_version: String,
    /// `EdgeCore`.
    pub kind: String,
    /// SQLite store.
    #[serde(deserialize_with = "de::null_as_default")]
    pub database: Database,
    /// Module sections.
    #[serde(deserialize_with = "de::null_as_default")]
    pub modules: Modules,
    /// KubeEdge feature gates, by name.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de::null_as_default"
    )]
    pub feature_gates: BTreeMap<String, bool>,
    /// Version of the edgecore that last wrote the file (KubeEdge rewrites it on start).
    pub edgecore_version: String,
}

/// `database`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Database {
    /// Always `sqlite3`.
    pub driver_name: String,
    /// Always `default`.
    pub alias_name: String,
    /// Path of the SQLite file.
    pub data_source: PathBuf,
}

/// `modules`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Modules {
    /// The cloud link.
    #[serde(deserialize_with = "de::null_as_default")]
    pub edge_hub: EdgeHub,
    /// The store and request routing.
    #[serde(deserialize_with = "de::null_as_default")]
    pub meta_manager: MetaManager,
    /// The node agent.
    #[serde(deserialize_with = "de::null_as_default")]
    pub edged: Edged,
    /// Ours: local health and metrics endpoint.
    #[serde(deserialize_with = "de::null_as_default")]
    pub health: Health,
    /// KubeEdge's database self-test (not run).
    #[serde(deserialize_with = "de::null_as_default")]
    pub db_test: DbTest,
    /// KubeEdge's device twin (not run).
    #[serde(deserialize_with = "de::null_as_default")]
    pub device_twin: DeviceTwin,
    /// KubeEdge's stream tunnel (not run).
    #[serde(deserialize_with = "de::null_as_default")]
    pub edge_stream: EdgeStream,
    /// KubeEdge's MQTT bridge (not run).
    #[serde(deserialize_with = "de::null_as_default")]
    pub event_bus: EventBus,
    /// KubeEdge's service bus (not run).
    #[serde(deserialize_with = "de::null_as_default")]
    pub service_bus: ServiceBus,
    /// KubeEdge's task manager (not run).
    #[serde(deserialize_with = "de::null_as_default")]
    pub task_manager: TaskManager,
    /// Newer KubeEdge releases' stream-rule endpoint (not run), kept as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_rule_endpoint: Option<Value>,
}

/// `modules.metaManager`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetaManager {
    /// Module switch.
    pub enable: bool,
    /// Group that upstream messages go to (`hub`).
    pub context_send_group: String,
    /// Module that upstream messages go to (`websocket`).
    pub context_send_module: String,
    /// Seconds to wait for the cloud's answer to a remote query.
    #[serde(deserialize_with = "de::seconds")]
    pub remote_query_timeout: u32,
    /// KubeEdge's local API server for edge pods (not run).
    #[serde(deserialize_with = "de::null_as_default")]
    pub meta_server: MetaServer,
}

/// `modules.metaManager.metaServer`: the node's local Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetaServer {
    /// Module switch.
    pub enable: bool,
    /// Listen `host:port`.
    pub server: String,
    /// Address on the dummy interface that pods reach.
    pub dummy_server: String,
    /// CA (PEM).
    pub tls_ca_file: String,
    /// Server certificate (PEM).
    pub tls_cert_file: String,
    /// Server key (PEM).
    pub tls_private_key_file: String,
    /// Accepted service-account token issuers (`null` allowed, as KubeEdge prints).
    pub service_account_issuers: Option<Vec<String>>,
    /// Accepted token audiences.
    pub api_audiences: Option<Vec<String>>,
    /// Service-account public keys.
    pub service_account_key_files: Option<Vec<String>>,
    /// Ours: where the serving certificate requested with `requireAuthorization` is kept
    /// (KubeEdge's fixed `/etc/kubeedge/pki/metaserver`, the default). Not printed when default.
    #[serde(skip_serializing_if = "MetaServer::default_certificates_dir")]
    pub certificates_dir: String,
}

impl MetaServer {
    /// KubeEdge's fixed directory of MetaServer's serving certificate.
    pub const CERTIFICATES_DIR: &'static str = "/etc/kubeedge/pki/metaserver";

    fn default_certificates_dir(dir: &str) -> bool {
        dir == Self::CERTIFICATES_DIR
    }
}

/// `modules.health` (ours): the local HTTP endpoint for `/healthz`, `/readyz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Health {
    /// Serve the endpoint.
    pub enable: bool,
    /// Listen address, `ip:port`.
    pub address: String,
}

impl Health {
    /// The listen address; `None` unless it is `ip:port` (which [`EdgeCoreConfig::validate`]
    /// checks when the endpoint is enabled).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.address.parse().ok()
    }
}

impl Default for EdgeCoreConfig {
    fn default() -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            database: Database::default(),
            modules: Modules::default(),
            feature_gates: BTreeMap::new(),
            edgecore_version: String::new(),
        }
    }
}

impl Default for Database {
    fn default() -> Self {
        Self {
            driver_name: "sqlite3".to_owned(),
            alias_name: "default".to_owned(),
            data_source: PathBuf::from("/var/lib/kubeedge/edgecore.db"),
        }
    }
}

impl Default for MetaManager {
    fn default() -> Self {
        Self {
            enable: true,
            context_send_group: "hub".to_owned(),
            context_send_module: "websocket".to_owned(),
            remote_query_timeout: 60,
            meta_server: MetaServer::default(),
        }
    }
}

impl Default for MetaServer {
    fn default() -> Self {
        Self {
            enable: false,
            server: "127.0.0.1:10550".to_owned(),
            dummy_server: "169.254.30.10:10550".to_owned(),
            tls_ca_file: "/etc/kubeedge/ca/rootCA.crt".to_owned(),
            tls_cert_file: "/etc/kubeedge/certs/server.crt".to_owned(),
            tls_private_key_file: "/etc/kubeedge/certs/server.key".to_owned(),
            service_account_issuers: Some(vec![
                "https://kubernetes.default.svc.cluster.local".to_owned(),
            ]),
            api_audiences: None,
            service_account_key_files: None,
            certificates_dir: Self::CERTIFICATES_DIR.to_owned(),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self {
            enable: true,
            address: "127.0.0.1:10370".to_owned(),
        }
    }
}
