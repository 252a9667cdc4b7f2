//! The bootstrap token: where it comes from, what is in it, and removing it once used.
//!
//! A token is `<cahash>.<jwt header>.<jwt payload>.<jwt signature>`. The first part is the
//! lowercase hex SHA-256 of the CA certificate DER; the rest is an HS256 JWT whose key is the CA
//! private key, so the edge can read its `exp` claim but cannot verify it.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};

use crate::cert_error::CertError;

/// A token that has the right shape. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BootstrapToken {
    ca_hash: String,
    jwt: String,
    expires_at: Option<u64>,
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("ca_hash", &self.ca_hash)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl BootstrapToken {
    /// Checks the shape: exactly four non-empty dot-separated parts, a 64-digit hex hash and a
    /// JWT payload that is base64url JSON (its `exp`, if any, is kept).
    pub(crate) fn parse(raw: &str) -> Result<Self, CertError> {
        let raw = raw.trim();
        let parts: Vec<&str> = raw.split('.').collect();
        let [hash, header, payload, signature] = parts.as_slice() else {
            return Err(CertError::TokenFormat {
                why: format!("it has {} dot-separated parts instead of 4", parts.len()),
            });
        };
        if [hash, header, payload, signature]
            .iter()
            .any(|p| p.is_empty())
        {
            return Err(CertError::TokenFormat {
                why: "one of its parts is empty".to_owned(),
            });
        }
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CertError::TokenFormat {
                why: format!(
                    "its first part is not a sha-256 in hex ({} characters)",
                    hash.len()
                ),
            });
        }
        let expires_at = decode_exp(payload)?;
        Ok(Self {
            ca_hash: hash.to_ascii_lowercase(),
            jwt: format!("{header}.{payload}.{signature}"),
            expires_at,
        })
    }

    /// Lowercase hex SHA-256 of the CA DER the token was made for.
    pub(crate) fn ca_hash(&self) -> &str {
        &self.ca_hash
    }

    /// The bare JWT, sent as the bearer token.
    pub(crate) fn jwt(&self) -> &str {
        &self.jwt
    }

    /// Fails if the token's `exp` is at or before `now`. A token without `exp` passes: the
    /// server decides.
    pub(crate) fn check_not_expired(&self, now: SystemTime) -> Result<(), CertError> {
        let Some(exp) = self.expires_at else {
            return Ok(());
        };
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if exp <= now {
            return Err(CertError::TokenExpired { expired_at: exp });
        }
        Ok(())
    }
}

/// Reads `exp` from the JWT payload without verifying anything.
fn decode_exp(payload: &str) -> Result<Option<u64>, CertError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .or_else(|_| URL_SAFE.decode(payload))
        .map_err(|e| CertError::TokenFormat {
            why: format!("its jwt payload is not base64url ({e})"),
        })?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| CertError::TokenFormat {
            why: format!("its jwt payload is not json ({e})"),
        })?;
    match claims.get("exp") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            // Go's jwt library encodes NumericDate as a number, possibly with a fraction.
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0) {
                // Saturating float-to-int conversion; sub-second precision does not matter.
                Ok(Some(f as u64))
            } else {
                Ok(Some(0))
            }
        }
        Some(_) => Err(CertError::TokenFormat {
            why: "its jwt exp claim is not a number".to_owned(),
        }),
    }
}

/// The token to use: the bootstrap token file wins when it exists and is not empty (as in
/// KubeEdge), else the configured value. `None` when neither has one.
pub(crate) async fn read_token(
    token_file: &Path,
    configured: &str,
) -> Result<Option<String>, CertError> {
    match tokio::fs::read_to_string(token_file).await {
        Ok(text) if !text.trim().is_empty() => return Ok(Some(text.trim().to_owned())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CertError::Io {
                action: "reading the bootstrap token file",
                path: token_file.to_path_buf(),
                source,
            });
        }
    }
    let configured = configured.trim();
    Ok((!configured.is_empty()).then(|| configured.to_owned()))
}

