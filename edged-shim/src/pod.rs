//! The subset of a Pod edged-shim acts on, parsed leniently from the cloud's Pod JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::dns::PodDnsConfig;
use crate::probe::{ContainerPort, Probe};
use crate::resources::{QosClass, ResourceFieldRef, ResourceRequirements, qos_class};

/// Why a Pod JSON could not be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "pod JSON is not usable ({at}): {source}; the cloud sent an object edged-shim cannot parse"
)]
pub(crate) struct PodParseError {
    at: String,
    #[source]
    source: serde_json::Error,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Pod {
    pub(crate) metadata: ObjectMeta,
    pub(crate) spec: PodSpec,
    /// The status as the cloud last saw it; only what edged-shim keeps from it.
    pub(crate) status: PodStatusIn,
}

impl Pod {
    /// Init containers, then app containers: the order of edged's container records.
    pub(crate) fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.spec
            .init_containers
            .iter()
            .chain(&self.spec.containers)
    }

    /// The `idx`th of [`Pod::all_containers`].
    pub(crate) fn container_at(&self, idx: usize) -> Option<&Container> {
        self.all_containers().nth(idx)
    }

    /// The QoS class of its init and app containers' requests and limits.
    pub(crate) fn qos_class(&self) -> QosClass {
        qos_class(self.all_containers().map(|c| &c.resources))
    }

    /// When the cloud marked the pod `PodScheduled=True` (a scheduler's time), if it did.
    pub(crate) fn scheduled_at(&self) -> Option<&str> {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "True")
            .and_then(|c| c.last_transition_time.as_deref())
            .filter(|t| !t.is_empty())
    }
}

/// The part of the cloud's pod status edged-shim reads.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct PodStatusIn {
    pub(crate) conditions: Vec<PodConditionIn>,
}

/// One condition of the cloud's pod status.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct PodConditionIn {
    #[serde(rename = "type")]
    pub(crate) type_: String,
    pub(crate) status: String,
    pub(crate) last_transition_time: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ObjectMeta {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) uid: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
    pub(crate) deletion_timestamp: Option<String>,
    /// The grace period the deletion asked for (`kubectl delete --grace-period`).
    pub(crate) deletion_grace_period_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
pub(crate) enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct PodSpec {
    pub(crate) containers: Vec<Container>,
    pub(crate) volumes: Vec<Volume>,
    pub(crate) restart_policy: RestartPolicy,
    pub(crate) host_network: bool,
    pub(crate) hostname: Option<String>,
    pub(crate) node_name: String,
    pub(crate) termination_grace_period_seconds: Option<u64>,
    /// The service account whose token a projected volume carries (`default` when unset).
    pub(crate) service_account_name: String,
    /// `ClusterFirst` (when unset), `ClusterFirstWithHostNet`, `Default` or `None`.
    pub(crate) dns_policy: Option<String>,
    pub(crate) dns_config: Option<PodDnsConfig>,
    /// Secrets with registry credentials for the pod's images.
    pub(crate) image_pull_secrets: Vec<LocalObjectReference>,
    /// Run in order, each to a clean exit, before the app containers.
    pub(crate) init_containers: Vec<Container>,
    pub(crate) priority_class_name: String,
}

/// `{name: ...}`: an object in the pod's namespace.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub(crate) struct LocalObjectReference {
    pub(crate) name: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
pub(crate) enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Container {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) command: Vec<String>,
    pub(crate) args: Vec<String>,
    pub(crate) working_dir: String,
    pub(crate) env: Vec<EnvVar>,
    pub(crate) env_from: Vec<EnvFromSource>,
    pub(crate) volume_mounts: Vec<VolumeMount>,
    pub(crate) image_pull_policy: Option<PullPolicy>,
    pub(crate) resources: ResourceRequirements,
    pub(crate) termination_message_path: Option<String>,
    /// `File` (the default) or `FallbackToLogsOnError`.
    pub(crate) termination_message_policy: Option<String>,
    pub(crate) ports: Vec<ContainerPort>,
    pub(crate) liveness_probe: Option<Probe>,
    pub(crate) readiness_probe: Option<Probe>,
    pub(crate) startup_probe: Option<Probe>,
}

