//! Who is asking, when `requireAuthorization` is on: as KubeEdge's MetaServer, a bearer token
//! is checked as a service-account JWT (signed by one of `serviceAccountKeyFiles`, issued by one
//! of `serviceAccountIssuers`, for one of `apiAudiences`, not expired); a request without one is
//! anonymous; a token that does not check out is refused (401).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;

/// A key tokens may be signed with.
#[derive(Debug, Clone)]
enum Key {
    Rsa(Vec<u8>),
    EcP256(Vec<u8>),
}

/// The authenticated user of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) groups: Vec<String>,
    /// The pod (namespace, name, uid) a bound token was issued for: it must still exist.
    pub(crate) pod: Option<(String, String, String)>,
}

impl User {
    pub(crate) fn anonymous() -> Self {
        Self {
            name: "system:anonymous".to_owned(),
            groups: vec!["system:unauthenticated".to_owned()],
            pod: None,
        }
    }
}

/// What tokens are checked against.
#[derive(Debug, Clone, Default)]
pub(crate) struct Authenticator {
    keys: Vec<Key>,
    issuers: Vec<String>,
    audiences: Vec<String>,
}

/// A key file that cannot be used: start-up fails naming it.
#[derive(Debug, thiserror::Error)]
#[error("modules.metaManager.metaServer.serviceAccountKeyFiles: {path}: {why}")]
pub(crate) struct KeyFileError {
    path: String,
    why: String,
}

impl Authenticator {
    pub(crate) fn new(
        key_files: &[String],
        issuers: &[String],
        audiences: &[String],
    ) -> Result<Self, KeyFileError> {
        let mut keys = Vec::new();
        for path in key_files {
            keys.extend(read_keys(Path::new(path)).map_err(|why| KeyFileError {
                path: path.clone(),
                why,
            })?);
        }
        Ok(Self {
            keys,
            issuers: issuers.to_vec(),
            audiences: audiences.to_vec(),
        })
    }

    /// The user of `authorization` (the header's value); `Err` names why a token was refused.
    pub(crate) fn user(&self, authorization: Option<&str>, now: u64) -> Result<User, String> {
        let Some(value) = authorization else {
            return Ok(User::anonymous());
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or("the Authorization header is not a bearer token")?;
        self.check(token, now)
    }

    fn check(&self, token: &str, now: u64) -> Result<User, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the token is not a JWT".to_owned());
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('='));
        let header: Value = decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("the token's header is not JSON")?;
        let claims: Value = decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("the token's claims are not JSON")?;
        let sig = decode(s).map_err(|_| "the token's signature is not base64url")?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        let alg = header["alg"].as_str().unwrap_or_default();
        let verified = self.keys.iter().any(|k| match (alg, k) {
            ("RS256", Key::Rsa(der)) => {
                UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der)
                    .verify(signed, &sig)
                    .is_ok()
            }
            ("ES256", Key::EcP256(point)) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed, &sig)
                    .is_ok()
            }
            _ => false,
        });
        if !verified {
            return Err(format!(
                "the token's signature ({alg}) matches no service-account key"
            ));
        }
        let iss = claims["iss"].as_str().unwrap_or_default();
        if !self.issuers.is_empty() && !self.issuers.iter().any(|i| i == iss) {
            return Err(format!("the token's issuer {iss:?} is not accepted"));
        }
        let auds: Vec<&str> = match &claims["aud"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !self.audiences.is_empty() && !auds.iter().any(|a| self.audiences.iter().any(|x| x == a))
        {
            return Err(format!("the token's audiences {auds:?} are not accepted"));
        }
        if claims["exp"].as_u64().is_some_and(|exp| exp <= now) {
            return Err("the token has expired".to_owned());
        }
        if claims["nbf"].as_u64().is_some_and(|nbf| nbf > now + 60) {
            return Err("the token is not valid yet".to_owned());
        }
        let sub = claims["sub"].as_str().unwrap_or_default();
        let Some(rest) = sub.strip_prefix("system:serviceaccount:") else {
            return Err(format!(
                "the token's subject {sub:?} is not a service account"
            ));
        };
        let Some((namespace, _)) = rest.split_once(':') else {
            return Err(format!(
                "the token's subject {sub:?} is not a service account"
            ));
        };
        let bound = &claims["kubernetes.io"]["pod"];
        let pod = match (bound["name"].as_str(), bound["uid"].as_str()) {
            (Some(name), Some(uid)) => {
                Some((namespace.to_owned(), name.to_owned(), uid.to_owned()))
            }
            _ => None,
        };
        Ok(User {
            pod,
            name: sub.to_owned(),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        })
    }
}

