//! KubeEdge's *application*: a request MetaServer cannot answer from the store, carried to
//! CloudCore's dynamicController, which runs it against kube-apiserver and answers with the same
//! record filled in (`docs/metaserver.md`, "Reads the edge does not have").
//!
//! The record is Go's `metaserver.Application` in `encoding/json` form: exported field names as
//! keys, `[]byte` fields as standard base64 (or `null`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `Application.Verb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    UpdateStatus,
    Patch,
    Delete,
}

impl Verb {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::UpdateStatus => "updatestatus",
            Self::Patch => "patch",
            Self::Delete => "delete",
        }
    }
}

/// What dynamicController said of an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `Approved`: the API server's answer (empty for a delete).
    Approved(Vec<u8>),
    /// `Rejected` with the API server's `Status` (`Error.ErrStatus`).
    Status(Value),
    /// `Rejected` (or any other status) with only a reason text.
    Failed { status: String, reason: String },
}

/// The record on the wire.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Application {
    #[serde(rename = "ID", default)]
    pub(crate) id: String,
    #[serde(rename = "Key", default)]
    pub(crate) key: String,
    #[serde(rename = "Verb", default)]
    pub(crate) verb: String,
    #[serde(rename = "Nodename", default)]
    pub(crate) nodename: String,
    #[serde(rename = "Option", default, with = "go_bytes")]
    pub(crate) option: Option<Vec<u8>>,
    #[serde(rename = "ReqBody", default, with = "go_bytes")]
    pub(crate) req_body: Option<Vec<u8>>,
    #[serde(rename = "Subresource", default)]
    pub(crate) subresource: String,
    #[serde(rename = "RespBody", default, with = "go_bytes")]
    pub(crate) resp_body: Option<Vec<u8>>,
    #[serde(rename = "Status", default)]
    pub(crate) status: String,
    #[serde(rename = "Reason", default)]
    pub(crate) reason: String,
    #[serde(rename = "Error", default)]
    pub(crate) error: Value,
    #[serde(rename = "Timestamp", default)]
    pub(crate) timestamp: Value,
}

/// The `meta` type of the objects dynamicController sends for `plural`: KubeEdge guesses the
/// kind from the resource name (`UnsafeResourceToKind`) and lower-cases it.
pub(crate) fn stored_type(plural: &str) -> String {
    match plural {
        "endpoints" => return "endpoints".to_owned(),
        "endpointslices" => return "endpointslice".to_owned(),
        "leases" => return "leases".to_owned(),
        _ => {}
    }
    let lower = plural.to_lowercase();
    if let Some(stem) = lower.strip_suffix("ies") {
        format!("{stem}y")
    } else if let Some(stem) = lower.strip_suffix("ses") {
        format!("{stem}s")
    } else if let Some(stem) = lower.strip_suffix('s') {
        stem.to_owned()
    } else {
        lower
    }
}

/// The `meta_v2` key of a request: `/<group>/<version>/<resource>/<namespace>/<name>`, `core`
/// for the empty group, `null` for no namespace (and always for namespaces) or no name.
pub(crate) fn key(
    group: &str,
    version: &str,
    plural: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> String {
    // A namespace's own key has no namespace (KubeEdge's `KeyFuncReq`).
    let namespace = namespace.filter(|_| plural != "namespaces").unwrap_or("");
    crate::store::meta_v2_key(group, version, plural, namespace, name.unwrap_or(""))
}

impl Application {
    /// A new application, `InApplying`, with its ID computed as KubeEdge does (hex SHA-256 of
    /// node name, key, verb, option, body and subresource, so equal requests share an ID).
    pub(crate) fn new(
        node: &str,
        key: String,
        verb: Verb,
        subresource: &str,
        option: &Value,
        body: Option<Vec<u8>>,
    ) -> Self {
        let option = option.to_string().into_bytes();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(node.as_bytes());
        ctx.update(key.as_bytes());
        ctx.update(verb.as_str().as_bytes());
        ctx.update(&option);
        ctx.update(body.as_deref().unwrap_or_default());
        ctx.update(subresource.as_bytes());
        let id = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            id,
            key,
            verb: verb.as_str().to_owned(),
            nodename: node.to_owned(),
            option: Some(option),
            req_body: body,
            subresource: subresource.to_owned(),
            resp_body: None,
            status: "InApplying".to_owned(),
            reason: String::new(),
            error: json!({"ErrStatus": {"metadata": {}}}),
            timestamp: json!("0001-01-01T00:00:00Z"),
        }
    }

    /// What the cloud's answer says.
    pub(crate) fn outcome(self) -> Outcome {
        let err_status = self
            .error
            .get("ErrStatus")
            .filter(|s| s.get("code").and_then(Value::as_u64).unwrap_or(0) != 0)
            .cloned();
        match (self.status.as_str(), err_status) {
            ("Approved", _) => Outcome::Approved(self.resp_body.unwrap_or_default()),
            ("Rejected", Some(mut status)) => {
                if let Some(map) = status.as_object_mut() {
                    map.insert("kind".to_owned(), json!("Status"));
                    map.insert("apiVersion".to_owned(), json!("v1"));
                }
                Outcome::Status(status)
            }
            (status, _) => Outcome::Failed {
                status: status.to_owned(),
                reason: self.reason,
            },
        }
    }
}

