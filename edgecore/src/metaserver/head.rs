//! The part of a stored object a list needs (what selectors read, the resourceVersion, whether
//! it is typed), read without building the whole object: a list of thousands of objects is
//! answered from the stored text, spliced, never parsed whole.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use super::selector::Fields;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Meta<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(rename = "resourceVersion", borrow)]
    resource_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    labels: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spec<'a> {
    #[serde(rename = "nodeName", borrow)]
    node_name: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Status<'a> {
    #[serde(borrow)]
    phase: Option<Cow<'a, str>>,
}

/// A stored object's head.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Head<'a> {
    #[serde(rename = "apiVersion", borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    metadata: Meta<'a>,
    // Other kinds' `spec` and `status` may not be objects (a Secret has neither; some kinds
    // have a string `status`): what does not fit is read as absent.
    #[serde(borrow, deserialize_with = "lenient")]
    spec: Spec<'a>,
    #[serde(borrow, deserialize_with = "lenient")]
    status: Status<'a>,
}

fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Fits(T),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Either::<T>::deserialize(d)? {
        Either::Fits(t) => t,
        Either::Other(_) => T::default(),
    })
}

impl<'a> Head<'a> {
    /// The head of stored JSON text; `None` when it is not a JSON object.
    pub(crate) fn parse(text: &'a str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    pub(crate) fn resource_version(&self) -> Option<u64> {
        self.metadata.resource_version.as_deref()?.parse().ok()
    }

    /// Which of `apiVersion` and `kind` the object has.
    pub(crate) fn typing(&self) -> Typing {
        Typing {
            api_version: self.api_version.is_some(),
            kind: self.kind.is_some(),
        }
    }
}

/// Which of `apiVersion` and `kind` a stored object has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Typing {
    api_version: bool,
    kind: bool,
}

/// A stored object picked for an answer: its text as stored, and what its head said.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) text: String,
    pub(crate) typing: Typing,
}

impl Stored {
    /// Writes the object into `out` with `kind` and `apiVersion` set, adding only the ones it
    /// lacks (no key twice).
    pub(crate) fn write_typed(&self, kind: &str, api_version: &str, out: &mut String) {
        let mut missing = Vec::new();
        if !self.typing.api_version {
            missing.push(format!("\"apiVersion\":{}", json_str(api_version)));
        }
        if !self.typing.kind {
            missing.push(format!("\"kind\":{}", json_str(kind)));
        }
        let body = self.text.trim();
        match body.strip_prefix('{') {
            Some(rest) if !missing.is_empty() => {
                out.push('{');
                out.push_str(&missing.join(","));
                if !rest.trim_start().starts_with('}') {
                    out.push(',');
                }
                out.push_str(rest);
            }
            _ => out.push_str(body),
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl Fields for Head<'_> {
    fn field(&self, pointer: &str) -> Option<&str> {
        match pointer {
            "/metadata/name" => self.metadata.name.as_deref(),
            "/metadata/namespace" => self.metadata.namespace.as_deref(),
            "/spec/nodeName" => self.spec.node_name.as_deref(),
            "/status/phase" => self.status.phase.as_deref(),
            _ => None,
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.metadata.labels.get(key).map(|v| v.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn stored(text: &str) -> Stored {
        Stored {
            text: text.to_owned(),
            typing: Head::parse(text).unwrap().typing(),
        }
    }

    #[test]
    fn the_head_reads_what_selectors_need_and_typing_adds_no_key_twice() {
        let text = r#"{"metadata":{"labels":{"app":"we\"b"},"name":"web","namespace":"default","resourceVersion":"42"},"spec":{"nodeName":"n1"},"status":{"phase":"Running"}}"#;
        let h = Head::parse(text).unwrap();
        assert_eq!(h.resource_version(), Some(42));
        assert_eq!(h.field("/spec/nodeName"), Some("n1"));
        assert_eq!(h.field("/status/phase"), Some("Running"));
        assert_eq!(h.label("app"), Some("we\"b"), "escaped text is read too");
        let mut out = String::new();
        stored(text).write_typed("Pod", "v1", &mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["kind"].clone(), v["apiVersion"].clone()),
            (json!("Pod"), json!("v1"))
        );
        assert_eq!(v["metadata"]["name"], "web");

        // Already typed: written as stored. Odd `status`/`spec` shapes do not stop the read.
        let typed = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"},"status":"x","spec":[1]}"#;
        let h = Head::parse(typed).unwrap();
        assert!(h.field("/spec/nodeName").is_none());
        let mut out = String::new();
        stored(typed).write_typed("Secret", "v1", &mut out);
        assert_eq!(out, typed);
        // Half typed, and empty.
        let half = r#"{"kind":"Lease"}"#;
        let mut out = String::new();
        stored(half).write_typed("Lease", "coordination.k8s.io/v1", &mut out);
        assert_eq!(
            out,
            r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease"}"#
        );
        let mut out = String::new();
        stored("{}").write_typed("Pod", "v1", &mut out);
        assert_eq!(out, r#"{"apiVersion":"v1","kind":"Pod"}"#);
        assert!(Head::parse("[1]").is_none());
    }
}
