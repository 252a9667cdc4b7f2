//! The `meta` key of a service-account token: KubeEdge's metamanager does not key a
//! `serviceaccounttoken` answer by its resource but by a string built from the TokenRequest
//! (Go's `fmt.Sprintf("%q/%q/%#v/%#v/%#v", name, namespace, audiences, expirationSeconds,
//! boundObjectRef)`, edge/pkg/metamanager/client/serviceaccount.go `KeyFunc`), e.g.
//!
//! ```text
//! "default"/"default"/[]string{"https://kubernetes.default.svc.cluster.local"}/3607/v1.BoundObjectReference{Kind:"Pod", APIVersion:"v1", Name:"web", UID:"0c1d…"}
//! ```
//!
//! Writing the same key keeps one `edgecore.db` readable by both agents.

use serde_json::Value;

/// The key of the token of service account `name` in `namespace` for the TokenRequest `tr`
/// (the cloud's answer: audiences, expirationSeconds and boundObjectRef are read from its spec).
pub(crate) fn token_key(name: &str, namespace: &str, tr: &Value) -> String {
    let spec = tr.get("spec").unwrap_or(&Value::Null);
    let audiences = match spec.get("audiences") {
        Some(Value::Array(items)) => {
            let quoted: Vec<String> = items
                .iter()
                .map(|a| go_quote(a.as_str().unwrap_or_default()))
                .collect();
            format!("[]string{{{}}}", quoted.join(", "))
        }
        _ => "[]string(nil)".to_owned(),
    };
    let expiration = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let r = spec.get("boundObjectRef").unwrap_or(&Value::Null);
    let field = |f: &str| go_quote(r.get(f).and_then(Value::as_str).unwrap_or_default());
    format!(
        "{}/{}/{audiences}/{expiration}/v1.BoundObjectReference{{Kind:{}, APIVersion:{}, Name:{}, UID:{}}}",
        go_quote(name),
        go_quote(namespace),
        field("kind"),
        field("apiVersion"),
        field("name"),
        field("uid"),
    )
}

/// A string as Go's `%q` writes it (`strconv.Quote`): double quotes, `\"` and `\\`, the C
/// escapes for control characters, `\x..` for the rest below 0x20 and DEL, `\u....` for the
/// other control characters; everything else stays as it is (names, UIDs and URLs in practice).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The key KubeEdge's edgecore (v1.23 line) wrote in the real-cloud lab.
    #[test]
    fn matches_the_key_kubeedge_wrote_on_the_real_cloud() {
        let tr = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"name": "default", "namespace": "default"},
            "spec": {
                "audiences": ["https://kubernetes.default.svc.cluster.local"],
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "rc-pod-gonode",
                                   "uid": "68562124-890d-4022-9012-601c578da086"},
                "expirationSeconds": 3607
            },
            "status": {"expirationTimestamp": "2026-12-04T18:15:59Z", "token": "eyJ..."}
        });
        assert_eq!(
            token_key("default", "default", &tr),
            r#""default"/"default"/[]string{"https://kubernetes.default.svc.cluster.local"}/3607/v1.BoundObjectReference{Kind:"Pod", APIVersion:"v1", Name:"rc-pod-gonode", UID:"68562124-890d-4022-9012-601c578da086"}"#
        );
    }

    #[test]
    fn absent_fields_print_as_go_zero_values() {
        assert_eq!(
            token_key("sa", "ns", &json!({})),
            r#""sa"/"ns"/[]string(nil)/0/v1.BoundObjectReference{Kind:"", APIVersion:"", Name:"", UID:""}"#
        );
        let two = json!({"spec": {"audiences": ["a", "b\"c"], "expirationSeconds": 600}});
        assert!(token_key("sa", "ns", &two).contains(r#"[]string{"a", "b\"c"}/600/"#));
    }

    #[test]
    fn quoting_follows_go() {
        assert_eq!(go_quote("a\\b\n\t\u{1}é"), r#""a\\b\n\t\x01é""#);
        assert_eq!(go_quote("\u{7f}"), r#""\x7f""#);
        assert_eq!(go_quote("\u{85}"), r#""\u0085""#);
    }
}
