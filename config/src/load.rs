//! Reading and printing edgecore.yaml: `from_yaml` (pure), `load` (reads the file), `to_yaml`
//! and `minimal_yaml` (KubeEdge's key order: sorted).

use std::fmt;
use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

use crate::defaults::{LEFT_OUT_OF_MINIMAL, minimal_config};
use crate::error::ConfigError;
use crate::types::EdgeCoreConfig;

/// A parsed configuration and what was ignored while parsing it. Not yet validated: call
/// [`EdgeCoreConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The configuration, with KubeEdge's default for every key the file leaves out.
    pub config: EdgeCoreConfig,
    /// Keys that are not part of the format, in document order.
    pub warnings: Vec<Warning>,
}

/// A key that is not part of the format and was ignored (often a typo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where, e.g. `modules.edgeHub.heartbaet`.
    pub key_path: String,
    /// A known key at the same place with a similar spelling, e.g. `heartbeat`.
    pub did_you_mean: Option<String>,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown key {} is ignored", self.key_path)?;
        if let Some(known) = &self.did_you_mean {
            write!(f, " (did you mean {known}?)")?;
        }
        Ok(())
    }
}

/// Parses edgecore.yaml text. Keys left out get KubeEdge's defaults; unknown keys become
/// warnings; a wrong type or form is an error naming the key path, the value and what was
/// expected.
pub fn from_yaml(s: &str) -> Result<Loaded, ConfigError> {
    parse(s, None)
}

/// Reads and parses the file at `path` (see [`from_yaml`]).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::Missing {
                path: path.to_owned(),
            }
        } else {
            ConfigError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    parse(&text, Some(path))
}

fn parse(s: &str, path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let parse_error = |key_path: String, message: String| ConfigError::Parse {
        path: path.map(Path::to_owned),
        key_path,
        message,
    };
    // KubeEdge reads the file through JSON, where `key: null` (or `key:` with nothing after
    // it) leaves the key's default in place. Dropping such entries first gives every key that
    // rule, whatever its type.
    let mut tree: Value = match serde_yaml_ng::from_str(s) {
        Ok(tree) => tree,
        Err(e) => return Err(parse_error(String::new(), e.to_string())),
    };
    if tree.is_null() {
        return Err(parse_error(
            String::new(),
            "the document is empty: expected an EdgeCore configuration \
             (`edgecore --defaultconfig` prints one)"
                .to_owned(),
        ));
    }
    drop_nulls(&mut tree);
    let mut ignored: Vec<Vec<String>> = Vec::new();
    let mut on_ignored = |p: serde_ignored::Path<'_>| {
        let mut segments = Vec::new();
        segments_of(&p, &mut segments);
        ignored.push(segments);
    };
    let parsed: Result<EdgeCoreConfig, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(tree, &mut on_ignored));
    let config = match parsed {
        Ok(config) => config,
        Err(e) => {
            // The tree has no positions; the text parser reports the same key with its line
            // and column, so prefer its message when it fails too.
            let from_text = serde_path_to_error::deserialize::<_, Option<EdgeCoreConfig>>(
                serde_yaml_ng::Deserializer::from_str(s),
            );
            let (key_path, message) = match from_text {
                Err(t) => (t.path().to_string(), t.into_inner().to_string()),
                Ok(_) => (e.path().to_string(), e.into_inner().to_string()),
            };
            let key_path = if key_path == "." {
                String::new()
            } else {
                key_path
            };
            // serde_yaml_ng names the key path itself; say it once.
            let message = match message.strip_prefix(&format!("{key_path}: ")) {
                Some(rest) if !key_path.is_empty() => rest.to_owned(),
                _ => message,
            };
            return Err(parse_error(key_path, message));
        }
    };
    let known = serde_yaml_ng::to_value(EdgeCoreConfig::default()).unwrap_or(Value::Null);
    let warnings = ignored
        .iter()
        .map(|segments| Warning {
            key_path: render(segments),
            did_you_mean: suggestion(&known, segments),
        })
        .collect();
    Ok(Loaded { config, warnings })
}

/// Removes every mapping entry whose value is `null`, at any depth.
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            m.retain(|_, v| !v.is_null());
            for (_, v) in m.iter_mut() {
                drop_nulls(v);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(drop_nulls),
        Value::Tagged(t) => drop_nulls(&mut t.value),
        _ => {}
    }
}

/// The path segments of an ignored key (map keys and sequence indices).
fn segments_of(p: &serde_ignored::Path<'_>, out: &mut Vec<String>) {
    use serde_ignored::Path as P;
    match p {
        P::Root => {}
        P::Seq { parent, index } => {
            segments_of(parent, out);
            out.push(format!("[{index}]"));
        }
        P::Map { parent, key } => {
            segments_of(parent, out);
            out.push(key.clone());
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            segments_of(parent, out);
        }
    }
}

fn render(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if !out.is_empty() && !s.starts_with('[') {
            out.push('.');
        }
        out.push_str(s);
    }
    out
}

/// The known key next to the ignored one that is closest in spelling, if any is close.
fn suggestion(known: &Value, segments: &[String]) -> Option<String> {
    let (last, parents) = segments.split_last()?;
    let mut node = known;
    for s in parents {
        node = node.as_mapping()?.get(s.as_str())?;
    }
    let last_lower = last.to_ascii_lowercase();
    node.as_mapping()?
        .keys()
        .filter_map(Value::as_str)
        .map(|k| (edit_distance(&last_lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_owned())
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev.get(j).copied().unwrap_or(usize::MAX) + usize::from(ca != *cb);
            let delete = prev
                .get(j + 1)
                .copied()
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            let insert = cur.get(j).copied().unwrap_or(usize::MAX).saturating_add(1);
            cur.push(substitute.min(delete).min(insert));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// Prints `c` as edgecore.yaml with every key, sorted like KubeEdge's output. The text loads
/// back to an equal configuration with no warnings.
pub fn to_yaml(c: &EdgeCoreConfig) -> Result<String, ConfigError> {
    print(sorted(to_value(c)?))
}

/// The short file KubeEdge's `edgecore --minconfig` prints for `node_name`, plus our extra keys.
/// It loads back to [`minimal_config`].
pub fn minimal_yaml(node_name: &str) -> Result<String, ConfigError> {
    let mut value = to_value(&minimal_config(node_name))?;
    for path in LEFT_OUT_OF_MINIMAL {
        remove(&mut value, path);
    }
    print(sorted(value))
}

fn to_value(c: &EdgeCoreConfig) -> Result<Value, ConfigError> {
    serde_yaml_ng::to_value(c).map_err(|e| ConfigError::Print {
        message: e.to_string(),
    })
}

fn print(v: Value) -> Result<String, ConfigError> {
    serde_yaml_ng::to_string(&v).map_err(|e| ConfigError::Print {
        message: e.to_string(),
    })
}

fn remove(v: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = v;
    for p in parents {
        match node.get_mut(*p) {
            Some(next) => node = next,
            None => return,
        }
    }
    if let Some(m) = node.as_mapping_mut() {
        m.remove(*last);
    }
}

/// Mapping keys sorted at every level, as Go's YAML printer does.
fn sorted(v: Value) -> Value {
    match v {
        Value::Mapping(m) => {
            let mut entries: Vec<(Value, Value)> = m.into_iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.as_str().cmp(&b.as_str()));
            Value::Mapping(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted(v)))
                    .collect::<Mapping>(),
            )
        }
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(sorted).collect()),
        other => other,
    }
}
