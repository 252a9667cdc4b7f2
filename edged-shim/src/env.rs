//! Container environment from `env` and `envFrom`, with configmaps and secrets from metamanager.

use std::collections::HashMap;

use base64::Engine;
use serde_json::Value;

use crate::meta::{MetaClient, MetaError};
use crate::pod::{Container, Pod};
use crate::resources::resource_field_value;

/// Why a container's environment could not be built (`CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvError {
    #[error(
        "{kind} {namespace}/{name} not found; create it in the cloud or mark the reference optional"
    )]
    Missing {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("key {key:?} not found in {kind} {namespace}/{name}")]
    MissingKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("{kind} {namespace}/{name} key {key:?} is not valid base64 or UTF-8")]
    BadValue {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("env {name}: resourceFieldRef {why}")]
    ResourceField { name: String, why: String },
    #[error("cannot fetch {kind} {namespace}/{name}")]
    Fetch {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: MetaError,
    },
}

/// Configmaps or secrets, decoded to key → value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    ConfigMap,
    Secret,
}

impl Source {
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Source::ConfigMap => "configmap",
            Source::Secret => "secret",
        }
    }
}

/// Decoded data of one configmap or secret: key → bytes.
pub(crate) type ObjectData = HashMap<String, Vec<u8>>;

/// Fetches and decodes configmaps and secrets once per pod sync.
pub(crate) struct Objects<'a> {
    meta: &'a dyn MetaClient,
    namespace: &'a str,
    cache: HashMap<(Source, String), Option<ObjectData>>,
}

impl<'a> Objects<'a> {
    pub(crate) fn new(meta: &'a dyn MetaClient, namespace: &'a str) -> Self {
        Self {
            meta,
            namespace,
            cache: HashMap::new(),
        }
    }

    /// The data of a configmap or secret, `None` when it does not exist.
    pub(crate) async fn get(
        &mut self,
        source: Source,
        name: &str,
    ) -> Result<Option<HashMap<String, Vec<u8>>>, EnvError> {
        if let Some(hit) = self.cache.get(&(source, name.to_owned())) {
            return Ok(hit.clone());
        }
        let fetched = match source {
            Source::ConfigMap => self.meta.get_configmap(self.namespace, name).await,
            Source::Secret => self.meta.get_secret(self.namespace, name).await,
        }
        .map_err(|e| EnvError::Fetch {
            kind: source.kind(),
            namespace: self.namespace.to_owned(),
            name: name.to_owned(),
            source: e,
        })?;
        let decoded = match fetched {
            None => None,
            Some(obj) => Some(decode(source, self.namespace, name, &obj)?),
        };
        self.cache
            .insert((source, name.to_owned()), decoded.clone());
        Ok(decoded)
    }

    pub(crate) fn namespace(&self) -> &str {
        self.namespace
    }

    /// A token of service account `account` in this namespace (see
    /// [`MetaClient::service_account_token`]).
    pub(crate) async fn service_account_token(
        &self,
        account: &str,
        request: Value,
    ) -> Result<Value, crate::meta::MetaError> {
        self.meta
            .service_account_token(self.namespace, account, request)
            .await
    }
}

/// `data` (text; base64 for secrets) and `binaryData`/`stringData` of an object.
fn decode(
    source: Source,
    namespace: &str,
    name: &str,
    obj: &Value,
) -> Result<HashMap<String, Vec<u8>>, EnvError> {
    let mut out = HashMap::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = |key: &str| EnvError::BadValue {
        kind: source.kind(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
    };
    let entries = |field: &str| {
        obj.get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.iter())
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect::<Vec<_>>()
    };
    match source {
        Source::ConfigMap => {
            for (k, v) in entries("data") {
                out.insert(k, v.into_bytes());
            }
            for (k, v) in entries("binaryData") {
                out.insert(k.clone(), b64.decode(v).map_err(|_| bad(&k))?);
            }
        }
        Source::Secret => {
            for (k, v) in entries("data") {
                out.insert(k.clone(), b64.decode(v).map_err(|_| bad(&k))?);
            }
            for (k, v) in entries("stringData") {
                out.insert(k, v.into_bytes());
            }
        }
    }
    Ok(out)
}

