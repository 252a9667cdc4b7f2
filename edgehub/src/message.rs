//! The beehive `model.Message` as it travels on CloudHub's WebSocket (spec §3).
//!
//! One JSON value per WebSocket text message, encoded the way Go's `json.Encoder` does it:
//! compact, Go struct field order, `<`, `>`, `&`, U+2028 and U+2029 escaped, and a trailing `\n`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DecodeError;

/// Operations that appear on the wire (spec §3.4).
pub mod op {
    /// Object created.
    pub const INSERT: &str = "insert";
    /// Object changed, or (from synccontroller) sent again after the node missed it.
    pub const UPDATE: &str = "update";
    /// Object removed.
    pub const DELETE: &str = "delete";
    /// Strategic-merge patch (node and pod status).
    pub const PATCH: &str = "patch";
    /// A request for an object.
    pub const QUERY: &str = "query";
    /// An answer; with `parent_msg_id` it is also the ack of a cloud message.
    pub const RESPONSE: &str = "response";
    /// A failed answer; never an ack.
    pub const ERROR: &str = "error";
    /// The edge's liveness message to the cloud.
    pub const KEEPALIVE: &str = "keepalive";
    /// Reserved by viaduct: answered by the transport with `"ack"` (spec §1.7).
    pub const RESERVED: [&str; 3] = ["config", "ping", "pong"];
}

/// `header` of a message. Field order is Go's struct order; that is what keeps the wire bytes equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// UUIDv4, lowercase.
    pub msg_id: String,
    /// The `msg_id` this message answers; empty when it answers nothing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent_msg_id: String,
    /// Unix epoch milliseconds.
    #[serde(default)]
    pub timestamp: i64,
    /// Kubernetes resourceVersion of the object in `content`, empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resourceversion: String,
    /// Beehive's in-process sync flag; always false on the wire.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync: bool,
    /// Beehive context type, normally empty.
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// `route` of a message: where it comes from and what it does to which resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Sending module (`edgecontroller`, `websocket`, `edged`, `metamanager`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Not used on the wire in practice.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// `resource`, `meta`, `twin`, `user`, ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// See [`op`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    /// Trimmed resource string, `<namespace>/<type>[/<name>]` (spec §3.3).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
}

impl Route {
    /// A route with the four fields that matter on the wire.
    pub fn new(source: &str, group: &str, operation: &str, resource: &str) -> Self {
        Self {
            source: source.to_owned(),
            destination: String::new(),
            group: group.to_owned(),
            operation: operation.to_owned(),
            resource: resource.to_owned(),
        }
    }
}

/// A beehive message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Identity, correlation and version.
    pub header: Header,
    /// Source, group, operation, resource.
    #[serde(default)]
    pub route: Route,
    /// Any JSON value; `null` when Go's content is nil.
    #[serde(default)]
    pub content: Value,
}

impl Message {
    /// A fresh message with a new UUID and the current time.
    pub fn new(route: Route, content: Value) -> Self {
        Self {
            header: Header {
                msg_id: uuid::Uuid::new_v4().to_string(),
                parent_msg_id: String::new(),
                timestamp: now_millis(),
                resourceversion: String::new(),
                sync: false,
                kind: String::new(),
            },
            route,
            content,
        }
    }

    /// Sets the resourceversion header.
    pub fn with_resource_version(mut self, rv: impl Into<String>) -> Self {
        self.header.resourceversion = rv.into();
        self
    }

    /// `NewRespByMessage`: new id, parent = `req`'s id, source, group, resource and type copied,
    /// operation `response` (spec §3.8). With content `"OK"` this is the ack of `req` (§4.2).
    pub fn response_to(req: &Message, content: Value) -> Self {
        let mut m = Self::new(
            Route::new(
                &req.route.source,
                &req.route.group,
                op::RESPONSE,
                &req.route.resource,
            ),
            content,
        );
        m.header.parent_msg_id = req.header.msg_id.clone();
        m.header.kind = req.header.kind.clone();
        m
    }

    /// The ack of a cloud message: a response with content `"OK"`.
    pub fn ack_of(req: &Message) -> Self {
        Self::response_to(req, Value::String("OK".to_owned()))
    }

    /// `NewErrorMessage` as metamanager sends it: operation `error`, source `metamanager`,
    /// the request's group and resource, the text as content. Not an ack.
    pub fn error_to(req: &Message, text: &str) -> Self {
        let mut m = Self::new(
            Route::new(
                "metamanager",
                &req.route.group,
                op::ERROR,
                &req.route.resource,
            ),
            Value::String(text.to_owned()),
        );
        m.header.parent_msg_id = req.header.msg_id.clone();
        m
    }

    /// The viaduct answer to a reserved operation (`ping`, `pong`, `config`): content `"ack"`.
    pub fn control_answer(req: &Message) -> Self {
        Self::response_to(req, Value::String("ack".to_owned()))
    }