/// Returns `text` with the value of `modules.edgeHub.token` replaced by `""`, touching nothing
/// else (comments, order, other keys and line endings survive). `Ok(None)` when there is no
/// non-empty token there.
pub(crate) fn remove_token_from_yaml(text: &str) -> Result<Option<String>, String> {
    let mut out = String::with_capacity(text.len());
    let mut path: Vec<(usize, &str)> = Vec::new();
    let mut changed = false;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        let content = body.trim_start_matches(' ');
        let indent = body.len() - content.len();
        let Some((key, rest)) = mapping_key(content) else {
            out.push_str(line);
            continue;
        };
        while path.last().is_some_and(|(i, _)| *i >= indent) {
            path.pop();
        }
        let under_hub = matches!(path.as_slice(), [(_, "modules"), (_, "edgeHub")]);
        if under_hub && key == "token" {
            let value = rest.trim_start();
            let (value, comment) = split_comment(value);
            let value = value.trim_end();
            if value.starts_with('|') || value.starts_with('>') {
                return Err("modules.edgeHub.token is a block scalar".to_owned());
            }
            if !matches!(value, "" | "\"\"" | "''" | "~" | "null") {
                let head = &body[..body.len() - rest.len()];
                out.push_str(head);
                out.push_str(" \"\"");
                if !comment.is_empty() {
                    out.push(' ');
                    out.push_str(comment);
                }
                out.push_str(ending);
                changed = true;
                continue;
            }
        }
        path.push((indent, key));
        out.push_str(line);
    }
    Ok(changed.then_some(out))
}

/// `key: rest` for a block-mapping line; `None` for blanks, comments, list items and the rest.
fn mapping_key(content: &str) -> Option<(&str, &str)> {
    if content.is_empty() || content.starts_with('#') || content.starts_with('-') {
        return None;
    }
    let colon = content.find(':')?;
    let (key, rest) = content.split_at(colon);
    let rest = rest.strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    let key = key.trim();
    let key = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
        .unwrap_or(key);
    Some((key, rest))
}