/// Kubernetes `$(VAR)` expansion: known names are replaced, unknown references stay as
/// written, and `$$` is an escaped `$`.
pub(crate) fn expand_refs(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What the downward API tells of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodeFacts {
    /// `status.hostIP` (and `status.podIP` of host-network pods).
    pub(crate) ip: String,
    /// Allocatable CPU in millicores and memory in bytes: a container's limits where it sets
    /// none (`resourceFieldRef: limits.cpu` of an unlimited container).
    pub(crate) cpu_milli: i128,
    pub(crate) memory_bytes: i128,
}

/// A `fieldRef` of the downward API, as env vars and downwardAPI files see it (labels and
/// annotations as the kubelet writes them: sorted `key="value"` lines; one of them by key with
/// `metadata.labels['<key>']`).
pub(crate) fn field_value(pod: &Pod, node: &NodeFacts, path: &str) -> String {
    let host_ip = node.ip.as_str();
    let by_key = |prefix: &str, m: &std::collections::BTreeMap<String, String>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(m.get(key).cloned().unwrap_or_default())
    };
    if let Some(v) = by_key("metadata.labels['", &pod.metadata.labels)
        .or_else(|| by_key("metadata.annotations['", &pod.metadata.annotations))
    {
        return v;
    }
    let lines = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={}\n", serde_json::Value::String(v.clone())))
            .collect::<String>()
    };
    match path {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "metadata.labels" => lines(&pod.metadata.labels),
        "metadata.annotations" => lines(&pod.metadata.annotations),
        "spec.nodeName" => pod.spec.node_name.clone(),
        "spec.serviceAccountName" => pod.spec.service_account_name.clone(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_owned(),
        "status.podIP" | "status.podIPs" if pod.spec.host_network => host_ip.to_owned(),
        _ => String::new(),
    }
}

