//! `requireAuthorization`: every request is authenticated ([`super::auth`]) and authorized
//! ([`super::rbac`]) before it is answered; discovery is open to everyone.

use std::time::Instant;

use hyper::header::AUTHORIZATION;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::api::Api;
use super::application::{Application, Verb};
use super::auth::{Authenticator, User};
use super::body::{ApiBody, failure};
use super::cloud::{Cloud, Target};
use super::rbac::{Attributes, RULES_FRESH_FOR, RuleCache, Rules, is_discovery, verb_of};

/// Authentication and the RBAC rules.
#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) authenticator: Authenticator,
    pub(crate) rules: RuleCache,
}

/// `Err` is the answer to a request that may not go on.
pub(crate) async fn check<B>(
    api: &Api,
    guard: &Guard,
    req: &Request<B>,
) -> Result<(), Response<ApiBody>> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let now = edgehub::now_millis() / 1000;
    let user = guard
        .authenticator
        .user(header, u64::try_from(now).unwrap_or_default())
        .map_err(|why| {
            failure(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                &format!("Unauthorized: {why}"),
            )
        })?;
    // A token bound to a pod is good only while that pod exists (the API server's check).
    if let Some((ns, name, uid)) = &user.pod {
        let stored = api
            .store
            .get(&format!("{ns}/pod/{name}"))
            .await
            .ok()
            .flatten();
        let alive = stored.is_some_and(|text| {
            serde_json::from_str::<Value>(&text)
                .ok()
                .is_some_and(|p| p["metadata"]["uid"].as_str() == Some(uid.as_str()))
        });
        if !alive {
            return Err(failure(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                &format!(
                    "Unauthorized: the token was issued for pod {ns}/{name} ({uid}), which is not on this node any more"
                ),
            ));
        }
    }
    let path = req.uri().path();
    let query = super::route::query(req.uri().query());
    let watching = query.get("watch").is_some_and(|w| super::api::truthy(w));
    let attrs = match Target::parse(path) {
        Some(t) => Attributes::Resource {
            verb: verb_of(req.method(), t.name.is_some(), watching).to_owned(),
            group: t.group,
            resource: t.plural,
            subresource: t.subresource,
            namespace: t.namespace,
            name: t.name,
        },
        None => {
            if is_discovery(path) {
                return Ok(());
            }
            Attributes::NonResource {
                verb: req.method().as_str().to_lowercase(),
                path: path.to_owned(),
            }
        }
    };
    let rules = rules(api, guard).await;
    if rules.as_ref().is_some_and(|r| r.allows(&user, &attrs)) {
        return Ok(());
    }
    let why = match &rules {
        None => " (no RBAC rules could be read from the cloud yet)",
        Some(_) => "",
    };
    Err(failure(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &forbidden(&user, &attrs, why),
    ))
}

/// kube-apiserver's wording.
fn forbidden(user: &User, attrs: &Attributes, why: &str) -> String {
    match attrs {
        Attributes::Resource {
            verb,
            group,
            resource,
            namespace,
            ..
        } => {
            let scope = match namespace {
                Some(ns) => format!(" in the namespace \"{ns}\""),
                None => " at the cluster scope".to_owned(),
            };
            format!(
                "{resource} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{group}\"{scope}{why}",
                user.name
            )
        }
        Attributes::NonResource { verb, path } => format!(
            "forbidden: User \"{}\" cannot {verb} path \"{path}\"{why}",
            user.name
        ),
    }
}

/// The current rules: fetched through the cloud when older than [`RULES_FRESH_FOR`], else (or
/// when the cloud cannot answer) the last ones fetched.
async fn rules(api: &Api, guard: &Guard) -> Option<Rules> {
    let mut current = guard.rules.current.lock().await;
    let stale = current
        .as_ref()
        .is_none_or(|(_, at)| at.elapsed() >= RULES_FRESH_FOR);
    if stale
        && let Some(cloud) = &api.cloud
        && let Some(fresh) = fetch(cloud).await
    {
        *current = Some((fresh, Instant::now()));
    }
    current.as_ref().map(|(r, _)| r.clone())
}