impl Container {
    /// Kubernetes' default: `Always` for `:latest` or untagged images, else `IfNotPresent`.
    pub(crate) fn pull_policy(&self) -> PullPolicy {
        if let Some(p) = &self.image_pull_policy {
            return p.clone();
        }
        let without_digest = self.image.split('@').next().unwrap_or_default();
        let last = without_digest.rsplit('/').next().unwrap_or_default();
        match last.split_once(':') {
            Some((_, "latest")) | None if !self.image.contains('@') => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct EnvVar {
    pub(crate) name: String,
    pub(crate) value: Option<String>,
    pub(crate) value_from: Option<EnvVarSource>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct EnvVarSource {
    pub(crate) config_map_key_ref: Option<KeyRef>,
    pub(crate) secret_key_ref: Option<KeyRef>,
    pub(crate) field_ref: Option<FieldRef>,
    pub(crate) resource_field_ref: Option<ResourceFieldRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct KeyRef {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) optional: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct FieldRef {
    pub(crate) field_path: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct EnvFromSource {
    pub(crate) prefix: String,
    pub(crate) config_map_ref: Option<NameRef>,
    pub(crate) secret_ref: Option<NameRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct NameRef {
    pub(crate) name: String,
    pub(crate) optional: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct VolumeMount {
    pub(crate) name: String,
    pub(crate) mount_path: String,
    pub(crate) read_only: bool,
    pub(crate) sub_path: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Volume {
    pub(crate) name: String,
    pub(crate) config_map: Option<ObjectVolume>,
    pub(crate) secret: Option<SecretVolume>,
    pub(crate) empty_dir: Option<Value>,
    pub(crate) host_path: Option<HostPathVolume>,
    pub(crate) projected: Option<ProjectedVolume>,
    #[serde(rename = "downwardAPI")]
    pub(crate) downward_api: Option<DownwardApiVolume>,
}

/// A `projected` volume: several sources in one directory (every pod's `kube-api-access-*`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ProjectedVolume {
    pub(crate) sources: Vec<ProjectedSource>,
    pub(crate) default_mode: Option<u32>,
}

/// One source of a projected volume; exactly one field is set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ProjectedSource {
    pub(crate) service_account_token: Option<TokenProjection>,
    pub(crate) config_map: Option<ObjectProjection>,
    pub(crate) secret: Option<ObjectProjection>,
    #[serde(rename = "downwardAPI")]
    pub(crate) downward_api: Option<DownwardApiProjection>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct TokenProjection {
    pub(crate) audience: String,
    pub(crate) expiration_seconds: Option<i64>,
    pub(crate) path: String,
}

/// A configmap or secret inside a projected volume (both name the object `name`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ObjectProjection {
    pub(crate) name: String,
    pub(crate) items: Vec<KeyToPath>,
    pub(crate) optional: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DownwardApiProjection {
    pub(crate) items: Vec<DownwardApiFile>,
}

/// A plain `downwardAPI` volume.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DownwardApiVolume {
    pub(crate) items: Vec<DownwardApiFile>,
    pub(crate) default_mode: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DownwardApiFile {
    pub(crate) path: String,
    pub(crate) field_ref: Option<FieldRef>,
    pub(crate) resource_field_ref: Option<ResourceFieldRef>,
    pub(crate) mode: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct KeyToPath {
    pub(crate) key: String,
    pub(crate) path: String,
    pub(crate) mode: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ObjectVolume {
    pub(crate) name: String,
    pub(crate) items: Vec<KeyToPath>,
    pub(crate) default_mode: Option<u32>,
    pub(crate) optional: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct SecretVolume {
    pub(crate) secret_name: String,
    pub(crate) items: Vec<KeyToPath>,
    pub(crate) default_mode: Option<u32>,
    pub(crate) optional: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct HostPathVolume {
    pub(crate) path: String,
}

impl Pod {
    pub(crate) fn from_json(v: &Value) -> Result<Pod, PodParseError> {
        Pod::deserialize(v).map_err(|source| PodParseError {
            at: "Pod".to_owned(),
            source,
        })
    }

    /// `namespace/name`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// How long a container may take to stop, as the kubelet reckons it: the deletion's grace
    /// period once the pod is being deleted, else the spec's, else `default`; never under
    /// [`MIN_GRACE`].
    pub(crate) fn termination_grace(&self, default: Duration) -> Duration {
        let asked = match (
            &self.metadata.deletion_timestamp,
            self.metadata.deletion_grace_period_seconds,
        ) {
            (Some(_), Some(secs)) => Some(secs),
            _ => self.spec.termination_grace_period_seconds,
        };
        asked.map_or(default, Duration::from_secs).max(MIN_GRACE)
    }
}

/// The kubelet's shortest stop window: even a zero grace period gets it before SIGKILL.
pub(crate) const MIN_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_period_is_the_deletions_then_the_specs_and_at_least_two_seconds() {
        let default = Duration::from_secs(30);
        let pod = |meta: Value, spec: Value| {
            let mut m = serde_json::json!({"name": "p", "namespace": "ns", "uid": "u"});
            if let (Some(m), Value::Object(extra)) = (m.as_object_mut(), meta) {
                m.extend(extra);
            }
            Pod::from_json(&serde_json::json!({"metadata": m, "spec": spec})).unwrap()
        };
        let secs = Duration::from_secs;
        let none = serde_json::json!({});
        let spec10 = serde_json::json!({"terminationGracePeriodSeconds": 10});
        assert_eq!(
            pod(none.clone(), none.clone()).termination_grace(default),
            secs(30)
        );
        assert_eq!(
            pod(none.clone(), spec10.clone()).termination_grace(default),
            secs(10)
        );
        let deleting = |g: u64| serde_json::json!({"deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": g});
        assert_eq!(
            pod(deleting(5), spec10.clone()).termination_grace(default),
            secs(5)
        );
        // Without a deletionTimestamp the deletion's period means nothing.
        let stray = serde_json::json!({"deletionGracePeriodSeconds": 5});
        assert_eq!(
            pod(stray, spec10.clone()).termination_grace(default),
            secs(10)
        );
        // --grace-period=0 (or a 0 in the spec) still gives the containers the kubelet's minimum.
        assert_eq!(
            pod(deleting(0), spec10).termination_grace(default),
            MIN_GRACE
        );
        let spec0 = serde_json::json!({"terminationGracePeriodSeconds": 0});
        assert_eq!(pod(none, spec0).termination_grace(default), MIN_GRACE);
    }

    #[test]
    fn parses_the_insert_vector() {
        let path = format!(
            "{}/../tests/fixtures/vectors/pod-insert.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let msg: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let pod = Pod::from_json(&msg["content"]).unwrap();
        assert_eq!(pod.key(), "default/nginx-demo");
        assert_eq!(pod.metadata.uid, "8f0b7c2e-3d4a-4b9e-9a61-2f5c1e7d9a10");
        assert_eq!(pod.spec.restart_policy, RestartPolicy::Always);
        assert_eq!(pod.spec.containers[0].image, "nginx:1.27");
        assert_eq!(
            pod.spec.containers[0].pull_policy(),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            pod.spec.volumes[0].config_map.as_ref().unwrap().name,
            "app-config"
        );
        assert_eq!(
            pod.spec.containers[0].volume_mounts[0].mount_path,
            "/etc/app"
        );
    }

    #[test]
    fn default_pull_policy_follows_the_tag() {
        let c = |image: &str| Container {
            image: image.to_owned(),
            ..Container::default()
        };
        assert_eq!(c("busybox").pull_policy(), PullPolicy::Always);
        assert_eq!(c("busybox:latest").pull_policy(), PullPolicy::Always);
        assert_eq!(c("localhost:5000/app").pull_policy(), PullPolicy::Always);
        assert_eq!(
            c("localhost/app:local").pull_policy(),
            PullPolicy::IfNotPresent
        );
        assert_eq!(c("app@sha256:abcd").pull_policy(), PullPolicy::IfNotPresent);
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            "[a-zA-Z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            let keys = prop_oneof![
                Just("metadata".to_owned()),
                Just("spec".to_owned()),
                Just("containers".to_owned()),
                Just("name".to_owned()),
                Just("env".to_owned()),
                Just("volumes".to_owned()),
                "[a-z]{1,5}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_json_parses_or_errors_without_panicking(v in json_value()) {
            if let Ok(pod) = Pod::from_json(&v) {
                let _ = pod.key();
                for c in &pod.spec.containers {
                    let _ = c.pull_policy();
                }
            }
        }
    }

    #[test]
    fn wrong_types_are_an_error_not_a_panic() {
        let bad = serde_json::json!({"metadata": {"name": 5}});
        assert!(Pod::from_json(&bad).is_err());
    }
}
