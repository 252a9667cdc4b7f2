//! The subset of a Pod edged-shim acts on, parsed leniently from the cloud's Pod JSON.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

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
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ObjectMeta {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) uid: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) deletion_timestamp: Option<String>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