async fn fetch(cloud: &Cloud) -> Option<Rules> {
    let mut lists = Vec::new();
    for plural in [
        "roles",
        "rolebindings",
        "clusterroles",
        "clusterrolebindings",
    ] {
        let target = Target {
            group: "rbac.authorization.k8s.io".to_owned(),
            version: "v1".to_owned(),
            plural: plural.to_owned(),
            namespace: None,
            name: None,
            subresource: String::new(),
        };
        let app = Application::new(
            &cloud.node,
            super::application::key(&target.group, &target.version, plural, None, None),
            Verb::List,
            "",
            &serde_json::json!({}),
            None,
        );
        let body = match super::cloud::ask_body(cloud, &target, Verb::List, app).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) | Err(_) => {
                tracing::debug!(plural, "RBAC rules could not be read from the cloud");
                return None;
            }
        };
        let items = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("items").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        lists.push(items);
    }
    let mut lists = lists.into_iter();
    Some(Rules {
        roles: lists.next().unwrap_or_default(),
        role_bindings: lists.next().unwrap_or_default(),
        cluster_roles: lists.next().unwrap_or_default(),
        cluster_role_bindings: lists.next().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn api_with(rules: Rules) -> (tempfile::TempDir, Api, Guard) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(&dir.path().join("edgecore.db")).unwrap();
        store
            .put_object(
                "default/pod/web",
                &json!({"metadata": {"name": "web", "namespace": "default", "uid": "u-web"}}),
                None,
            )
            .await
            .unwrap();
        let api = Api {
            store,
            changes: super::super::Changes::new(),
            bookmark_every: std::time::Duration::from_secs(30),
            cancel: tokio_util::sync::CancellationToken::new(),
            tracker: tokio_util::task::TaskTracker::new(),
            cloud: None,
            guard: None,
        };
        let guard = Guard {
            authenticator: Authenticator::default(),
            rules: RuleCache::default(),
        };
        *guard.rules.current.lock().await = Some((rules, Instant::now()));
        (dir, api, guard)
    }

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn discovery_is_open_and_the_rest_needs_a_role() {
        let rules = Rules {
            cluster_roles: vec![json!({"metadata": {"name": "anon-pods"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})],
            cluster_role_bindings: vec![json!({"metadata": {"name": "b"},
                "roleRef": {"kind": "ClusterRole", "name": "anon-pods"},
                "subjects": [{"kind": "Group", "name": "system:unauthenticated"}]})],
            ..Rules::default()
        };
        let (_dir, api, guard) = api_with(rules).await;
        assert!(check(&api, &guard, &get("/api/v1")).await.is_ok());
        assert!(check(&api, &guard, &get("/api/v1/pods")).await.is_ok());
        let refused = check(&api, &guard, &get("/api/v1/namespaces/default/secrets"))
            .await
            .unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let refused = check(&api, &guard, &get("/api/v1/pods?watch=1"))
            .await
            .unwrap_err();
        assert_eq!(
            refused.status(),
            StatusCode::FORBIDDEN,
            "watch is its own verb"
        );
        let bad = Request::builder()
            .uri("/api/v1/pods")
            .header("authorization", "Bearer not.a.jwt")
            .body(())
            .unwrap();
        assert_eq!(
            check(&api, &guard, &bad).await.unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        api.store.shutdown().await;
    }

    #[test]
    fn forbidden_says_who_what_and_where() {
        let m = forbidden(
            &User::anonymous(),
            &Attributes::Resource {
                verb: "list".into(),
                group: String::new(),
                resource: "secrets".into(),
                subresource: String::new(),
                namespace: Some("default".into()),
                name: None,
            },
            "",
        );
        assert_eq!(
            m,
            "secrets is forbidden: User \"system:anonymous\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
        );
    }
}