/// Go's `[]byte` in JSON: base64 text, or `null` for nil.
mod go_bytes {
    use super::{Engine, STANDARD};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| STANDARD.decode(t.as_bytes()))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_types_follow_kubeedge_guess() {
        assert_eq!(stored_type("deployments"), "deployment");
        assert_eq!(stored_type("networkpolicies"), "networkpolicy");
        assert_eq!(stored_type("ingresses"), "ingress");
        assert_eq!(stored_type("leases"), "leases");
        assert_eq!(stored_type("namespaces"), "namespace");
    }

    #[test]
    fn keys_follow_kubeedge() {
        assert_eq!(
            key("", "v1", "pods", Some("default"), Some("web")),
            "/core/v1/pods/default/web"
        );
        assert_eq!(
            key("apps", "v1", "deployments", None, None),
            "/apps/v1/deployments/null/null"
        );
        assert_eq!(
            key("", "v1", "namespaces", Some("x"), Some("x")),
            "/core/v1/namespaces/null/x"
        );
    }

    #[test]
    fn the_record_has_go_field_names_and_base64_bytes() {
        let app = Application::new(
            "edge-1",
            key("", "v1", "configmaps", Some("default"), None),
            Verb::Create,
            "",
            &json!({}),
            Some(br#"{"kind":"ConfigMap"}"#.to_vec()),
        );
        let v = serde_json::to_value(&app).expect("serialises");
        assert_eq!(v["Verb"], "create");
        assert_eq!(v["Nodename"], "edge-1");
        assert_eq!(v["Key"], "/core/v1/configmaps/default/null");
        assert_eq!(v["Option"], "e30="); // base64 of {}
        assert_eq!(v["ReqBody"], STANDARD.encode(br#"{"kind":"ConfigMap"}"#));
        assert_eq!(v["RespBody"], Value::Null);
        assert_eq!(v["Status"], "InApplying");
        assert_eq!(v["ID"].as_str().map(str::len), Some(64));
        // The same request has the same ID; another body another.
        let again = Application::new(
            "edge-1",
            key("", "v1", "configmaps", Some("default"), None),
            Verb::Create,
            "",
            &json!({}),
            Some(br#"{"kind":"ConfigMap"}"#.to_vec()),
        );
        assert_eq!(again.id, app.id);
        let other = Application::new(
            "edge-1",
            key("", "v1", "configmaps", Some("default"), None),
            Verb::Create,
            "",
            &json!({}),
            Some(b"{}".to_vec()),
        );
        assert_ne!(other.id, app.id);
    }

    #[test]
    fn answers_become_outcomes() {
        let approved: Application = serde_json::from_value(json!({
            "ID": "x", "Status": "Approved", "RespBody": STANDARD.encode(br#"{"kind":"Deployment"}"#),
            "Error": {"ErrStatus": {"metadata": {}}}
        }))
        .expect("parses");
        assert_eq!(
            approved.outcome(),
            Outcome::Approved(br#"{"kind":"Deployment"}"#.to_vec())
        );
        let rejected: Application = serde_json::from_value(json!({
            "Status": "Rejected",
            "Error": {"ErrStatus": {"metadata": {}, "status": "Failure", "message": "configmaps \"a\" already exists", "reason": "AlreadyExists", "code": 409}}
        }))
        .expect("parses");
        let Outcome::Status(status) = rejected.outcome() else {
            panic!("not a status");
        };
        assert_eq!(status["code"], 409);
        assert_eq!(status["kind"], "Status");
        let failed: Application = serde_json::from_value(
            json!({"Status": "Rejected", "Reason": "get current list error: boom"}),
        )
        .expect("parses");
        assert_eq!(
            failed.outcome(),
            Outcome::Failed {
                status: "Rejected".to_owned(),
                reason: "get current list error: boom".to_owned()
            }
        );
        let bad = serde_json::from_value::<Application>(json!({"RespBody": "%%%"}));
        assert!(bad.is_err());
    }
}
