//! `modules.edged`: the node name, the runtime endpoint, and the kubelet subset KubeEdge carries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::de;
use crate::duration::GoDuration;

/// `modules.edged` (KubeEdge inlines its `TailoredKubeletFlag` keys here, hence
/// `hostnameOverride` at this level).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Edged {
    /// Module switch.
    pub enable: bool,
    /// Report pod events to the cloud.
    pub report_event: bool,
    /// The node name: `node_id` header, certificate CN, URL path segment.
    pub hostname_override: String,
    /// Address reported for the node; empty = the address that reaches the cloud.
    #[serde(rename = "nodeIP", skip_serializing_if = "String::is_empty")]
    pub node_ip: String,
    /// Interface whose address becomes the node IP (overrides `nodeIP`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub custom_interface_name: String,
    /// Namespace of edged's startup pod-list query.
    pub register_node_namespace: String,
    /// Labels added when the node registers.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de::null_as_default"
    )]
    pub node_labels: BTreeMap<String, String>,
    /// Image of the pod sandbox (pause) container.
    pub pod_sandbox_image: String,
    /// Directory for pod volumes and plugin state.
    pub root_directory: String,
    /// Register the node as schedulable.
    pub register_schedulable: bool,
    /// Minimum age of a finished container before garbage collection.
    #[serde(rename = "minimumGCAge")]
    pub minimum_gc_age: GoDuration,
    /// Old instances kept per container.
    #[serde(deserialize_with = "de::int32")]
    pub max_per_pod_container_count: i32,
    /// Old container instances kept in total (-1 = no limit).
    #[serde(deserialize_with = "de::int32")]
    pub max_container_count: i32,
    /// cgroup for the container runtime.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub runtime_cgroups: String,
    /// KubeEdge flag kept for compatibility.
    #[serde(skip_serializing_if = "de::is_false")]
    pub keep_terminated_pod_volumes: bool,
    /// KubeEdge flag kept for compatibility.
    #[serde(skip_serializing_if = "de::is_false")]
    pub seccomp_default: bool,
    /// KubeEdge flag kept for compatibility.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub experimental_mounter_path: String,
    /// KubeEdge flag kept for compatibility.
    #[serde(skip_serializing_if = "de::is_false")]
    pub experimental_node_allocatable_ignore_eviction_threshold: bool,
    /// KubeEdge flag kept for compatibility (Windows only).
    #[serde(skip_serializing_if = "de::is_false")]
    pub windows_service: bool,
    /// KubeEdge flag kept for compatibility (Windows only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub windows_priority_class: String,
    /// KubeEdge's bandwidth manager switch.
    #[serde(skip_serializing_if = "de::is_false")]
    pub bandwidth_manager: bool,
    /// The kubelet configuration subset edged honours.
    #[serde(deserialize_with = "de::null_as_default")]
    pub tailored_kubelet_config: TailoredKubeletConfig,
}

