//! Registry credentials from a pod's `imagePullSecrets`, matched to an image as the kubelet's
//! keyring does (`pkg/credentialprovider`): secrets holding `.dockerconfigjson` (`{"auths":
//! {...}}`) or `.dockercfg` (the entries alone); an entry's key is a registry host (globs such
//! as `*.example.com` allowed per label), an optional port that must match, and an optional path
//! that must prefix the image's; Docker Hub's keys (`https://index.docker.io/v1/`) serve
//! images without a registry host. More specific keys come first; every match is tried in turn.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::runtime::RegistryAuth;

/// Docker Hub's key once the scheme and the `/v1/` path are taken off.
const DOCKER_HUB: &str = "index.docker.io";

/// One entry of a docker config: `auth` (base64 `user:password`) wins over the two fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Entry {
    username: String,
    password: String,
    auth: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DockerConfigJson {
    auths: BTreeMap<String, Entry>,
}

/// Credentials by key (`host[:port][/path]`).
#[derive(Debug, Default)]
pub(crate) struct Keyring {
    creds: BTreeMap<String, Vec<RegistryAuth>>,
}

impl Keyring {
    /// Adds the entries of one secret's data; says why when the data is not a docker config.
    pub(crate) fn add_secret(
        &mut self,
        data: &std::collections::HashMap<String, Vec<u8>>,
    ) -> Result<(), String> {
        let entries = if let Some(bytes) = data.get(".dockerconfigjson") {
            serde_json::from_slice::<DockerConfigJson>(bytes)
                .map_err(|e| format!(".dockerconfigjson is not a docker config: {e}"))?
                .auths
        } else if let Some(bytes) = data.get(".dockercfg") {
            serde_json::from_slice::<BTreeMap<String, Entry>>(bytes)
                .map_err(|e| format!(".dockercfg is not a docker config: {e}"))?
        } else {
            return Err("it has neither .dockerconfigjson nor .dockercfg".to_owned());
        };
        for (location, entry) in entries {
            let Some(key) = key_of(&location) else {
                continue;
            };
            self.creds.entry(key).or_default().push(credential(entry));
        }
        Ok(())
    }

    /// Every credential whose key matches `image`, the most specific first; empty: pull
    /// without credentials.
    pub(crate) fn lookup(&self, image: &str) -> Vec<RegistryAuth> {
        let repo = repository(image);
        // Reverse order: "quay.io/team" before "quay.io".
        let found: Vec<RegistryAuth> = self
            .creds
            .iter()
            .rev()
            .filter(|(key, _)| matches(key, &repo))
            .flat_map(|(_, creds)| creds.iter().cloned())
            .collect();
        if !found.is_empty() {
            return found;
        }
        if is_docker_hub(&repo) {
            return self.creds.get(DOCKER_HUB).cloned().unwrap_or_default();
        }
        Vec::new()
    }
}

fn credential(entry: Entry) -> RegistryAuth {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    match decoded.as_deref().and_then(|s| s.split_once(':')) {
        Some((user, password)) => RegistryAuth {
            username: user.to_owned(),
            password: password.to_owned(),
        },
        None => RegistryAuth {
            username: entry.username,
            password: entry.password,
        },
    }
}

/// `https://host:port/v1/path` → `host:port/path` (scheme dropped, a `/v1/` or `/v2/` prefix
/// of the path dropped, `/` alone dropped).
fn key_of(location: &str) -> Option<String> {
    let rest = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    let path = path
        .strip_prefix("/v1")
        .or_else(|| path.strip_prefix("/v2"))
        .filter(|p| p.starts_with('/'))
        .unwrap_or(path);
    Some(if path.is_empty() || path == "/" {
        host.to_owned()
    } else {
        format!("{host}{path}")
    })
}

/// The image's repository, normalized as docker does: `nginx` → `docker.io/library/nginx`,
/// `team/app` → `docker.io/team/app`; the tag and digest dropped.
fn repository(image: &str) -> String {
    let name = image.split('@').next().unwrap_or_default();
    // A tag is a ':' after the last '/'.
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => name.to_owned(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    }
}

fn is_docker_hub(repo: &str) -> bool {
    matches!(
        repo.split('/').next(),
        Some("docker.io" | "index.docker.io")
    )
}

/// The kubelet's `urlsMatch`: same number of host labels, each matching its glob, the same port,
/// and the key's path a prefix of the image's.
fn matches(key: &str, repo: &str) -> bool {
    let (key_host, key_path) = split_path(key);
    let (repo_host, repo_path) = split_path(repo);
    let (key_host, key_port) = split_port(key_host);
    let (repo_host, repo_port) = split_port(repo_host);
    if key_port != repo_port || !repo_path.starts_with(key_path) {
        return false;
    }
    let key_labels: Vec<&str> = key_host.split('.').collect();
    let repo_labels: Vec<&str> = repo_host.split('.').collect();
    key_labels.len() == repo_labels.len()
        && key_labels
            .iter()
            .zip(&repo_labels)
            .all(|(g, l)| glob(g.as_bytes(), l.as_bytes()))
}

