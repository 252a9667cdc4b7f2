//! Object generators shared by `cloudsim feed`, the tests and the benchmark.

use anyhow::Result;
use serde_json::{Value, json};

use crate::cluster::Cluster;

/// Namespace of generated objects.
pub const NAMESPACE: &str = "default";

/// Which kinds to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    /// ConfigMaps only.
    ConfigMap,
    /// Secrets only.
    Secret,
    /// Pods only.
    Pod,
    /// configmap, secret, pod in turn.
    Mixed,
}

impl FeedKind {
    /// Parses `configmap|secret|pod|mixed`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "configmap" => Some(Self::ConfigMap),
            "secret" => Some(Self::Secret),
            "pod" => Some(Self::Pod),
            "mixed" => Some(Self::Mixed),
            _ => None,
        }
    }

    /// The resource type of the `i`th object.
    pub fn kind_of(self, i: usize) -> &'static str {
        match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
            Self::Pod => "pod",
            Self::Mixed => ["configmap", "secret", "pod"][i % 3],
        }
    }
}

/// Name of the `i`th object of `kind`.
pub fn name_of(kind: &str, i: usize) -> String {
    format!("{kind}-{i:05}")
}

/// The fields besides metadata of version `version` of an object.
pub fn data_of(kind: &str, i: usize, version: usize) -> Value {
    match kind {
        "secret" => json!({
            "type": "Opaque",
            // base64 of "v<version>" is not needed for the protocol; any string will do.
            "data": {"password": format!("djE{version}"), "index": i.to_string()},
        }),
        "pod" => json!({
            "spec": {
                "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sleep", "3600"]}],
                "restartPolicy": "Always",
            },
            "status": {"phase": "Pending"},
            "metadata_note": format!("v{version}"),
        }),
        _ => json!({
            "data": {"app.properties": format!("index={i}\nversion={version}\n"), "index": i.to_string()},
        }),
    }
}

/// Creates object `i` (version 0) or updates it to `version`. Returns (uid, rv).
pub fn write(cluster: &Cluster, kind: &str, i: usize, version: usize) -> Result<(String, u64)> {
    cluster.upsert(
        kind,
        NAMESPACE,
        &name_of(kind, i),
        data_of(kind, i, version),
    )
}
