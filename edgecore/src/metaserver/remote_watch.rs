//! Watches of resources the edge does not hold, as KubeEdge's MetaServer runs them: a `watch`
//! application makes CloudCore's dynamicController register a listener for this node, which
//! sends every matching object and then every change down as ordinary `insert`, `update` and
//! `delete` messages. metamanager stores and acks those like any other, and the watch is then
//! served locally from its commits, like the watch of a held kind.
//!
//! Listeners live in CloudCore's memory, so after every new session (a reconnect, a VIP move to
//! the other replica) the set of live watch applications is sent again (`watchapp/sync`), and
//! again whenever the last watcher of one ends, so that the cloud drops its listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use edgehub::{LinkState, Message, Route};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::api::Api;
use super::application::{Application, Verb, stored_type};
use super::body::{ApiBody, failure};
use super::cloud::{APPLICATION_TIMEOUT, Cloud, Target, ask_raw};
use super::resources::Resource;
use super::selector::Selector;
use super::watch::{self, From, WatchRequest};

/// Resource types watched through the cloud at most (each keeps a small descriptor for the
/// life of the process).
const MAX_TYPES: usize = 64;

/// The live watch applications and the resource types learnt from the cloud.
#[derive(Debug, Default)]
pub(crate) struct WatchApps {
    live: Mutex<HashMap<String, Live>>,
    types: Mutex<HashMap<(String, String, String), &'static Resource>>,
    /// Woken when the set of live applications shrank: the cloud should hear of it.
    changed: Notify,
}

#[derive(Debug)]
struct Live {
    app: Application,
    watchers: usize,
}

/// Held by a watch task; the last one of an application takes it off the live set.
pub(crate) struct WatchGuard {
    apps: Arc<WatchApps>,
    id: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut live = self.apps.live.lock().unwrap_or_else(|p| p.into_inner());
        let gone = match live.get_mut(&self.id) {
            Some(l) => {
                l.watchers = l.watchers.saturating_sub(1);
                l.watchers == 0
            }
            None => false,
        };
        if gone {
            live.remove(&self.id);
            drop(live);
            self.apps.changed.notify_one();
        }
    }
}

impl WatchApps {
    fn snapshot(&self) -> HashMap<String, Application> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, l)| (id.clone(), l.app.clone()))
            .collect()
    }

    /// Counts one more watcher of `id` if it is live.
    fn join(self: &Arc<Self>, id: &str) -> Option<WatchGuard> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let l = live.get_mut(id)?;
        l.watchers += 1;
        Some(WatchGuard {
            apps: Arc::clone(self),
            id: id.to_owned(),
        })
    }

    fn add(self: &Arc<Self>, app: Application) -> WatchGuard {
        let id = app.id.clone();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.entry(id.clone())
            .or_insert(Live { app, watchers: 0 })
            .watchers += 1;
        WatchGuard {
            apps: Arc::clone(self),
            id,
        }
    }

    fn known_type(&self, target: &Target) -> Option<&'static Resource> {
        let types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        types
            .get(&(
                target.group.clone(),
                target.version.clone(),
                target.plural.clone(),
            ))
            .copied()
    }

    fn learn_type(&self, target: &Target, kind: &str) -> Option<&'static Resource> {
        let mut types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        let key = (
            target.group.clone(),
            target.version.clone(),
            target.plural.clone(),
        );
        if let Some(r) = types.get(&key) {
            return Some(r);
        }
        if types.len() >= MAX_TYPES {
            return None;
        }
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let resource: &'static Resource = Box::leak(Box::new(Resource {
            group: leak(target.group.clone()),
            version: leak(target.version.clone()),
            plural: leak(target.plural.clone()),
            kind: leak(kind.to_owned()),
            stored: leak(stored_type(&target.plural)),
            namespaced: target.namespace.is_some(),
            short_names: &[],
        }));
        types.insert(key, resource);
        Some(resource)
    }
}

