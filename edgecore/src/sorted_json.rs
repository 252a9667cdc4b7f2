//! The `value` column's JSON form: what Go's `GetContentData()` produces (spec §3.2, §5.3).
//!
//! Go decodes message content into `map[string]interface{}` and `json.Marshal` writes maps with
//! their keys sorted, so KubeEdge's `meta.value` holds key-sorted, compact JSON with `<`, `>`,
//! `&`, U+2028 and U+2029 escaped. Our `serde_json` keeps insertion order (`preserve_order`), so
//! the keys are sorted here explicitly, at every depth.

use serde::Serialize;
use serde_json::Value;

/// Compact JSON of `value` with object keys sorted recursively and Go's HTML escaping.
pub(crate) fn to_sorted_string(value: &Value) -> String {
    let mut out = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoEscapes);
    // Serialising a `Value` cannot fail: keys are strings and the sink is a Vec.
    if Sorted(value).serialize(&mut ser).is_err() {
        return String::new();
    }
    // The formatter writes serde_json's UTF-8 output plus ASCII escapes.
    String::from_utf8(out).unwrap_or_default()
}

/// A `Value` that serialises its objects' entries in key order.
struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                // Go sorts map keys by their bytes; `str` ordering is byte ordering.
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let mut m = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, &Sorted(v))?;
                }
                m.end()
            }
            Value::Array(items) => {
                let mut s = serializer.serialize_seq(Some(items.len()))?;
                for v in items {
                    s.serialize_element(&Sorted(v))?;
                }
                s.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// Compact output with the escaping Go's `encoding/json` applies by default.
struct GoEscapes;

impl serde_json::ser::Formatter for GoEscapes {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut rest = fragment;
        while let Some((i, c)) = rest.char_indices().find(|(_, c)| needs_escape(*c)) {
            let (head, tail) = rest.split_at(i);
            writer.write_all(head.as_bytes())?;
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = tail.get(c.len_utf8()..).unwrap_or_default();
        }
        writer.write_all(rest.as_bytes())
    }
}

fn needs_escape(c: char) -> bool {
    matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let v = json!({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","labels":{"z":"1","a":"2"}},
                       "spec":{"containers":[{"name":"c","image":"i"}]}});
        assert_eq!(
            to_sorted_string(&v),
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"labels":{"a":"2","z":"1"},"name":"a"},"spec":{"containers":[{"image":"i","name":"c"}]}}"#
        );
    }

    #[test]
    fn html_characters_are_escaped_like_go() {
        let v = json!({"b":"<x&y>\u{2028}é","a":null});
        assert_eq!(
            to_sorted_string(&v),
            r#"{"a":null,"b":"\u003cx\u0026y\u003e\u2028é"}"#
        );
        let back: Value = serde_json::from_str(&to_sorted_string(&v)).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn scalars_and_arrays_pass_through() {
        assert_eq!(
            to_sorted_string(&json!([3, "x", true, 1.5])),
            r#"[3,"x",true,1.5]"#
        );
        assert_eq!(to_sorted_string(&json!("plain")), r#""plain""#);
    }
}