/// The public keys of a PEM file (`PUBLIC KEY` blocks; RSA or P-256).
fn read_keys(path: &Path) -> Result<Vec<Key>, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for spki in SubjectPublicKeyInfoDer::pem_slice_iter(&pem) {
        let spki = spki.map_err(|e| e.to_string())?;
        let (_, parsed) =
            <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<
                x509_parser::error::X509Error,
            >>::from_der(spki.as_ref())
            .map_err(|e| e.to_string())?;
        let oid = parsed.algorithm.algorithm.to_id_string();
        let data = parsed.subject_public_key.data.to_vec();
        match oid.as_str() {
            "1.2.840.113549.1.1.1" => keys.push(Key::Rsa(data)),
            "1.2.840.10045.2.1" => keys.push(Key::EcP256(data)),
            other => return Err(format!("key algorithm {other} is not RSA or ECDSA")),
        }
    }
    if keys.is_empty() {
        return Err("no PUBLIC KEY in the file".to_owned());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ES256 service-account token signed with `key`.
    fn token(key: &rcgen::KeyPair, claims: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing = format!("{header}.{body}");
        let rng = ring::rand::SystemRandom::new();
        let pair = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .unwrap();
        let sig = pair.sign(&rng, signing.as_bytes()).unwrap();
        format!("{signing}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    #[test]
    fn service_account_tokens_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let path = dir.path().join("sa.pub");
        std::fs::write(&path, key.public_key_pem()).unwrap();
        let auth = Authenticator::new(
            &[path.display().to_string()],
            &["https://kubernetes.default.svc".to_owned()],
            &["https://kubernetes.default.svc".to_owned()],
        )
        .unwrap();
        let good = serde_json::json!({
            "iss": "https://kubernetes.default.svc", "aud": ["https://kubernetes.default.svc"],
            "sub": "system:serviceaccount:shop:reader", "exp": 2_000, "nbf": 900,
        });
        let user = auth
            .user(Some(&format!("Bearer {}", token(&key, &good))), 1_000)
            .unwrap();
        assert_eq!(user.name, "system:serviceaccount:shop:reader");
        assert_eq!(user.pod, None);
        let mut bound = good.clone();
        bound["kubernetes.io"] =
            serde_json::json!({"namespace": "shop", "pod": {"name": "web", "uid": "u-1"}});
        let bound_user = auth
            .user(Some(&format!("Bearer {}", token(&key, &bound))), 1_000)
            .unwrap();
        assert_eq!(
            bound_user.pod,
            Some(("shop".to_owned(), "web".to_owned(), "u-1".to_owned()))
        );
        assert!(
            user.groups
                .contains(&"system:serviceaccounts:shop".to_owned())
        );
        assert_eq!(auth.user(None, 1_000).unwrap(), User::anonymous());

        let expired = auth.user(Some(&format!("Bearer {}", token(&key, &good))), 2_000);
        assert!(expired.unwrap_err().contains("expired"));
        let mut other_aud = good.clone();
        other_aud["aud"] = serde_json::json!("elsewhere");
        assert!(
            auth.user(Some(&format!("Bearer {}", token(&key, &other_aud))), 1_000)
                .is_err()
        );
        let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let forged = auth.user(Some(&format!("Bearer {}", token(&stranger, &good))), 1_000);
        assert!(forged.unwrap_err().contains("signature"));
        assert!(auth.user(Some("Basic abc"), 1_000).is_err());
        assert!(auth.user(Some("Bearer a.b"), 1_000).is_err());

        std::fs::write(&path, "not a key").unwrap();
        let e = Authenticator::new(&[path.display().to_string()], &[], &[]).unwrap_err();
        assert!(e.to_string().contains("sa.pub"), "{e}");
    }
}