/// The environment of `container`: `envFrom` first, then `env`, later names winning.
pub(crate) async fn container_env(
    pod: &Pod,
    container: &Container,
    node: &NodeFacts,
    pod_ip: Option<&str>,
    objects: &mut Objects<'_>,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = vars.iter_mut().find(|(name, _)| *name == k) {
            slot.1 = v;
        } else {
            vars.push((k, v));
        }
    };
    for from in &container.env_from {
        let (source, r) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (Source::ConfigMap, r),
            (None, Some(r)) => (Source::Secret, r),
            (None, None) => continue,
        };
        match objects.get(source, &r.name).await? {
            Some(data) => {
                let mut keys: Vec<_> = data.into_iter().collect();
                keys.sort();
                for (k, v) in keys {
                    let text = String::from_utf8(v).map_err(|_| EnvError::BadValue {
                        kind: source.kind(),
                        namespace: objects.namespace().to_owned(),
                        name: r.name.clone(),
                        key: k.clone(),
                    })?;
                    set(&mut vars, format!("{}{k}", from.prefix), text);
                }
            }
            None if r.optional == Some(true) => {}
            None => {
                return Err(EnvError::Missing {
                    kind: source.kind(),
                    namespace: objects.namespace().to_owned(),
                    name: r.name.clone(),
                });
            }
        }
    }
    for var in &container.env {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let keyed = match (&from.config_map_key_ref, &from.secret_key_ref) {
                    (Some(r), _) => Some((Source::ConfigMap, r)),
                    (None, Some(r)) => Some((Source::Secret, r)),
                    (None, None) => None,
                };
                if let Some((source, r)) = keyed {
                    let optional = r.optional == Some(true);
                    let data = objects.get(source, &r.name).await?;
                    let Some(data) = data else {
                        if optional {
                            continue;
                        }
                        return Err(EnvError::Missing {
                            kind: source.kind(),
                            namespace: objects.namespace().to_owned(),
                            name: r.name.clone(),
                        });
                    };
                    let Some(bytes) = data.get(&r.key) else {
                        if optional {
                            continue;
                        }
                        return Err(EnvError::MissingKey {
                            kind: source.kind(),
                            namespace: objects.namespace().to_owned(),
                            name: r.name.clone(),
                            key: r.key.clone(),
                        });
                    };
                    String::from_utf8(bytes.clone()).map_err(|_| EnvError::BadValue {
                        kind: source.kind(),
                        namespace: objects.namespace().to_owned(),
                        name: r.name.clone(),
                        key: r.key.clone(),
                    })?
                } else if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "status.podIP" | "status.podIPs" => pod_ip.unwrap_or_default().to_owned(),
                        path => field_value(pod, node, path),
                    }
                } else if let Some(r) = &from.resource_field_ref {
                    resource_field_value(pod, Some(&container.name), r, node).map_err(|why| {
                        EnvError::ResourceField {
                            name: var.name.clone(),
                            why,
                        }
                    })?
                } else {
                    String::new()
                }
            }
            (Some(v), None) => expand_refs(v, &vars),
            (None, None) => String::new(),
        };
        set(&mut vars, var.name.clone(), value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ip: &str) -> NodeFacts {
        NodeFacts {
            ip: ip.to_owned(),
            cpu_milli: 4000,
            memory_bytes: 8 << 30,
        }
    }
    use crate::testutil::RecordingMeta;
    use serde_json::json;

    fn pod(container: Value) -> Pod {
        Pod::from_json(&json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"nodeName": "n1", "containers": [container]},
        }))
        .unwrap()
    }

    /// The first container's environment on a node at 10.0.0.1.
    async fn env_of(p: &Pod, meta: &RecordingMeta) -> Vec<(String, String)> {
        let mut objects = Objects::new(meta, "ns");
        container_env(
            p,
            &p.spec.containers[0],
            &node("10.0.0.1"),
            Some("10.0.0.1"),
            &mut objects,
        )
        .await
        .unwrap()
    }

    fn meta() -> std::sync::Arc<RecordingMeta> {
        let (meta, _calls) = RecordingMeta::new();
        meta.put(
            "configmap",
            "ns",
            "cfg",
            json!({"data": {"greeting": "hello", "B": "b"}}),
        );
        // "s3cret" in base64
        meta.put(
            "secret",
            "ns",
            "sec",
            json!({"data": {"password": "czNjcmV0"}}),
        );
        meta
    }

    #[tokio::test]
    async fn downward_api_env_fields_and_resources() {
        let meta = meta();
        let p = Pod::from_json(&json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                         "labels": {"app": "web"}, "annotations": {"team": "edge"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa", "hostNetwork": true,
                     "containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}},
                "env": [
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}},
                    {"name": "NONE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['none']"}}},
                    {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "HOST_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIPs"}}},
                    {"name": "MEM_MI", "valueFrom": {"resourceFieldRef":
                        {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}
                ]}]}
        }))
        .unwrap();
        let env = env_of(&p, &meta).await;
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("APP", "web"),
                ("TEAM", "edge"),
                ("NONE", ""),
                ("SA", "sa"),
                ("POD_IP", "10.0.0.1"),
                ("HOST_IPS", "10.0.0.1"),
                ("MEM_MI", "64"),
                ("CPUS", "4")
            ]
        );
        let mut bad = p.clone();
        bad.spec.containers[0].env = vec![crate::pod::EnvVar {
            name: "X".to_owned(),
            value: None,
            value_from: Some(crate::pod::EnvVarSource {
                resource_field_ref: Some(crate::resources::ResourceFieldRef {
                    resource: "limits.gpu-ish".to_owned(),
                    divisor: Some(json!("0")),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }];
        let mut objects = Objects::new(meta.as_ref(), "ns");
        let err = container_env(&bad, &bad.spec.containers[0], &node(""), None, &mut objects)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("env X: resourceFieldRef"), "{err}");
    }

    #[tokio::test]
    async fn value_from_configmap_secret_and_field() {
        let meta = meta();
        let p = pod(json!({"name": "c", "env": [
            {"name": "PLAIN", "value": "x"},
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "none", "key": "k", "optional": true}}},
        ]}));
        let env = env_of(&p, &meta).await;
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("PLAIN", "x"),
                ("GREETING", "hello"),
                ("PASSWORD", "s3cret"),
                ("POD", "p")
            ]
        );
    }

    #[tokio::test]
    async fn env_from_with_prefix_then_env_overrides() {
        let meta = meta();
        let p = pod(json!({"name": "c",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CM_"}, {"secretRef": {"name": "sec"}}],
            "env": [{"name": "CM_B", "value": "override"}]}));
        let mut objects = Objects::new(meta.as_ref(), "ns");
        let env = container_env(&p, &p.spec.containers[0], &node(""), None, &mut objects)
            .await
            .unwrap();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("CM_B", "override"),
                ("CM_greeting", "hello"),
                ("password", "s3cret")
            ]
        );
    }

    #[tokio::test]
    async fn missing_objects_and_keys_name_what_is_missing() {
        let meta = meta();
        let p = pod(json!({"name": "c", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]}));
        let mut objects = Objects::new(meta.as_ref(), "ns");
        let err = container_env(&p, &p.spec.containers[0], &node(""), None, &mut objects)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "configmap ns/absent not found; create it in the cloud or mark the reference optional"
        );
        let p = pod(json!({"name": "c", "env": [
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "nope"}}}]}));
        let err = container_env(&p, &p.spec.containers[0], &node(""), None, &mut objects)
            .await
            .unwrap_err();
        assert!(matches!(err, EnvError::MissingKey { ref key, .. } if key == "nope"));
    }

    #[test]
    fn dollar_references_expand_like_kubernetes() {
        let vars = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two".to_owned()),
        ];
        assert_eq!(expand_refs("x$(A)y$(B)", &vars), "x1ytwo");
        assert_eq!(
            expand_refs("$(NOPE) $$(A) $$ $A $(", &vars),
            "$(NOPE) $(A) $ $A $("
        );
        assert_eq!(expand_refs("ünïcode $(B)€", &vars), "ünïcode two€");
    }

    #[tokio::test]
    async fn env_values_reference_earlier_vars() {
        let meta = meta();
        let p = pod(json!({"name": "c", "env": [
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "MSG", "value": "$(GREETING) world $(LATER)"},
            {"name": "LATER", "value": "x"}
        ]}));
        let mut objects = Objects::new(meta.as_ref(), "ns");
        let env = container_env(&p, &p.spec.containers[0], &node(""), None, &mut objects)
            .await
            .unwrap();
        assert_eq!(
            env[1],
            ("MSG".to_owned(), "hello world $(LATER)".to_owned())
        );
    }

    proptest::proptest! {
        #[test]
        fn expansion_never_panics_and_keeps_plain_text(s in "\\PC*", v in "[a-z]{0,8}") {
            let vars = vec![("A".to_owned(), v.clone())];
            let out = expand_refs(&s, &vars);
            if !s.contains('$') {
                proptest::prop_assert_eq!(&out, &s);
                proptest::prop_assert_eq!(expand_refs(&format!("{s}$(A)"), &vars), format!("{s}{v}"));
            }
        }
    }

    #[test]
    fn bad_base64_in_a_secret_is_an_error() {
        let err = decode(Source::Secret, "ns", "s", &json!({"data": {"k": "!!"}})).unwrap_err();
        assert!(matches!(err, EnvError::BadValue { .. }));
    }
}