/// `modules.edged.tailoredKubeletConfig`: the keys we use are typed; every other kubelet key is
/// kept as written in [`rest`](Self::rest) (KubeEdge's defaults fill the ones left out), printed
/// back and never warned about.
///
/// String keys whose default is not empty (`imageServiceEndpoint`, `clusterDomain`, `resolvConf`,
/// `staticPodPath`, `podLogsDir`) are printed even when empty: left out, an explicit "" would
/// load back as the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TailoredKubeletConfig {
    /// CRI socket, `unix:///run/containerd/containerd.sock`.
    pub container_runtime_endpoint: String,
    /// CRI image service socket; empty = `containerRuntimeEndpoint`.
    pub image_service_endpoint: String,
    /// How often the node status is computed (and posted).
    pub node_status_update_frequency: GoDuration,
    /// How often an unchanged node status is posted.
    pub node_status_report_frequency: GoDuration,
    /// Period of the full pod sync.
    pub sync_frequency: GoDuration,
    /// Timeout of one runtime request (except long-running ones).
    pub runtime_request_timeout: GoDuration,
    /// Pods this node accepts.
    #[serde(deserialize_with = "de::int32")]
    pub max_pods: i32,
    /// `cgroupfs` or `systemd`.
    pub cgroup_driver: String,
    /// A cgroup per QoS class and per pod (`<cgroupRoot>/kubepods/<qos>/pod<uid>`).
    #[serde(rename = "cgroupsPerQOS")]
    pub cgroups_per_qos: bool,
    /// The cgroup the pods' tree goes under; empty for the top.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cgroup_root: String,
    /// Cluster DNS domain added to pods' search list.
    pub cluster_domain: String,
    /// Cluster DNS servers for pods.
    #[serde(
        rename = "clusterDNS",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de::null_as_default"
    )]
    pub cluster_dns: Vec<String>,
    /// The node's resolver file, the base of pods' DNS; empty: none (pods get localhost).
    pub resolv_conf: String,
    /// Directory of static pod manifests.
    pub static_pod_path: String,
    /// Directory of pod log files.
    pub pod_logs_dir: String,
    /// Register the node with the API server.
    pub register_node: bool,
    /// Lifetime of the node's Lease in `kube-node-lease`; it is renewed every quarter of it.
    #[serde(deserialize_with = "de::int32")]
    pub node_lease_duration_seconds: i32,
    /// Every other kubelet key, as written, over KubeEdge's defaults.
    #[serde(flatten, deserialize_with = "rest_over_defaults")]
    pub rest: BTreeMap<String, Value>,
}

impl Default for Edged {
    fn default() -> Self {
        Self {
            enable: true,
            report_event: false,
            hostname_override: String::new(),
            node_ip: String::new(),
            custom_interface_name: String::new(),
            register_node_namespace: "default".to_owned(),
            node_labels: BTreeMap::new(),
            pod_sandbox_image: "kubeedge/pause:3.6".to_owned(),
            root_directory: "/var/lib/kubelet".to_owned(),
            register_schedulable: true,
            minimum_gc_age: GoDuration::from_secs(0),
            max_per_pod_container_count: 1,
            max_container_count: -1,
            runtime_cgroups: String::new(),
            keep_terminated_pod_volumes: false,
            seccomp_default: false,
            experimental_mounter_path: String::new(),
            experimental_node_allocatable_ignore_eviction_threshold: false,
            windows_service: false,
            windows_priority_class: String::new(),
            bandwidth_manager: false,
            tailored_kubelet_config: TailoredKubeletConfig::default(),
        }
    }
}

/// KubeEdge's defaults for the kubelet keys we keep untyped, as they appear in
/// `edgecore --defaultconfig`.
const DEFAULT_REST: &str = r#"
address: 127.0.0.1
configMapAndSecretChangeDetectionStrategy: Get
containerLogMaxFiles: 5
containerLogMaxSize: 10Mi
containerLogMaxWorkers: 1
containerLogMonitorInterval: 10s
contentType: application/json
cpuCFSQuota: true
cpuCFSQuotaPeriod: 100ms
cpuManagerPolicy: none
cpuManagerReconcilePeriod: 10s
crashLoopBackOff: {}
enableControllerAttachDetach: true
enableDebugFlagsHandler: true
enableDebuggingHandlers: true
enableProfilingHandler: true
enableSystemLogHandler: true
enforceNodeAllocatable:
- pods
eventBurst: 100
eventRecordQPS: 50
evictionHard:
  imagefs.available: 15%
  imagefs.inodesFree: 5%
  memory.available: 100Mi
  nodefs.available: 10%
  nodefs.inodesFree: 5%
