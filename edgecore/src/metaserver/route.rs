//! Request paths and query parameters to what is asked for.

use std::collections::HashMap;

use super::resources::{self, Resource};

/// What a GET asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Healthz,
    Version,
    /// `/api`
    ApiVersions,
    /// `/apis`
    ApiGroups,
    /// `/apis/<group>`
    ApiGroup(String),
    /// `/api/v1`, `/apis/<group>/<version>`
    Resources {
        group: String,
        version: String,
    },
    /// A list or watch (no name), or a get.
    Objects {
        resource: &'static Resource,
        namespace: Option<String>,
        name: Option<String>,
    },
}

/// Why a path is not served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// Nothing at that path.
    Path,
    /// A resource this MetaServer does not hold.
    Resource { group: String, plural: String },
}

/// The route of `path` (without the query).
pub(crate) fn route(path: &str) -> Result<Route, Unknown> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["healthz"] | ["readyz"] | ["livez"] => Ok(Route::Healthz),
        ["version"] => Ok(Route::Version),
        ["api"] => Ok(Route::ApiVersions),
        ["apis"] => Ok(Route::ApiGroups),
        ["apis", group] => Ok(Route::ApiGroup((*group).to_owned())),
        ["api", version] => Ok(Route::Resources {
            group: String::new(),
            version: (*version).to_owned(),
        }),
        ["apis", group, version] => Ok(Route::Resources {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        }),
        ["api", version, rest @ ..] => objects("", version, rest),
        ["apis", group, version, rest @ ..] => objects(group, version, rest),
        _ => Err(Unknown::Path),
    }
}

fn objects(group: &str, version: &str, rest: &[&str]) -> Result<Route, Unknown> {
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return Err(Unknown::Path),
    };
    let resource = resources::find(group, version, plural).ok_or_else(|| Unknown::Resource {
        group: group.to_owned(),
        plural: plural.to_owned(),
    })?;
    if namespace.is_some() && !resource.namespaced {
        return Err(Unknown::Path);
    }
    Ok(Route::Objects {
        resource,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

/// The query string's parameters, percent-decoded (`+` is a space, as in forms).
pub(crate) fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, escaped) {
            (_, Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_what_kubectl_and_client_go_ask_for() {
        assert_eq!(route("/api"), Ok(Route::ApiVersions));
        assert_eq!(
            route("/apis/discovery.k8s.io/v1"),
            Ok(Route::Resources {
                group: "discovery.k8s.io".to_owned(),
                version: "v1".to_owned()
            })
        );
        let Ok(Route::Objects {
            resource,
            namespace,
            name,
        }) = route("/api/v1/namespaces/default/pods/web")
        else {
            panic!("not a get");
        };
        assert_eq!(
            (resource.kind, namespace.as_deref(), name.as_deref()),
            ("Pod", Some("default"), Some("web"))
        );
        assert!(matches!(
            route("/apis/coordination.k8s.io/v1/leases"),
            Ok(Route::Objects {
                namespace: None,
                name: None,
                ..
            })
        ));
        assert_eq!(
            route("/apis/apps/v1/namespaces/default/deployments"),
            Err(Unknown::Resource {
                group: "apps".to_owned(),
                plural: "deployments".to_owned()
            })
        );
        assert_eq!(
            route("/api/v1/namespaces/default/nodes"),
            Err(Unknown::Path)
        );
        assert_eq!(route("/api/v1/pods/a/b/c"), Err(Unknown::Path));
        assert_eq!(route("/metrics"), Err(Unknown::Path));
    }

    #[test]
    fn query_values_are_decoded() {
        let q = query(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&x"));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "");
        assert_eq!(query(Some("a=%zz%4"))["a"], "%zz%4");
    }
}