    /// The keepalive the edge sends every `heartbeat` seconds (spec §1.8).
    pub fn keepalive() -> Self {
        Self::new(
            Route::new("websocket", "resource", op::KEEPALIVE, "node"),
            Value::String("ping".to_owned()),
        )
    }

    /// True for `ping`, `pong` and `config`, which the transport answers itself.
    pub fn is_reserved_operation(&self) -> bool {
        op::RESERVED.contains(&self.route.operation.as_str())
    }

    /// The resource string parsed, if it has the `<namespace>/<type>[/<name>]` shape.
    pub fn resource(&self) -> Option<Resource<'_>> {
        Resource::parse(&self.route.resource)
    }

    /// Encodes as Go's `json.Encoder` would: compact, Go's HTML escaping, trailing `\n`.
    pub fn to_wire(&self) -> String {
        let mut out = Vec::with_capacity(256);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
        // Serialising a Message cannot fail: every key is a string and Value holds only JSON.
        if self.serialize(&mut ser).is_err() {
            return String::new();
        }
        out.push(b'\n');
        // The formatter only writes valid UTF-8 (serde_json input plus ASCII escapes).
        String::from_utf8(out).unwrap_or_default()
    }

    /// Decodes the first JSON value of a WebSocket message and ignores what follows it,
    /// as gorilla's `ReadJSON` does.
    pub fn from_wire(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<Message>();
        match values.next() {
            Some(Ok(m)) => Ok(m),
            Some(Err(e)) if e.is_eof() => Err(DecodeError::Empty),
            Some(Err(e)) => Err(DecodeError::Json(e)),
            None => Err(DecodeError::Empty),
        }
    }
}

/// A trimmed resource string: `<namespace>/<type>[/<name>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource<'a> {
    /// Namespace (`default`, `null` for cluster-scoped objects in v1.23+).
    pub namespace: &'a str,
    /// Resource type: `pod`, `configmap`, `secret`, `node`, ...
    pub kind: &'a str,
    /// Object name; `None` for list queries.
    pub name: Option<&'a str>,
}

impl<'a> Resource<'a> {
    /// Parses `<namespace>/<type>[/<name>]`; the name may itself contain `/`.
    pub fn parse(s: &'a str) -> Option<Self> {
        let mut parts = s.splitn(3, '/');
        let namespace = parts.next().filter(|p| !p.is_empty())?;
        let kind = parts.next().filter(|p| !p.is_empty())?;
        let name = parts.next().filter(|p| !p.is_empty());
        Some(Self {
            namespace,
            kind,
            name,
        })
    }
}

/// A JSON value as Go's `GetContentData` leaves it after re-marshalling a decoded map: keys
/// sorted at every depth, compact, Go's HTML escaping, no trailing newline. This is the form
/// KubeEdge keeps in the `meta` table's `value` column (spec §3.2, §5.3).
pub fn sorted_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // As in `to_wire`: serialising a Value cannot fail and the output is UTF-8.
    if Sorted(value).serialize(&mut ser).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Serialises a [`Value`] with object keys in byte order, whatever order the map keeps.
struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let mut m = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, &Sorted(v))?;
                }
                m.end()
            }
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&Sorted(v))?;
                }
                seq.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// Milliseconds since the Unix epoch; 0 if the clock is before 1970.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Compact output with the escaping Go's `encoding/json` applies by default.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let esc = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(esc.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vectors_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vectors")
    }

    #[test]
    fn every_vector_parses_and_reencodes_to_the_same_bytes() {
        let dir = vectors_dir();
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("tests/fixtures/vectors") {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let raw = std::fs::read_to_string(&path).unwrap();
            let msg = Message::from_wire(raw.as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!msg.header.msg_id.is_empty(), "{}", path.display());
            let wire = msg.to_wire();
            assert!(wire.ends_with('\n'));
            let expected = if raw.ends_with('\n') {
                raw.clone()
            } else {
                format!("{raw}\n")
            };
            assert_eq!(wire, expected, "{} re-encodes differently", path.display());
            seen += 1;
        }
        assert!(seen >= 19, "only {seen} vectors found in {}", dir.display());
    }

    #[test]
    fn ack_copies_source_and_parents_the_request() {
        let raw = std::fs::read(vectors_dir().join("pod-insert.json")).unwrap();
        let req = Message::from_wire(&raw).unwrap();
        let ack = Message::ack_of(&req);
        assert_eq!(ack.header.parent_msg_id, req.header.msg_id);
        assert_ne!(ack.header.msg_id, req.header.msg_id);
        assert_eq!(ack.route.source, "edgecontroller");
        assert_eq!(ack.route.group, "resource");
        assert_eq!(ack.route.operation, "response");
        assert_eq!(ack.route.resource, "default/pod/nginx-demo");
        assert_eq!(ack.content, Value::String("OK".into()));
        let wire = ack.to_wire();
        assert!(!wire.contains("\"sync\""));
        assert!(!wire.contains("resourceversion"));
        assert!(wire.contains("\"route\":{\"source\":\"edgecontroller\",\"group\":\"resource\""));
    }

    #[test]
    fn empty_route_fields_are_omitted_but_route_and_content_are_not() {
        let m = Message::new(Route::default(), Value::Null);
        let wire = m.to_wire();
        assert!(wire.contains("\"route\":{}"), "{wire}");
        assert!(wire.ends_with(",\"content\":null}\n"), "{wire}");
        assert!(!wire.contains("parent_msg_id"));
    }

    #[test]
    fn html_characters_are_escaped_like_go() {
        let m = Message::new(Route::default(), Value::String("<a&b>\u{2028}é".into()));
        let wire = m.to_wire();
        assert!(wire.contains(r#""\u003ca\u0026b\u003e\u2028é""#), "{wire}");
        assert_eq!(
            Message::from_wire(wire.as_bytes()).unwrap().content,
            m.content
        );
    }

    #[test]
    fn trailing_bytes_after_the_first_value_are_ignored() {
        let m = Message::keepalive();
        let mut wire = m.to_wire().into_bytes();
        wire.extend_from_slice(b"garbage{");
        assert_eq!(Message::from_wire(&wire).unwrap(), m);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(Message::from_wire(b""), Err(DecodeError::Empty)));
        assert!(matches!(
            Message::from_wire(b"   "),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            Message::from_wire(b"{\"header\":"),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            Message::from_wire(b"[1,2]"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            Message::from_wire(b"{}"),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn floats_decode_exactly_and_survive_a_round_trip() {
        // Found by the from_wire fuzz target: without serde_json's `float_roundtrip`,
        // "5.3e+115" decoded 1 ULP off (5.3000000000000005e+115), so the content stored
        // differed from what the cloud sent, and decode(encode(m)) != m.
        let raw = br#"{"header":{"msg_id":"a"},"content":{"kind":53000E111,"x":5.3e+115}}"#;
        let m = Message::from_wire(raw).unwrap();
        assert_eq!(m.content["kind"].as_f64(), Some(5.3e115));
        assert_eq!(m.content["x"].as_f64(), Some(5.3e115));
        let back = Message::from_wire(m.to_wire().as_bytes()).unwrap();
        assert_eq!(back, m);
        let stored: Value = serde_json::from_str(&sorted_json(&m.content)).unwrap();
        assert_eq!(stored, m.content);
    }

    #[test]
    fn resource_strings() {
        let r = Resource::parse("default/pod/nginx").unwrap();
        assert_eq!(
            (r.namespace, r.kind, r.name),
            ("default", "pod", Some("nginx"))
        );
        let r = Resource::parse("default/pod").unwrap();
        assert_eq!(r.name, None);
        let r = Resource::parse("ns/secret/a/b").unwrap();
        assert_eq!(r.name, Some("a/b"));
        assert!(Resource::parse("node").is_none());
        assert!(Resource::parse("").is_none());
        assert!(Resource::parse("/pod/x").is_none());
    }

    #[test]
    fn sorted_json_sorts_keys_at_every_depth() {
        let v = serde_json::json!({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","labels":{"z":"1","a":"2"}},
                       "spec":{"containers":[{"name":"c","image":"i"}]}});
        assert_eq!(
            sorted_json(&v),
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"labels":{"a":"2","z":"1"},"name":"a"},"spec":{"containers":[{"image":"i","name":"c"}]}}"#
        );
    }

    #[test]
    fn sorted_json_escapes_like_go_and_passes_scalars_through() {
        let v = serde_json::json!({"b":"<x&y>\u{2028}é","a":null});
        assert_eq!(
            sorted_json(&v),
            r#"{"a":null,"b":"\u003cx\u0026y\u003e\u2028é"}"#
        );
        let back: Value = serde_json::from_str(&sorted_json(&v)).unwrap();
        assert_eq!(back, v);
        assert_eq!(
            sorted_json(&serde_json::json!([3, "x", true, 1.5])),
            r#"[3,"x",true,1.5]"#
        );
        assert_eq!(sorted_json(&serde_json::json!("plain")), r#""plain""#);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::from_wire(&bytes);
        }

        #[test]
        fn round_trip(src in ".{0,20}", res in ".{0,40}", text in ".{0,80}", rv in "[0-9]{0,8}") {
            let m = Message::new(Route::new(&src, "resource", "update", &res), Value::String(text))
                .with_resource_version(rv);
            let back = Message::from_wire(m.to_wire().as_bytes()).unwrap();
            prop_assert_eq!(back, m);
        }
    }
}
