//! Requests the store cannot answer, carried to the cloud as applications: every write
//! (create, update, patch, delete), and get or list of a resource the edge does not hold.
//!
//! Nothing is written locally: the answer is the API server's, and the edge's copy changes only
//! when the cloud sends the change down like any other (so it never runs ahead of the cloud, and
//! a write that fails in the cloud leaves nothing behind). Offline, a request fails at once with
//! 503; a cloud that does not answer within [`APPLICATION_TIMEOUT`] gets 504.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use edgehub::{Message, Route};
use http_body_util::{BodyExt, Limited};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::application::{Application, Outcome, Verb, key};
use super::body::{ApiBody, ApiError, failure, json_response, path_not_found, text_json_response};
use super::head::Head;
use super::selector::Selector;
use crate::MetaError;
use crate::metamanager::MetaHandle;
use crate::store::Store;

/// How long an application waits for dynamicController (KubeEdge's edge waits 10 s).
pub(crate) const APPLICATION_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body taken (kube-apiserver's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The way to the cloud: metamanager's handle and this node's name.
#[derive(Debug, Clone)]
pub(crate) struct Cloud {
    pub(crate) meta: MetaHandle,
    pub(crate) node: String,
    /// Watches of what the edge does not hold, registered with the cloud.
    pub(crate) watches: std::sync::Arc<super::remote_watch::WatchApps>,
}

/// Where a request points, for any resource (held or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) plural: String,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: String,
}

impl Target {
    /// The target of a resource path, split as kube-apiserver splits it (`namespaces/<ns>/status`
    /// and `/finalize` are the namespace's subresources, not resources in it).
    pub(crate) fn parse(path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let (group, version, mut rest) = match parts.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let mut namespace = None;
        if let ["namespaces", ns, more @ ..] = rest
            && let Some(first) = more.first()
            && !matches!(*first, "status" | "finalize")
        {
            namespace = Some((*ns).to_owned());
            rest = more;
        }
        let (plural, name, sub) = match rest {
            [plural] => (*plural, None, ""),
            [plural, name] => (*plural, Some(*name), ""),
            [plural, name, sub] => (*plural, Some(*name), *sub),
            _ => return None,
        };
        Some(Self {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
            namespace,
            name: name.map(str::to_owned),
            subresource: sub.to_owned(),
        })
    }

    fn key(&self) -> String {
        key(
            &self.group,
            &self.version,
            &self.plural,
            self.namespace.as_deref(),
            self.name.as_deref(),
        )
    }

    fn describe(&self) -> String {
        let gr = if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        };
        match &self.name {
            Some(n) => format!("{gr} {n:?}"),
            None => gr,
        }
    }
}

/// A get or list of a resource the edge does not hold, asked of the cloud. When the cloud
/// cannot answer (offline, or no dynamicController), KubeEdge's `meta_v2` rows answer, as
/// KubeEdge's MetaServer does.
pub(crate) async fn read(
    cloud: &Cloud,
    store: &Store,
    target: &Target,
    query: &HashMap<String, String>,
) -> Response<ApiBody> {
    let (verb, option) = match &target.name {
        Some(_) => (Verb::Get, pick(query, &["resourceVersion"])),
        None => (Verb::List, list_options(query)),
    };
    let app = Application::new(
        &cloud.node,
        target.key(),
        verb,
        &target.subresource,
        &option,
        None,
    );
    match ask(cloud, target, verb, app).await {
        Ok(resp) => resp,
        Err(e) if target.subresource.is_empty() => match from_meta_v2(store, target, query).await {
            Ok(Some(resp)) => {
                tracing::debug!(error = %e, key = %target.key(), "the cloud could not answer; answered from meta_v2");
                resp
            }
            Ok(None) => unreachable_cloud(&e, verb, &target.describe()),
            Err(resp) => resp,
        },
        Err(e) => unreachable_cloud(&e, verb, &target.describe()),
    }
}