/// Splits a scalar from a trailing ` # comment`, respecting quotes.
fn split_comment(value: &str) -> (&str, &str) {
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'');
    let search_from = match quote {
        Some(q) => value[1..].find(q).map(|i| i + 2).unwrap_or(value.len()),
        None => 0,
    };
    let tail = &value[search_from..];
    let hash = if search_from == 0 && tail.starts_with('#') {
        Some(0)
    } else {
        tail.find(" #").map(|i| i + 1)
    };
    match hash {
        Some(i) => (&value[..search_from + i], &value[search_from + i..]),
        None => (value, ""),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn jwt_with(payload: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(payload.as_bytes());
        format!("{header}.{payload}.c2lnbmF0dXJl")
    }

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF";

    #[test]
    fn parses_four_parts_and_exp() {
        let raw = format!("{HASH}.{}\n", jwt_with(r#"{"exp":1700000000}"#));
        let token = BootstrapToken::parse(&raw).unwrap();
        assert_eq!(token.ca_hash(), HASH.to_ascii_lowercase());
        assert_eq!(token.jwt().split('.').count(), 3);
        let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_699_999_999);
        assert!(token.check_not_expired(before).is_ok());
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let err = token.check_not_expired(after).unwrap_err();
        assert!(matches!(
            err,
            CertError::TokenExpired {
                expired_at: 1_700_000_000
            }
        ));
        assert!(err.to_string().contains("keadm gettoken"), "{err}");
    }

    #[test]
    fn debug_hides_the_jwt() {
        let raw = format!("{HASH}.{}", jwt_with(r#"{"exp":1}"#));
        let token = BootstrapToken::parse(&raw).unwrap();
        assert!(!format!("{token:?}").contains("c2lnbmF0dXJl"));
    }

    #[test]
    fn refuses_bad_shapes() {
        for raw in [
            "",
            "abc",
            "a.b.c",
            "a.b.c.d.e",
            &format!("{HASH}..b.c"),
            &format!("nothex.{}", jwt_with("{}")),
            &format!("{HASH}.aGVhZGVy.!!!.c2ln"),
            &format!("{HASH}.aGVhZGVy.bm90IGpzb24.c2ln"),
            &format!("{HASH}.{}", jwt_with(r#"{"exp":"soon"}"#)),
        ] {
            let err = BootstrapToken::parse(raw).unwrap_err();
            assert!(matches!(err, CertError::TokenFormat { .. }), "{raw}: {err}");
            assert!(!err.to_string().contains(raw) || raw.is_empty());
        }
    }

    #[test]
    fn fractional_exp_is_accepted() {
        let raw = format!("{HASH}.{}", jwt_with(r#"{"exp":1700000000.5}"#));
        let token = BootstrapToken::parse(&raw).unwrap();
        assert_eq!(token.expires_at, Some(1_700_000_000));
    }

    #[tokio::test]
    async fn token_file_wins_over_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bootstrap-edgecore.conf");
        assert_eq!(read_token(&file, "").await.unwrap(), None);
        assert_eq!(
            read_token(&file, " cfg ").await.unwrap().as_deref(),
            Some("cfg")
        );
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(
            read_token(&file, "cfg").await.unwrap().as_deref(),
            Some("from-file")
        );
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(
            read_token(&file, "cfg").await.unwrap().as_deref(),
            Some("cfg")
        );
    }

    const CONFIG: &str = "\
# edgecore config
apiVersion: edgecore.config.kubeedge.io/v1alpha2
kind: EdgeCore
modules:
  dbTest:
    token: keep-me
  edgeHub:
    enable: true   # on
    # the token below is used once
    token: abc.def.ghi.jkl  # from keadm
    tlsCaFile: /etc/kubeedge/ca/rootCA.crt
    websocket:
      token: not-this-one
  edged:
    hostnameOverride: node-a
token: top-level-stays
";

    #[test]
    fn yaml_edit_replaces_only_the_hub_token() {
        let edited = remove_token_from_yaml(CONFIG).unwrap().unwrap();
        let expected = CONFIG.replace(
            "    token: abc.def.ghi.jkl  # from keadm",
            "    token: \"\" # from keadm",
        );
        assert_eq!(edited, expected);
        assert_eq!(remove_token_from_yaml(&edited).unwrap(), None);
    }

    #[test]
    fn yaml_edit_handles_quotes_crlf_and_absence() {
        let text = "modules:\r\n  edgeHub:\r\n    token: \"a.b.c.d\"\r\n    heartbeat: 15\r\n";
        let edited = remove_token_from_yaml(text).unwrap().unwrap();
        assert_eq!(
            edited,
            "modules:\r\n  edgeHub:\r\n    token: \"\"\r\n    heartbeat: 15\r\n"
        );
        assert_eq!(
            remove_token_from_yaml("modules:\n  edgeHub:\n    heartbeat: 15\n").unwrap(),
            None
        );
        assert_eq!(
            remove_token_from_yaml("modules:\n  edgeHub:\n    token: ''\n").unwrap(),
            None
        );
        assert!(remove_token_from_yaml("modules:\n  edgeHub:\n    token: |\n      x\n").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(raw in ".{0,200}") {
            let _ = BootstrapToken::parse(&raw);
        }

        #[test]
        fn yaml_edit_never_panics_and_is_idempotent(text in "[ a-zA-Z:#'\"\\-|\r\n.]{0,300}") {
            if let Ok(Some(edited)) = remove_token_from_yaml(&text) {
                proptest::prop_assert_eq!(edited.lines().count(), text.lines().count());
                proptest::prop_assert_eq!(remove_token_from_yaml(&edited), Ok(None));
            }
        }

        #[test]
        fn yaml_edit_blanks_any_token_value(value in "[A-Za-z0-9._-]{1,80}", comment in proptest::option::of("[a-z ]{0,20}")) {
            proptest::prop_assume!(value != "null");
            let line = match &comment {
                Some(c) => format!("    token: {value} # {c}\n"),
                None => format!("    token: {value}\n"),
            };
            let text = format!("modules:\n  edgeHub:\n{line}    heartbeat: 15\n");
            let edited = remove_token_from_yaml(&text).unwrap();
            let edited = edited.as_deref().unwrap_or(&text);
            proptest::prop_assert!(edited.contains("    token: \"\""), "{}", edited);
            proptest::prop_assert!(edited.ends_with("    heartbeat: 15\n"));
        }
    }

    #[test]
    fn split_comment_respects_quotes() {
        assert_eq!(split_comment("\"a # b\" # c"), ("\"a # b\" ", "# c"));
        assert_eq!(split_comment("plain"), ("plain", ""));
        assert_eq!(split_comment("# only"), ("", "# only"));
    }
}
