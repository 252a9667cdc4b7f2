//! The top of edgecore.yaml and the sections other than edgeHub.
//!
//! SKELETON: the config helper completes defaults, the unused KubeEdge sections, and validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::edgehub::EdgeHub;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EdgeCoreConfig {
    /// `edgecore.config.kubeedge.io/v1alpha2`.
    pub api_version: String,
    /// `EdgeCore`.
    pub kind: String,
    /// SQLite store.
    pub database: Database,
    /// Module sections.
    pub modules: Modules,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Modules {
    /// The cloud link.
    pub edge_hub: EdgeHub,
    /// The store and request routing.
    pub meta_manager: MetaManager,
    /// The node agent.
    pub edged: Edged,
}

/// `modules.metaManager`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetaManager {
    /// Module switch.
    pub enable: bool,
    /// Seconds to wait for the cloud's answer to a remote query.
    pub remote_query_timeout: u32,
}

/// `modules.edged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Edged {
    /// Module switch.
    pub enable: bool,
    /// The node name: `node_id` header, certificate CN, URL path segment.
    pub hostname_override: String,
    /// Namespace of edged's startup pod-list query.
    pub register_node_namespace: String,
    /// The kubelet configuration subset edged honours.
    pub tailored_kubelet_config: TailoredKubeletConfig,
}

/// `modules.edged.tailoredKubeletConfig` (the keys we use; others are tolerated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TailoredKubeletConfig {
    /// CRI socket, `unix:///run/containerd/containerd.sock`.
    pub container_runtime_endpoint: String,
}

impl Default for EdgeCoreConfig {
    fn default() -> Self {
        Self {
            api_version: "edgecore.config.kubeedge.io/v1alpha2".to_owned(),
            kind: "EdgeCore".to_owned(),
            database: Database::default(),
            modules: Modules::default(),
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

impl Default for Modules {
    fn default() -> Self {
        Self {
            edge_hub: EdgeHub::default(),
            meta_manager: MetaManager::default(),
            edged: Edged::default(),
        }
    }
}

impl Default for MetaManager {
    fn default() -> Self {
        Self {
            enable: true,
            remote_query_timeout: 60,
        }
    }
}

impl Default for Edged {
    fn default() -> Self {
        Self {
            enable: true,
            hostname_override: String::new(),
            register_node_namespace: "default".to_owned(),
            tailored_kubelet_config: TailoredKubeletConfig::default(),
        }
    }
}

impl Default for TailoredKubeletConfig {
    fn default() -> Self {
        Self {
            container_runtime_endpoint: "unix:///run/containerd/containerd.sock".to_owned(),
        }
    }
}
