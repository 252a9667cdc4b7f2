//! RBAC evaluated at the edge, as KubeEdge's MetaServer does with `requireAuthorization`: the
//! cluster's Roles, ClusterRoles and their bindings decide whether a user may do a verb on a
//! resource. Discovery paths are always allowed. The rules are fetched from the cloud through
//! dynamicController and kept; offline, the last ones fetched decide.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use super::auth::User;

/// How long fetched rules are used before they are fetched again.
pub(crate) const RULES_FRESH_FOR: Duration = Duration::from_secs(30);

/// What a request asks to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: String,
        namespace: Option<String>,
        name: Option<String>,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

/// The RBAC objects of the cluster, as lists' `items`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    pub(crate) roles: Vec<Value>,
    pub(crate) role_bindings: Vec<Value>,
    pub(crate) cluster_roles: Vec<Value>,
    pub(crate) cluster_role_bindings: Vec<Value>,
}

/// The rules and when they were fetched.
#[derive(Debug, Default)]
pub(crate) struct RuleCache {
    pub(crate) current: Mutex<Option<(Rules, Instant)>>,
}

/// Whether discovery, version and health paths (always allowed).
pub(crate) fn is_discovery(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    matches!(
        p,
        "/api" | "/apis" | "/version" | "/healthz" | "/readyz" | "/livez" | "/openapi/v2"
    ) || p.starts_with("/openapi/v3")
        || {
            // /api/v1, /apis/<group>, /apis/<group>/<version>
            let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            matches!(parts.as_slice(), ["api", _] | ["apis", _] | ["apis", _, _])
        }
}

impl Rules {
    /// Whether `user` may do what `attrs` says; `Err` is the reason it may not.
    pub(crate) fn allows(&self, user: &User, attrs: &Attributes) -> bool {
        let bound = |binding: &Value| {
            binding["subjects"]
                .as_array()
                .is_some_and(|subjects| subjects.iter().any(|s| subject_is(s, user, binding)))
        };
        // ClusterRoleBindings grant everywhere.
        for b in &self.cluster_role_bindings {
            if bound(b) && self.role_of(b, None).is_some_and(|r| grants(r, attrs)) {
                return true;
            }
        }
        // RoleBindings grant in their namespace only.
        let Attributes::Resource {
            namespace: Some(ns),
            ..
        } = attrs
        else {
            return false;
        };
        self.role_bindings.iter().any(|b| {
            b["metadata"]["namespace"].as_str() == Some(ns.as_str())
                && bound(b)
                && self.role_of(b, Some(ns)).is_some_and(|r| grants(r, attrs))
        })
    }

    fn role_of(&self, binding: &Value, namespace: Option<&str>) -> Option<&Value> {
        let name = binding["roleRef"]["name"].as_str()?;
        match binding["roleRef"]["kind"].as_str()? {
            "ClusterRole" => self
                .cluster_roles
                .iter()
                .find(|r| r["metadata"]["name"].as_str() == Some(name)),
            "Role" => self.roles.iter().find(|r| {
                r["metadata"]["name"].as_str() == Some(name)
                    && r["metadata"]["namespace"].as_str() == namespace
            }),
            _ => None,
        }
    }
}

fn subject_is(subject: &Value, user: &User, binding: &Value) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => user.name == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"]
                .as_str()
                .or_else(|| binding["metadata"]["namespace"].as_str())
                .unwrap_or_default();
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array().is_some_and(|l| {
        l.iter()
            .any(|v| v.as_str() == Some("*") || v.as_str() == Some(want))
    })
}

fn grants(role: &Value, attrs: &Attributes) -> bool {
    let Some(rules) = role["rules"].as_array() else {
        return false;
    };
    rules.iter().any(|rule| match attrs {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let full = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let names_ok = match (rule["resourceNames"].as_array(), name) {
                (None, _) => true,
                (Some(n), _) if n.is_empty() => true,
                (Some(n), Some(name)) => n.iter().any(|v| v.as_str() == Some(name.as_str())),
                (Some(_), None) => false,
            };
            has(&rule["verbs"], verb)
                && has(&rule["apiGroups"], group)
                && (has(&rule["resources"], &full)
                    || (!subresource.is_empty()
                        && has(&rule["resources"], &format!("*/{subresource}"))))
                && names_ok
        }
        Attributes::NonResource { verb, path } => {
            has(&rule["verbs"], verb)
                && rule["nonResourceURLs"].as_array().is_some_and(|urls| {
                    urls.iter().filter_map(Value::as_str).any(|u| {
                        u == "*"
                            || u == path
                            || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
                    })
                })
        }
    })
}

/// The Kubernetes verb of a request.
pub(crate) fn verb_of(method: &hyper::Method, named: bool, watching: bool) -> &'static str {
    match *method {
        hyper::Method::GET | hyper::Method::HEAD if watching => "watch",
        hyper::Method::GET | hyper::Method::HEAD if named => "get",
        hyper::Method::GET | hyper::Method::HEAD => "list",
        hyper::Method::POST => "create",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE if named => "delete",
        hyper::Method::DELETE => "deletecollection",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sa(ns: &str, name: &str) -> User {
        User {
            name: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ],
            pod: None,
        }
    }

    fn read(verb: &str, resource: &str, ns: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: String::new(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: Some(ns.into()),
            name: None,
        }
    }

    #[test]
    fn roles_grant_in_their_namespace_and_cluster_roles_everywhere() {
        let rules = Rules {
            roles: vec![
                json!({"metadata": {"name": "pod-reader", "namespace": "shop"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}),
            ],
            role_bindings: vec![json!({"metadata": {"name": "b", "namespace": "shop"},
                "roleRef": {"kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader"}]})],
            cluster_roles: vec![json!({"metadata": {"name": "cm-all"},
                "rules": [{"apiGroups": ["*"], "resources": ["configmaps"], "verbs": ["*"]}]})],
            cluster_role_bindings: vec![json!({"metadata": {"name": "cb"},
                "roleRef": {"kind": "ClusterRole", "name": "cm-all"},
                "subjects": [{"kind": "Group", "name": "system:serviceaccounts"}]})],
        };
        let reader = sa("shop", "reader");
        assert!(rules.allows(&reader, &read("list", "pods", "shop")));
        assert!(!rules.allows(&reader, &read("list", "pods", "default")));
        assert!(!rules.allows(&reader, &read("delete", "pods", "shop")));
        assert!(!rules.allows(&reader, &read("list", "secrets", "shop")));
        assert!(rules.allows(&sa("other", "x"), &read("create", "configmaps", "anywhere")));
        assert!(!rules.allows(&User::anonymous(), &read("list", "configmaps", "shop")));
        assert!(!rules.allows(
            &reader,
            &Attributes::NonResource {
                verb: "get".into(),
                path: "/metrics".into()
            }
        ));
    }

    #[test]
    fn discovery_paths_are_known() {
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/healthz",
        ] {
            assert!(is_discovery(p), "{p}");
        }
        for p in ["/api/v1/pods", "/apis/apps/v1/deployments", "/metrics"] {
            assert!(!is_discovery(p), "{p}");
        }
    }
}