/// The answer from `meta_v2`: the object, or the list of what is there; `None` when there is
/// nothing of that resource at all (then the cloud's absence is the answer).
async fn from_meta_v2(
    store: &Store,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Option<Response<ApiBody>>, Response<ApiBody>> {
    let unreadable = |e: crate::StoreError| {
        failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("the edge store cannot be read: {e}"),
        )
    };
    if target.name.is_some() {
        let value = store.get_v2(&target.key()).await.map_err(unreadable)?;
        return Ok(value.map(|v| text_json_response(StatusCode::OK, v)));
    }
    let selector = Selector::parse(
        query.get("labelSelector").map(String::as_str),
        query.get("fieldSelector").map(String::as_str),
    )
    .map_err(|why| failure(StatusCode::BAD_REQUEST, "BadRequest", &why))?;
    let values = store
        .list_v2(
            &target.group,
            &target.version,
            &target.plural,
            target.namespace.as_deref(),
        )
        .await
        .map_err(unreadable)?;
    if values.is_empty() {
        return Ok(None);
    }
    let mut revision = 0;
    let mut kind = String::new();
    let mut items = Vec::new();
    for text in &values {
        let Some(head) = Head::parse(text) else {
            continue;
        };
        revision = revision.max(head.resource_version().unwrap_or(0));
        if !selector.matches(&head) {
            continue;
        }
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            if kind.is_empty() {
                kind = v["kind"].as_str().unwrap_or_default().to_owned();
            }
            items.push(v);
        }
    }
    let api_version = if target.group.is_empty() {
        target.version.clone()
    } else {
        format!("{}/{}", target.group, target.version)
    };
    Ok(Some(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{kind}List"),
            "apiVersion": api_version,
            "metadata": {"resourceVersion": revision.to_string()},
            "items": items,
        }),
    )))
}

/// A write, carried to the cloud.
pub(crate) async fn write<B>(cloud: &Cloud, req: Request<B>) -> Response<ApiBody>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Some(target) = Target::parse(req.uri().path()) else {
        return path_not_found(req.uri().path());
    };
    let query = super::route::query(req.uri().query());
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let method = req.method().clone();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("the request body could not be read (at most {MAX_BODY} bytes): {e}"),
            );
        }
    };
    match plan(&method, &target, &query, &content_type, &body) {
        Ok((verb, option, req_body)) => {
            let app = Application::new(
                &cloud.node,
                target.key(),
                verb,
                &target.subresource,
                &option,
                req_body,
            );
            answer(cloud, &target, verb, app).await
        }
        Err(e) => e.response(),
    }
}

/// The verb, option and body of a write.
fn plan(
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Result<(Verb, Value, Option<Vec<u8>>), ApiError> {
    let json_body = || -> Result<Vec<u8>, ApiError> {
        if !content_type.is_empty() && !content_type.contains("json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the body's content type {content_type:?} is not served: send JSON"),
            ));
        }
        serde_json::from_slice::<Value>(body)
            .ok()
            .filter(Value::is_object)
            .map(|_| body.to_vec())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the request body is not a JSON object",
                )
            })
    };
    let needs_name = |verb: &str| -> Result<(), ApiError> {
        if target.name.is_none() {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!(
                    "{verb} needs an object name in the path (collection-wide {verb} is not served)"
                ),
            ));
        }
        Ok(())
    };
    let write_options = pick(query, &["dryRun", "fieldManager", "fieldValidation"]);
    match *method {
        Method::POST => Ok((Verb::Create, write_options, Some(json_body()?))),
        Method::PUT => {
            needs_name("update")?;
            let verb = if target.subresource == "status" {
                Verb::UpdateStatus
            } else {
                Verb::Update
            };
            Ok((verb, write_options, Some(json_body()?)))
        }
        Method::PATCH => {
            needs_name("patch")?;
            if !content_type.contains("patch") && !content_type.contains("json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!(
                        "the patch's content type {content_type:?} is not one of \
                         application/json-patch+json, application/merge-patch+json, \
                         application/strategic-merge-patch+json, application/apply-patch+yaml"
                    ),
                ));
            }
            let subresources: Vec<&str> = Some(target.subresource.as_str())
                .filter(|s| !s.is_empty())
                .into_iter()
                .collect();
            let info = json!({
                "Name": target.name,
                "PatchType": content_type,
                "Data": STANDARD.encode(body),
                "Options": pick(query, &["dryRun", "fieldManager", "force"]),
                "Subresources": subresources,
            });
            Ok((Verb::Patch, info, None))
        }
        Method::DELETE => {
            needs_name("delete")?;
            let option = if body.iter().all(u8::is_ascii_whitespace) {
                pick(
                    query,
                    &["gracePeriodSeconds", "propagationPolicy", "dryRun"],
                )
            } else {
                serde_json::from_slice::<Value>(body)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "BadRequest",
                            "the delete's body is not DeleteOptions as JSON",
                        )
                    })?
            };
            Ok((Verb::Delete, option, None))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not served"),
        )),
    }
}