fn split_path(s: &str) -> (&str, &str) {
    match s.find('/') {
        Some(i) => s.split_at(i),
        None => (s, ""),
    }
}

fn split_port(host: &str) -> (&str, &str) {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (host, ""),
    }
}

/// `*` (any run) and `?` (one character) within one host label.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Greedy matching that returns to the last `*`: linear in practice, never exponential
    // whatever a secret's keys hold.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn secret(key: &str, json: &str) -> HashMap<String, Vec<u8>> {
        HashMap::from([(key.to_owned(), json.as_bytes().to_vec())])
    }

    fn users(creds: &[RegistryAuth]) -> Vec<&str> {
        creds.iter().map(|c| c.username.as_str()).collect()
    }

    #[test]
    fn repositories_are_normalized_like_docker() {
        assert_eq!(repository("nginx"), "docker.io/library/nginx");
        assert_eq!(repository("nginx:1.27"), "docker.io/library/nginx");
        assert_eq!(repository("team/app@sha256:ab"), "docker.io/team/app");
        assert_eq!(
            repository("registry.example.com:5000/team/app:v1"),
            "registry.example.com:5000/team/app"
        );
        assert_eq!(repository("localhost/app:local"), "localhost/app");
    }

    #[test]
    fn keys_drop_the_scheme_and_the_api_version() {
        assert_eq!(
            key_of("https://index.docker.io/v1/").as_deref(),
            Some(DOCKER_HUB)
        );
        assert_eq!(key_of("quay.io/team").as_deref(), Some("quay.io/team"));
        assert_eq!(key_of("http://reg:5000/v2/").as_deref(), Some("reg:5000"));
        assert_eq!(key_of("https://"), None);
    }

    #[test]
    fn the_most_specific_match_comes_first_and_globs_match_one_label() {
        let mut k = Keyring::default();
        // "cXVheS1hbGw6cHc=" is "quay-all:pw".
        k.add_secret(&secret(
            ".dockerconfigjson",
            r#"{"auths": {
                "quay.io": {"auth": "cXVheS1hbGw6cHc="},
                "quay.io/team": {"username": "quay-team", "password": "pw"},
                "*.example.com": {"username": "wild", "password": "pw"},
                "reg.internal:5000": {"username": "ported", "password": "pw"}
            }}"#,
        ))
        .unwrap();
        assert_eq!(
            users(&k.lookup("quay.io/team/app:v1")),
            ["quay-team", "quay-all"]
        );
        assert_eq!(users(&k.lookup("quay.io/other/app")), ["quay-all"]);
        assert_eq!(users(&k.lookup("registry.example.com/app")), ["wild"]);
        assert!(k.lookup("a.registry.example.com/app").is_empty());
        assert_eq!(users(&k.lookup("reg.internal:5000/app")), ["ported"]);
        assert!(
            k.lookup("reg.internal/app").is_empty(),
            "the port must match"
        );
        assert!(k.lookup("nginx").is_empty());
    }

    #[test]
    fn docker_hub_credentials_serve_images_without_a_registry() {
        let mut k = Keyring::default();
        k.add_secret(&secret(
            ".dockercfg",
            r#"{"https://index.docker.io/v1/": {"username": "hub", "password": "pw"}}"#,
        ))
        .unwrap();
        assert_eq!(users(&k.lookup("nginx:1.27")), ["hub"]);
        assert_eq!(users(&k.lookup("docker.io/team/app")), ["hub"]);
        assert!(k.lookup("quay.io/team/app").is_empty());
        let c = &k.lookup("nginx")[0];
        assert_eq!(c.password, "pw");
    }

    #[test]
    fn other_secrets_are_refused_with_a_reason() {
        let mut k = Keyring::default();
        let err = k.add_secret(&secret("password", "x")).unwrap_err();
        assert!(err.contains(".dockerconfigjson"), "{err}");
        let err = k
            .add_secret(&secret(".dockerconfigjson", "{not json"))
            .unwrap_err();
        assert!(err.contains("not a docker config"), "{err}");
    }

    #[test]
    fn globs() {
        assert!(glob(b"*", b"registry"));
        assert!(glob(b"reg*", b"registry"));
        assert!(glob(b"r?g*y", b"registry"));
        assert!(!glob(b"reg", b"registry"));
        assert!(!glob(b"?", b""));
        assert!(glob(b"", b""));
        assert!(glob(b"*", b""));
        assert!(!glob(b"", b"x"));
        assert!(glob(b"a*b*c", b"aXXbYYc"));
        assert!(!glob(b"a*b*c", b"aXXbYY"));
        // Many stars against a long label that almost matches: answered at once.
        let pattern = [b"*a".repeat(30), b"b".to_vec()].concat();
        assert!(!glob(&pattern, &b"a".repeat(63)));
    }
}