/// Serves a watch of a resource the edge does not hold.
pub(crate) async fn start(
    api: &Api,
    cloud: &Cloud,
    target: &Target,
    query: &HashMap<String, String>,
    table: bool,
) -> Response<ApiBody> {
    let resource = match resource_of(cloud, target).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let labels = query.get("labelSelector").map(String::as_str);
    let fields = query.get("fieldSelector").map(String::as_str);
    let selector = match Selector::parse(labels, fields) {
        Ok(s) => s,
        Err(why) => return failure(StatusCode::BAD_REQUEST, "BadRequest", &why),
    };
    let selector = match &target.namespace {
        Some(ns) => selector.in_namespace(ns),
        None => selector,
    };
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") => From::Now,
        Some("0") => From::Everything,
        Some(v) => match v.parse() {
            Ok(n) => From::Version(n),
            Err(_) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("resourceVersion {v:?} is not a number"),
                );
            }
        },
    };
    let mut option = serde_json::Map::new();
    for (name, v) in [("labelSelector", labels), ("fieldSelector", fields)] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            option.insert(name.to_owned(), json!(v));
        }
    }
    let app = Application::new(
        &cloud.node,
        target_key(target),
        Verb::Watch,
        "",
        &Value::Object(option),
        None,
    );
    let guard = match cloud.watches.join(&app.id) {
        Some(g) => g,
        None => {
            // A new listener: the cloud sends every current object, then the changes.
            match ask_raw(cloud, target, Verb::Watch, app.clone()).await {
                Ok(Ok(())) => cloud.watches.add(app),
                Ok(Err(resp)) => return resp,
                Err(e) => return super::cloud::unreachable_cloud(&e, Verb::Watch, &target.plural),
            }
        }
    };
    tracing::debug!(resource = resource.plural, id = %guard.id, "watch through the cloud");
    watch::start(
        api,
        WatchRequest {
            resource,
            selector,
            from,
            bookmarks: query
                .get("allowWatchBookmarks")
                .is_some_and(|b| super::api::truthy(b)),
            timeout: query
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .map(std::time::Duration::from_secs),
            table,
            guard: Some(guard),
        },
    )
    .await
}

fn target_key(target: &Target) -> String {
    super::application::key(
        &target.group,
        &target.version,
        &target.plural,
        target.namespace.as_deref(),
        None,
    )
}

/// The descriptor of a resource watched through the cloud; its kind is learnt from a one-item
/// list, which also tells a resource the cluster does not have (its 404 is the answer).
async fn resource_of(
    cloud: &Cloud,
    target: &Target,
) -> Result<&'static Resource, Response<ApiBody>> {
    if let Some(r) = cloud.watches.known_type(target) {
        return Ok(r);
    }
    let mut list = target.clone();
    list.name = None;
    let app = Application::new(
        &cloud.node,
        target_key(&list),
        Verb::List,
        "",
        &json!({"limit": 1}),
        None,
    );
    let body = match super::cloud::ask_body(cloud, &list, Verb::List, app).await {
        Ok(Ok(body)) => body,
        Ok(Err(resp)) => return Err(resp),
        Err(e) => {
            return Err(super::cloud::unreachable_cloud(
                &e,
                Verb::List,
                &target.plural,
            ));
        }
    };
    let kind = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_owned))
        .and_then(|k| k.strip_suffix("List").map(str::to_owned))
        .filter(|k| !k.is_empty());
    let Some(kind) = kind else {
        return Err(failure(
            StatusCode::BAD_GATEWAY,
            "InternalError",
            &format!("the cloud's list of {} did not say its kind", target.plural),
        ));
    };
    cloud.watches.learn_type(target, &kind).ok_or_else(|| {
        failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("more than {MAX_TYPES} resource types are watched through the cloud"),
        )
    })
}

/// Tells the cloud the live watch applications after every new session and whenever the set
/// shrank, until `cancel`.
pub(crate) async fn sync_loop(
    cloud: Cloud,
    mut link: tokio::sync::watch::Receiver<LinkState>,
    cancel: CancellationToken,
) {
    let mut last_session = None;
    loop {
        let send = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = cloud.watches.changed.notified() => true,
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                let session = match &*link.borrow_and_update() {
                    LinkState::Connected { session, .. } => Some(*session),
                    _ => None,
                };
                let new = session.is_some() && session != last_session;
                if session.is_some() {
                    last_session = session;
                }
                new && !cloud.watches.snapshot().is_empty()
            }
        };
        if send {
            sync(&cloud).await;
        }
    }
}

async fn sync(cloud: &Cloud) {
    let apps = cloud.watches.snapshot();
    let count = apps.len();
    let content = match serde_json::to_value(&apps) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "watch applications could not be encoded");
            return;
        }
    };
    let msg = Message::new(
        Route::new("metaserver", "dynamiccontroller", "null", "watchapp/sync"),
        content,
    );
    match cloud.meta.request_within(msg, APPLICATION_TIMEOUT).await {
        Ok(answer) => {
            let failed: Vec<String> = answer
                .first()
                .and_then(Value::as_object)
                .map(|m| {
                    m.values()
                        .filter_map(|a| a.get("Key").and_then(Value::as_str).map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if failed.is_empty() {
                tracing::info!(watches = count, "watch applications synced with the cloud");
            } else {
                tracing::warn!(
                    watches = count,
                    ?failed,
                    "the cloud could not register some watches"
                );
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, watches = count, "watch applications could not be synced; retried on the next session");
        }
    }
}
