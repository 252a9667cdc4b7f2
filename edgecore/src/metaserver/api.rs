//! Answering one request: discovery, get, list, and handing watches to [`super::watch`].

use std::collections::HashMap;
use std::time::Duration;

use hyper::header::ACCEPT;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::body::{ApiBody, ApiError, failure, json_response, text_json_response};
use super::changes::Changes;
use super::head::{Head, Stored};
use super::resources::{self, Resource};
use super::route::{self, Route, Unknown};
use super::selector::Selector;
use super::watch::{self, WatchRequest};
use crate::store::Store;

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub(crate) store: Store,
    pub(crate) changes: Changes,
    /// How often a watch that asked for bookmarks gets one.
    pub(crate) bookmark_every: Duration,
    pub(crate) cancel: CancellationToken,
    /// Where watch tasks run, so shutdown waits for them.
    pub(crate) tracker: TaskTracker,
    /// The way to the cloud for writes and what the store lacks; `None`: reads only.
    pub(crate) cloud: Option<super::cloud::Cloud>,
    /// `requireAuthorization`: who may ask what.
    pub(crate) guard: Option<std::sync::Arc<super::guard::Guard>>,
}

/// The server's version, as `/version` tells kubectl.
fn version() -> Value {
    json!({
        "major": "1",
        "minor": "30",
        "gitVersion": concat!("v1.30.7-edgecore-", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

/// A query flag as the API server reads it (Go's `strconv.ParseBool`): the Python client
/// sends `watch=True`.
pub(crate) fn truthy(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// The answer to `req`.
pub(crate) async fn answer<B>(api: &Api, req: &Request<B>) -> Response<ApiBody> {
    if req.method() != Method::GET {
        return failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!(
                "{} is not served: this MetaServer has no way to the cloud and answers get, list \
                 and watch only",
                req.method()
            ),
        );
    }
    let route = match route::route(req.uri().path()) {
        Ok(r) => r,
        Err(Unknown::Path) => return super::body::path_not_found(req.uri().path()),
        Err(Unknown::Resource { group, plural }) => {
            let query = route::query(req.uri().query());
            let watching = query.get("watch").is_some_and(|w| truthy(w));
            if let (Some(cloud), Some(target)) =
                (&api.cloud, super::cloud::Target::parse(req.uri().path()))
            {
                if watching {
                    let table = req
                        .headers()
                        .get(ACCEPT)
                        .and_then(|a| a.to_str().ok())
                        .is_some_and(|a| a.contains("as=Table"));
                    return super::remote_watch::start(api, cloud, &target, &query, table).await;
                }
                return super::cloud::read(cloud, &api.store, &target, &query).await;
            }
            let gr = if group.is_empty() {
                plural
            } else {
                format!("{plural}.{group}")
            };
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!(
                    "the server could not find the requested resource: {gr} is not held at the \
                     edge (served: {})",
                    resources::RESOURCES
                        .iter()
                        .map(|r| r.plural)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    };
    let ok = |v: Value| json_response(StatusCode::OK, &v);
    let not_found = || {
        failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    match route {
        Route::Healthz => super::body::text_response("ok"),
        Route::Version => ok(version()),
        Route::ApiVersions => ok(resources::api_versions()),
        Route::ApiGroups => ok(resources::api_groups()),
        Route::ApiGroup(g) => resources::api_group(&g).map_or_else(not_found, ok),
        Route::Resources { group, version } => {
            resources::resource_list(&group, &version, api.cloud.is_some())
                .map_or_else(not_found, ok)
        }
        Route::Objects {
            resource,
            namespace,
            name,
        } => {
            let query = route::query(req.uri().query());
            let table = req
                .headers()
                .get(ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("as=Table"));
            objects(api, resource, namespace, name, &query, table).await
        }
    }
}

/// The stored text of the objects of `resource` that `selector` picks, and the list's
/// resourceVersion (the newest stored or published). Only each object's head is parsed.
pub(crate) async fn select(
    api: &Api,
    resource: &Resource,
    selector: &Selector,
) -> Result<(Vec<Stored>, u64), ApiError> {
    let values = api.store.list_type(resource.stored).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("the edge store cannot be read: {e}"),
        )
    })?;
    let mut revision = api.changes.revision();
    let mut items = Vec::new();
    for text in values {
        let typing = match Head::parse(&text) {
            Some(head) => {
                revision = revision.max(head.resource_version().unwrap_or(0));
                selector.matches(&head).then(|| head.typing())
            }
            None => {
                tracing::debug!(
                    kind = resource.stored,
                    "stored value is not a JSON object; not served"
                );
                None
            }
        };
        if let Some(typing) = typing {
            items.push(Stored { text, typing });
        }
    }
    Ok((items, revision))
}

/// Selected stored objects as typed objects (a get, a table, a watch's first events).
pub(crate) fn parsed(resource: &Resource, picked: Vec<Stored>) -> Vec<Value> {
    picked
        .into_iter()
        .filter_map(|s| serde_json::from_str::<Value>(&s.text).ok())
        .map(|v| resource.typed(v))
        .collect()
}

/// The list document, spliced from the stored texts.
fn list_json(resource: &Resource, picked: &[Stored], revision: u64) -> String {
    let api_version = resource.api_version();
    let mut out =
        String::with_capacity(picked.iter().map(|s| s.text.len() + 48).sum::<usize>() + 160);
    out.push_str("{\"apiVersion\":");
    out.push_str(&Value::from(api_version.as_str()).to_string());
    out.push_str(",\"items\":[");
    for (i, stored) in picked.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        stored.write_typed(resource.kind, &api_version, &mut out);
    }
    out.push_str(&format!(
        "],\"kind\":\"{}List\",\"metadata\":{{\"resourceVersion\":\"{revision}\"}}}}\n",
        resource.kind
    ));
    out
}

async fn objects(
    api: &Api,
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    query: &HashMap<String, String>,
    table: bool,
) -> Response<ApiBody> {
    let selector = match Selector::parse(
        query.get("labelSelector").map(String::as_str),
        query.get("fieldSelector").map(String::as_str),
    ) {
        Ok(s) => s,
        Err(why) => return failure(StatusCode::BAD_REQUEST, "BadRequest", &why),
    };
    let selector = match &namespace {
        Some(ns) => selector.in_namespace(ns),
        None => selector,
    };
    let watching = query.get("watch").is_some_and(|w| truthy(w));
    if watching {
        let rv = query
            .get("resourceVersion")
            .map(String::as_str)
            .unwrap_or("");
        let from = match rv {
            "" => watch::From::Now,
            "0" => watch::From::Everything,
            v => match v.parse() {
                Ok(n) => watch::From::Version(n),
                Err(_) => {
                    return failure(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("resourceVersion {v:?} is not a number"),
                    );
                }
            },
        };
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs);
        return watch::start(
            api,
            WatchRequest {
                resource,
                selector,
                from,
                bookmarks: query.get("allowWatchBookmarks").is_some_and(|b| truthy(b)),
                timeout,
                table,
                guard: None,
            },
        )
        .await;
    }
    let selector = match &name {
        Some(name) => selector.named(name),
        None => selector,
    };
    let (texts, revision) = match select(api, resource, &selector).await {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    if let Err(e) = version_served(query, revision) {
        return e.response();
    }
    if let Some(name) = name {
        return match parsed(resource, texts).into_iter().next() {
            Some(o) if table => json_response(StatusCode::OK, &as_table(&[o], revision)),
            Some(o) => json_response(StatusCode::OK, &o),
            None => {
                if let Some(cloud) = &api.cloud {
                    let target = super::cloud::Target {
                        group: resource.group.to_owned(),
                        version: resource.version.to_owned(),
                        plural: resource.plural.to_owned(),
                        namespace: namespace.clone(),
                        name: Some(name.clone()),
                        subresource: String::new(),
                    };
                    if let Some(answer) = super::cloud::get_missing(cloud, &target, query).await {
                        return answer;
                    }
                }
                let mut status = super::body::status_object(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} {name:?} not found", resource.plural),
                );
                status["details"] = json!({"name": name, "kind": resource.plural});
                json_response(StatusCode::NOT_FOUND, &status)
            }
        };
    }
    if table {
        let items = parsed(resource, texts);
        return json_response(StatusCode::OK, &as_table(&items, revision));
    }
    text_json_response(StatusCode::OK, list_json(resource, &texts, revision))
}

/// Whether the store's state (at `revision`) is what `resourceVersion` and
/// `resourceVersionMatch` ask for; the store keeps no history, so only its current state can
/// be served.
fn version_served(query: &HashMap<String, String>, revision: u64) -> Result<(), ApiError> {
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let rvm = query
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or("");
    let bad = |why: String| Err(ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", why));
    if rv.is_empty() || rv == "0" {
        return match rvm {
            "" | "NotOlderThan" if rv == "0" || rvm.is_empty() => Ok(()),
            "" | "NotOlderThan" | "Exact" => bad(format!(
                "resourceVersionMatch={rvm} is forbidden with resourceVersion {rv:?}"
            )),
            other => bad(format!(
                "resourceVersionMatch {other:?} is not supported (Exact or NotOlderThan)"
            )),
        };
    }
    let Ok(asked) = rv.parse::<u64>() else {
        return bad(format!("resourceVersion {rv:?} is not a number"));
    };
    let too_large = || {
        Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {asked}, current: {revision}"),
        ))
    };
    match rvm {
        "Exact" if asked == revision => Ok(()),
        "Exact" if asked < revision => Err(ApiError::new(
            StatusCode::GONE,
            "Expired",
            format!(
                "too old resource version: {asked} ({revision}); the edge keeps only the current state"
            ),
        )),
        "Exact" => too_large(),
        "" | "NotOlderThan" if asked <= revision => Ok(()),
        "" | "NotOlderThan" => too_large(),
        other => bad(format!(
            "resourceVersionMatch {other:?} is not supported (Exact or NotOlderThan)"
        )),
    }
}

/// The API server's default table (name and age) for resources without their own printer;
/// each row carries the object's metadata, which kubectl reads for the namespace column.
pub(crate) fn as_table(items: &[Value], revision: u64) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let meta = o.get("metadata").cloned().unwrap_or_else(|| json!({}));
            json!({
                "cells": [
                    meta.get("name").cloned().unwrap_or(Value::Null),
                    meta.get("creationTimestamp").cloned().unwrap_or(Value::Null),
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": revision.to_string()},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "priority": 0,
             "description": "Name must be unique within a namespace."},
            {"name": "Created At", "type": "date", "format": "", "priority": 0,
             "description": "When the object was created."},
        ],
        "rows": rows,
    })
}