/// The query parameters `names` as an options object (numbers and lists as Go reads them).
fn pick(query: &HashMap<String, String>, names: &[&str]) -> Value {
    let mut out = Map::new();
    for name in names {
        let Some(v) = query.get(*name) else { continue };
        let value = match *name {
            "dryRun" => json!([v]),
            "limit" | "gracePeriodSeconds" | "timeoutSeconds" => match v.parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => continue,
            },
            "force" => json!(v == "true"),
            _ => json!(v),
        };
        out.insert((*name).to_owned(), value);
    }
    Value::Object(out)
}

fn list_options(query: &HashMap<String, String>) -> Value {
    pick(
        query,
        &[
            "labelSelector",
            "fieldSelector",
            "resourceVersion",
            "resourceVersionMatch",
            "limit",
            "continue",
        ],
    )
}

/// A get of an object of a held kind that the store does not have (the cloud pushes only what
/// the node uses), asked of the cloud. `None` when the cloud cannot answer (offline, or no
/// dynamicController): the store's 404 stands. The answer is not stored: nothing would keep
/// that copy up to date.
pub(crate) async fn get_missing(
    cloud: &Cloud,
    target: &Target,
    query: &HashMap<String, String>,
) -> Option<Response<ApiBody>> {
    let option = pick(query, &["resourceVersion"]);
    let app = Application::new(&cloud.node, target.key(), Verb::Get, "", &option, None);
    match ask(cloud, target, Verb::Get, app).await {
        Ok(resp) => Some(resp),
        Err(e) => {
            tracing::debug!(error = %e, key = %target.key(), "the cloud could not answer a get; answering from the store");
            None
        }
    }
}

/// Sends `app` and turns the cloud's answer into the HTTP answer.
async fn answer(cloud: &Cloud, target: &Target, verb: Verb, app: Application) -> Response<ApiBody> {
    match ask(cloud, target, verb, app).await {
        Ok(resp) => resp,
        Err(e) => unreachable_cloud(&e, verb, &target.describe()),
    }
}

/// Sends `app`; the HTTP answer when the cloud answered, else why it did not.
async fn ask(
    cloud: &Cloud,
    target: &Target,
    verb: Verb,
    app: Application,
) -> Result<Response<ApiBody>, MetaError> {
    Ok(match ask_body(cloud, target, verb, app).await? {
        Ok(body) if body.is_empty() => json_response(
            StatusCode::OK,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": target.name, "kind": target.plural},
            }),
        ),
        Ok(body) => {
            let code = if verb == Verb::Create {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            text_json_response(code, String::from_utf8_lossy(&body).into_owned())
        }
        Err(refused) => refused,
    })
}

/// Sends `app` and waits for the cloud: `Ok(Ok(body))` when approved (the API server's answer,
/// empty for a delete or a watch), `Ok(Err(answer))` when refused (the HTTP answer saying
/// why), `Err` when the cloud could not be asked or did not answer.
pub(crate) async fn ask_body(
    cloud: &Cloud,
    target: &Target,
    verb: Verb,
    app: Application,
) -> Result<Result<Vec<u8>, Response<ApiBody>>, MetaError> {
    let content = match serde_json::to_value(&app) {
        Ok(v) => v,
        Err(e) => {
            return Ok(Err(failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("the application could not be encoded: {e}"),
            )));
        }
    };
    let msg = Message::new(
        Route::new("metaserver", "dynamiccontroller", "null", "null"),
        content,
    );
    tracing::debug!(verb = verb.as_str(), key = %app.key, id = %app.id, "application to the cloud");
    let what = target.describe();
    // Reads are re-sent after a reconnect; a write is sent once, so it is never carried out
    // twice.
    let answered = match verb {
        Verb::Get | Verb::List | Verb::Watch => {
            cloud.meta.request_within(msg, APPLICATION_TIMEOUT).await?
        }
        _ => cloud.meta.request_once(msg, APPLICATION_TIMEOUT).await?,
    };
    let Some(reply) = answered
        .into_iter()
        .next()
        .and_then(|v| serde_json::from_value::<Application>(v).ok())
    else {
        return Ok(Err(failure(
            StatusCode::BAD_GATEWAY,
            "InternalError",
            &format!(
                "CloudCore's answer to {} {what} is not an application",
                verb.as_str()
            ),
        )));
    };
    Ok(match reply.outcome() {
        Outcome::Approved(body) => Ok(body),
        Outcome::Status(status) => {
            let code = status
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Err(json_response(code, &status))
        }
        Outcome::Failed { status, reason } => Err(failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &format!(
                "CloudCore answered {} {what} with {status}: {reason}",
                verb.as_str()
            ),
        )),
    })
}