evictionPressureTransitionPeriod: 5m0s
failCgroupV1: false
failSwapOn: false
fileCheckFrequency: 20s
hairpinMode: promiscuous-bridge
imageGCHighThresholdPercent: 85
imageGCLowThresholdPercent: 80
imageMaximumGCAge: 0s
imageMinimumGCAge: 2m0s
iptablesDropBit: 15
iptablesMasqueradeBit: 14
localStorageCapacityIsolation: true
logging:
  flushFrequency: 5s
  format: text
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
makeIPTablesUtilChains: true
maxOpenFiles: 1000000
memoryManagerPolicy: None
memorySwap: {}
memoryThrottlingFactor: 0.9
nodeStatusMaxImages: 0
oomScoreAdj: -999
podPidsLimit: -1
readOnlyPort: 10350
registryBurst: 10
registryPullQPS: 5
seccompDefault: false
serializeImagePulls: true
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
streamingConnectionIdleTimeout: 4h0m0s
topologyManagerPolicy: none
topologyManagerScope: container
volumePluginDir: /usr/libexec/kubernetes/kubelet-plugins/volume/exec/
volumeStatsAggPeriod: 1m0s
"#;

/// KubeEdge's defaults for the untyped kubelet keys.
fn default_rest() -> BTreeMap<String, Value> {
    serde_yaml_ng::from_str(DEFAULT_REST)
        .expect("DEFAULT_REST is a constant YAML mapping, checked by a unit test")
}

/// The untyped keys as written; KubeEdge's default for each key left out.
fn rest_over_defaults<'de, D>(d: D) -> Result<BTreeMap<String, Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let mut rest = default_rest();
    rest.extend(BTreeMap::<String, Value>::deserialize(d)?);
    Ok(rest)
}

impl Default for TailoredKubeletConfig {
    fn default() -> Self {
        Self {
            container_runtime_endpoint: "unix:///run/containerd/containerd.sock".to_owned(),
            image_service_endpoint: "unix:///run/containerd/containerd.sock".to_owned(),
            node_status_update_frequency: GoDuration::from_secs(10),
            node_status_report_frequency: GoDuration::from_secs(5 * 60),
            sync_frequency: GoDuration::from_secs(60),
            runtime_request_timeout: GoDuration::from_secs(2 * 60),
            max_pods: 110,
            cgroup_driver: "cgroupfs".to_owned(),
            cgroups_per_qos: true,
            cgroup_root: String::new(),
            cluster_domain: "cluster.local".to_owned(),
            cluster_dns: Vec::new(),
            resolv_conf: "/etc/resolv.conf".to_owned(),
            static_pod_path: "/etc/kubeedge/manifests".to_owned(),
            pod_logs_dir: "/var/log/pods".to_owned(),
            register_node: true,
            node_lease_duration_seconds: 40,
            rest: default_rest(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rest_parses_and_holds_no_typed_key() {
        let rest: BTreeMap<String, Value> = serde_yaml_ng::from_str(DEFAULT_REST).unwrap();
        assert_eq!(rest.len(), 54);
        let typed = serde_yaml_ng::to_value(TailoredKubeletConfig {
            rest: BTreeMap::new(),
            ..TailoredKubeletConfig::default()
        })
        .unwrap();
        let typed = typed.as_mapping().unwrap();
        for key in rest.keys() {
            assert!(
                !typed.contains_key(key.as_str()),
                "{key} is typed and in DEFAULT_REST"
            );
        }
    }

    #[test]
    fn unknown_kubelet_keys_are_kept() {
        let k: TailoredKubeletConfig =
            serde_yaml_ng::from_str("maxPods: 20\nfooBar: {x: 1}\nnodeStatusUpdateFrequency: 1m")
                .unwrap();
        assert_eq!(k.max_pods, 20);
        assert_eq!(k.node_status_update_frequency, GoDuration::from_secs(60));
        assert_eq!(
            k.rest.get("fooBar"),
            Some(&serde_yaml_ng::from_str::<Value>("{x: 1}").unwrap())
        );
        // Untyped keys left out get KubeEdge's defaults; written ones win.
        assert_eq!(k.rest.get("readOnlyPort"), Some(&Value::from(10350)));
        let k: TailoredKubeletConfig = serde_yaml_ng::from_str("readOnlyPort: 0").unwrap();
        assert_eq!(k.rest.get("readOnlyPort"), Some(&Value::from(0)));
        assert_eq!(k.rest.len(), 54);
    }
}
