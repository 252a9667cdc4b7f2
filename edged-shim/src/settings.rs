//! Validated settings edged-shim runs with, taken by value.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Thresholds below which a node reports pressure (kubelet's default hard eviction signals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PressureThresholds {
    /// MemoryPressure when available memory falls below this many bytes (kubelet: 100Mi).
    pub memory_available_bytes: u64,
    /// DiskPressure when the filesystem of the root directory has less than this percentage free.
    pub disk_available_percent: u8,
    /// PIDPressure when fewer than this percentage of `pid_max` process IDs are free.
    pub pid_available_percent: u8,
}

impl Default for PressureThresholds {
    fn default() -> Self {
        Self {
            memory_available_bytes: 100 * 1024 * 1024,
            disk_available_percent: 10,
            pid_available_percent: 10,
        }
    }
}

/// What edged-shim needs to know. Build with [`EdgedSettings::from_config`], then adjust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgedSettings {
    /// The node name (`hostnameOverride`).
    pub node_name: String,
    /// Address reported as `InternalIP`; `None` picks the first non-loopback address.
    pub node_ip: Option<IpAddr>,
    /// Extra node labels (`nodeLabels`).
    pub node_labels: BTreeMap<String, String>,
    /// Period of node status patches (`nodeStatusUpdateFrequency`, KubeEdge default 10 s).
    pub node_status_update_frequency: Duration,
    /// `pods` in capacity and allocatable (`maxPods`, default 110).
    pub max_pods: u32,
    /// Where pod volumes are written (`rootDirectory`, default `/var/lib/edged`).
    pub root_directory: PathBuf,
    /// Directory for container logs (kubelet: `/var/log/pods`).
    pub pod_log_directory: PathBuf,
    /// Cgroup parent for pod sandboxes (`/kubepods` style); the pod UID is appended.
    pub cgroup_parent: Option<String>,
    /// `nodeInfo.kubeletVersion` as KubeEdge reports it.
    pub kubelet_version: String,
    /// Pressure thresholds for node conditions.
    pub thresholds: PressureThresholds,
    /// Timeout for each runtime call.
    pub runtime_request_timeout: Duration,
    /// Period of the pod sync pass (restarts, status).
    pub pod_sync_period: Duration,
}

impl EdgedSettings {
    /// Settings from the `modules.edged` section with KubeEdge defaults for what it lacks.
    pub fn from_config(edged: &config::Edged) -> Self {
        Self {
            node_name: edged.hostname_override.clone(),
            node_ip: None,
            node_labels: BTreeMap::new(),
            node_status_update_frequency: Duration::from_secs(10),
            max_pods: 110,
            root_directory: PathBuf::from("/var/lib/edged"),
            pod_log_directory: PathBuf::from("/var/log/pods"),
            cgroup_parent: None,
            kubelet_version: "v1.30.7-kubeedge-v1.21.2".to_owned(),
            thresholds: PressureThresholds::default(),
            runtime_request_timeout: Duration::from_secs(120),
            pod_sync_period: Duration::from_secs(2),
        }
    }
}