/// [`ask_body`] for an answer without a body (a watch's registration).
pub(crate) async fn ask_raw(
    cloud: &Cloud,
    target: &Target,
    verb: Verb,
    app: Application,
) -> Result<Result<(), Response<ApiBody>>, MetaError> {
    Ok(ask_body(cloud, target, verb, app).await?.map(|_| ()))
}

pub(crate) fn unreachable_cloud(e: &MetaError, verb: Verb, what: &str) -> Response<ApiBody> {
    let verb = verb.as_str();
    match e {
        MetaError::NotConnected { .. } => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!(
                "{verb} {what} needs the cloud, and edgecore is not connected to CloudCore: \
                 retry once the link is up (reads of what the edge holds keep working)"
            ),
        ),
        MetaError::RemoteTimeout { after, .. } => failure(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            &format!(
                "CloudCore did not answer {verb} {what} within {after:?}; it answers through its \
                 dynamicController (modules.dynamicController.enable in cloudcore.yaml)"
            ),
        ),
        MetaError::SessionLost { .. } => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!(
                "the connection to CloudCore dropped before it answered {verb} {what}; it may \
                 have been carried out: read the object before retrying"
            ),
        ),
        MetaError::Busy { .. } => failure(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            &format!("{verb} {what}: {e}"),
        ),
        _ => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("{verb} {what} could not be sent to the cloud: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_as_the_api_server_splits_them() {
        let t = Target::parse("/apis/apps/v1/namespaces/default/deployments/web/scale")
            .expect("a target");
        assert_eq!(
            (
                t.group.as_str(),
                t.plural.as_str(),
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_str()
            ),
            ("apps", "deployments", Some("default"), Some("web"), "scale")
        );
        assert_eq!(t.key(), "/apps/v1/deployments/default/web");
        let ns = Target::parse("/api/v1/namespaces/kube-system/status").expect("a target");
        assert_eq!(
            (
                ns.plural.as_str(),
                ns.name.as_deref(),
                ns.subresource.as_str()
            ),
            ("namespaces", Some("kube-system"), "status")
        );
        let get_ns = Target::parse("/api/v1/namespaces/default").expect("a target");
        assert_eq!(get_ns.key(), "/core/v1/namespaces/null/default");
        assert_eq!(Target::parse("/metrics"), None);
        assert_eq!(Target::parse("/api/v1/a/b/c/d"), None);
    }

    #[test]
    fn writes_become_the_verbs_and_options_dynamic_controller_reads() {
        let t = Target::parse("/api/v1/namespaces/default/configmaps/a").expect("target");
        let q: HashMap<String, String> = [("fieldManager".to_owned(), "kubectl".to_owned())]
            .into_iter()
            .collect();
        let (verb, option, body) = plan(
            &Method::PATCH,
            &t,
            &q,
            "application/merge-patch+json",
            br#"{"data":{"k":"v"}}"#,
        )
        .expect("a patch");
        assert_eq!(verb, Verb::Patch);
        assert_eq!(option["Name"], "a");
        assert_eq!(option["PatchType"], "application/merge-patch+json");
        assert_eq!(option["Data"], STANDARD.encode(br#"{"data":{"k":"v"}}"#));
        assert_eq!(option["Options"]["fieldManager"], "kubectl");
        assert_eq!(body, None);

        let (verb, option, _) = plan(
            &Method::DELETE,
            &t,
            &HashMap::new(),
            "application/json",
            br#"{"propagationPolicy":"Background"}"#,
        )
        .expect("a delete");
        assert_eq!(
            (verb, option["propagationPolicy"].as_str()),
            (Verb::Delete, Some("Background"))
        );

        let status = Target::parse("/api/v1/namespaces/default/pods/p/status").expect("target");
        let (verb, _, body) = plan(
            &Method::PUT,
            &status,
            &HashMap::new(),
            "application/json",
            b"{}",
        )
        .expect("an update");
        assert_eq!((verb, body), (Verb::UpdateStatus, Some(b"{}".to_vec())));

        let list = Target::parse("/api/v1/namespaces/default/configmaps").expect("target");
        let e = plan(&Method::DELETE, &list, &HashMap::new(), "", b"").expect_err("no name");
        assert_eq!(e.code, StatusCode::METHOD_NOT_ALLOWED);
        let e = plan(
            &Method::POST,
            &list,
            &HashMap::new(),
            "application/json",
            b"[1]",
        )
        .expect_err("not an object");
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        let e = plan(
            &Method::POST,
            &list,
            &HashMap::new(),
            "application/vnd.kubernetes.protobuf",
            b"\x6b\x38",
        )
        .expect_err("protobuf");
        assert_eq!(e.code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
