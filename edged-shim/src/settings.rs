//! Validated settings edged-shim runs with, taken by value.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cgroup::{CgroupDriver, CgroupLayout};
use crate::dns::DnsSettings;

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
    /// How often the node status is computed (`nodeStatusUpdateFrequency`, KubeEdge default
    /// 10 s); it is sent when it changed.
    pub node_status_update_frequency: Duration,
    /// An unchanged node status is sent again after this long (`nodeStatusReportFrequency`,
    /// default 5 min): with the Lease as the heartbeat, as the kubelet does.
    pub node_status_report_frequency: Duration,
    /// Lifetime of the node Lease (`nodeLeaseDurationSeconds`, default 40 s), renewed every
    /// quarter of it.
    pub node_lease_duration: Duration,
    /// `pods` in capacity and allocatable (`maxPods`, default 110).
    pub max_pods: u32,
    /// Where pod volumes are written (`rootDirectory`, default `/var/lib/edged`).
    pub root_directory: PathBuf,
    /// Directory for container logs (kubelet: `/var/log/pods`).
    pub pod_log_directory: PathBuf,
    /// Where pods' cgroups go (`cgroupDriver`, `cgroupsPerQOS`, `cgroupRoot`).
    pub cgroups: CgroupLayout,
    /// `nodeInfo.kubeletVersion` as KubeEdge reports it.
    pub kubelet_version: String,
    /// Pressure thresholds for node conditions.
    pub thresholds: PressureThresholds,
    /// Timeout for each runtime call.
    pub runtime_request_timeout: Duration,
    /// Period of the pod sync pass (restarts, status).
    pub pod_sync_period: Duration,
    /// How often every pod's configmap and secret volume files are checked against the stored
    /// objects (`syncFrequency`, default 1 min); a cloud change rewrites them at once anyway.
    pub sync_frequency: Duration,
    /// Pods' DNS: `clusterDNS`, `clusterDomain`, `resolvConf`.
    pub dns: DnsSettings,
}

impl EdgedSettings {
    /// Settings from the validated `modules.edged` section; zero or empty values fall back
    /// to KubeEdge's defaults.
    pub fn from_config(edged: &config::Edged) -> Self {
        let k = &edged.tailored_kubelet_config;
        let or = |d: Duration, default: u64| {
            if d.is_zero() {
                Duration::from_secs(default)
            } else {
                d
            }
        };
        let path_or =
            |p: &str, default: &str| PathBuf::from(if p.is_empty() { default } else { p });
        Self {
            node_name: edged.hostname_override.clone(),
            node_ip: edged.node_ip.parse().ok(),
            node_labels: edged.node_labels.clone(),
            node_status_update_frequency: or(k.node_status_update_frequency.as_duration(), 10),
            node_status_report_frequency: or(k.node_status_report_frequency.as_duration(), 300),
            node_lease_duration: Duration::from_secs(
                u64::try_from(k.node_lease_duration_seconds)
                    .ok()
                    .filter(|s| *s > 0)
                    .unwrap_or(40),
            ),
            max_pods: u32::try_from(k.max_pods)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(110),
            root_directory: path_or(&edged.root_directory, "/var/lib/kubelet"),
            pod_log_directory: path_or(&k.pod_logs_dir, "/var/log/pods"),
            cgroups: CgroupLayout {
                driver: if k.cgroup_driver == "systemd" {
                    CgroupDriver::Systemd
                } else {
                    CgroupDriver::Cgroupfs
                },
                per_qos: k.cgroups_per_qos,
                root: k.cgroup_root.clone(),
                mount: PathBuf::from(crate::cgroup::MOUNT),
            },
            kubelet_version: "v1.30.7-kubeedge-v1.21.2".to_owned(),
            thresholds: PressureThresholds::default(),
            runtime_request_timeout: or(k.runtime_request_timeout.as_duration(), 120),
            pod_sync_period: Duration::from_secs(2),
            sync_frequency: or(k.sync_frequency.as_duration(), 60),
            dns: DnsSettings {
                // Validation rejects an entry that is not an IP address.
                cluster_dns: k
                    .cluster_dns
                    .iter()
                    .filter_map(|s| s.parse().ok())
                    .collect(),
                cluster_domain: k.cluster_domain.trim_end_matches('.').to_owned(),
                resolv_conf: (!k.resolv_conf.is_empty()).then(|| PathBuf::from(&k.resolv_conf)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_config_takes_the_kubelet_keys() {
        let mut edged = config::Edged {
            hostname_override: "n1".to_owned(),
            node_ip: "192.168.1.50".to_owned(),
            root_directory: "/srv/edged".to_owned(),
            ..config::Edged::default()
        };
        edged.tailored_kubelet_config.max_pods = 20;
        edged.tailored_kubelet_config.node_status_update_frequency =
            config::GoDuration::from_secs(5);
        edged.tailored_kubelet_config.node_status_report_frequency =
            config::GoDuration::from_secs(60);
        edged.tailored_kubelet_config.node_lease_duration_seconds = 20;
        let s = EdgedSettings::from_config(&edged);
        assert_eq!(s.node_status_report_frequency, Duration::from_secs(60));
        assert_eq!(s.node_lease_duration, Duration::from_secs(20));
        assert_eq!(s.node_name, "n1");
        assert_eq!(s.node_ip, "192.168.1.50".parse().ok());
        assert_eq!(s.root_directory, PathBuf::from("/srv/edged"));
        assert_eq!(s.max_pods, 20);
        assert_eq!(s.node_status_update_frequency, Duration::from_secs(5));
    }

    #[test]
    fn zero_values_fall_back_to_defaults() {
        let mut edged = config::Edged::default();
        edged.tailored_kubelet_config.max_pods = 0;
        edged.tailored_kubelet_config.node_status_update_frequency =
            config::GoDuration::from_secs(0);
        let s = EdgedSettings::from_config(&edged);
        assert_eq!(s.max_pods, 110);
        assert_eq!(s.node_status_update_frequency, Duration::from_secs(10));
        assert_eq!(s.node_status_report_frequency, Duration::from_secs(300));
        assert_eq!(s.node_lease_duration, Duration::from_secs(40));
        assert_eq!(s.node_ip, None);
    }
}
