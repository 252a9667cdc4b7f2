//! Label and field selectors as kube-apiserver reads them from `labelSelector` and
//! `fieldSelector`.

use serde_json::Value;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Label {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// The fields a field selector may name, with where they are in the object.
const FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
    ("spec.nodeName", "/spec/nodeName"),
    ("status.phase", "/status/phase"),
];

/// One field requirement: JSON pointer, wanted value, negated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    pointer: &'static str,
    value: String,
    negated: bool,
}

/// Both selectors of a request; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    labels: Vec<Label>,
    fields: Vec<Field>,
}

/// Splits on commas outside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.retain(|t| !t.is_empty());
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn label(term: &str) -> Result<Label, String> {
    let bad = || format!("unable to parse requirement: {term:?}");
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(bad)?;
        Ok(inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect())
    };
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        return if valid_key(key) {
            Ok(Label::NotExists(key.to_owned()))
        } else {
            Err(bad())
        };
    }
    let (key, req) = if let Some((k, v)) = term.split_once("!=") {
        (
            k,
            Label::NotEquals(k.trim().to_owned(), v.trim().to_owned()),
        )
    } else if let Some((k, v)) = term.split_once("==") {
        (k, Label::Equals(k.trim().to_owned(), v.trim().to_owned()))
    } else if let Some((k, v)) = term.split_once('=') {
        (k, Label::Equals(k.trim().to_owned(), v.trim().to_owned()))
    } else if let Some((k, rest)) = term.split_once(" notin ") {
        (k, Label::NotIn(k.trim().to_owned(), set(rest)?))
    } else if let Some((k, rest)) = term.split_once(" in ") {
        (k, Label::In(k.trim().to_owned(), set(rest)?))
    } else {
        (term, Label::Exists(term.trim().to_owned()))
    };
    if valid_key(key.trim()) {
        Ok(req)
    } else {
        Err(bad())
    }
}

fn field(term: &str) -> Result<Field, String> {
    let (name, value, negated) = if let Some((k, v)) = term.split_once("!=") {
        (k, v, true)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, v, false)
    } else if let Some((k, v)) = term.split_once('=') {
        (k, v, false)
    } else {
        return Err(format!("invalid selector: {term:?}; can't understand it"));
    };
    let name = name.trim();
    let pointer = FIELDS
        .iter()
        .find(|(f, _)| *f == name)
        .map(|(_, p)| *p)
        .ok_or_else(|| format!("field label not supported: {name}"))?;
    Ok(Field {
        pointer,
        value: value.trim().to_owned(),
        negated,
    })
}

impl Selector {
    /// From the request's `labelSelector` and `fieldSelector`; the error says what could not
    /// be read.
    pub(crate) fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, String> {
        Ok(Self {
            labels: terms(labels.unwrap_or(""))
                .into_iter()
                .map(label)
                .collect::<Result<_, _>>()?,
            fields: terms(fields.unwrap_or(""))
                .into_iter()
                .map(field)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Adds `metadata.namespace=<namespace>` (a namespaced request).
    pub(crate) fn in_namespace(mut self, namespace: &str) -> Self {
        self.fields.push(Field {
            pointer: "/metadata/namespace",
            value: namespace.to_owned(),
            negated: false,
        });
        self
    }

    /// Adds `metadata.name=<name>` (a get).
    pub(crate) fn named(mut self, name: &str) -> Self {
        self.fields.push(Field {
            pointer: "/metadata/name",
            value: name.to_owned(),
            negated: false,
        });
        self
    }

    pub(crate) fn matches(&self, object: &impl Fields) -> bool {
        let get = |k: &str| object.label(k);
        let labels_ok = self.labels.iter().all(|r| match r {
            Label::Equals(k, v) => get(k) == Some(v.as_str()),
            Label::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Label::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Label::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Label::Exists(k) => get(k).is_some(),
            Label::NotExists(k) => get(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|f| {
                let have = object.field(f.pointer).unwrap_or("");
                (have == f.value) != f.negated
            })
    }
}

/// What a selector reads of an object.
pub(crate) trait Fields {
    /// The string at a JSON pointer of `FIELDS`.
    fn field(&self, pointer: &str) -> Option<&str>;
    /// A label's value.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Fields for Value {
    fn field(&self, pointer: &str) -> Option<&str> {
        self.pointer(pointer).and_then(Value::as_str)
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.pointer("/metadata/labels")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod() -> Value {
        json!({"metadata": {"name": "web", "namespace": "default",
                            "labels": {"app": "web", "tier": "front"}},
               "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    fn sel(l: &str, f: &str) -> Selector {
        Selector::parse(Some(l), Some(f)).unwrap()
    }

    #[test]
    fn labels_and_fields_match_as_the_api_server_does() {
        let p = pod();
        for (l, f, want) in [
            ("", "", true),
            ("app=web", "", true),
            ("app==web,tier=front", "", true),
            ("app!=web", "", false),
            ("app in (web, api)", "", true),
            ("app notin (web)", "", false),
            ("missing notin (x)", "", true),
            ("tier", "", true),
            ("!tier", "", false),
            ("!other", "", true),
            ("", "metadata.name=web,spec.nodeName=n1", true),
            ("", "spec.nodeName!=n1", false),
            ("", "status.phase=Pending", false),
            ("", "metadata.namespace=kube-system", false),
        ] {
            assert_eq!(sel(l, f).matches(&p), want, "{l:?} {f:?}");
        }
        assert!(!sel("", "").in_namespace("other").matches(&p));
    }

    #[test]
    fn what_cannot_be_read_is_named() {
        let e = Selector::parse(None, Some("spec.image=x")).unwrap_err();
        assert!(e.contains("spec.image"), "{e}");
        assert!(Selector::parse(Some("app in web"), None).is_err());
        assert!(Selector::parse(Some("a b=c"), None).is_err());
        assert!(Selector::parse(None, Some("metadata.name")).is_err());
    }
}
