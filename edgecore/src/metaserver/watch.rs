//! Watches: one task per watch turns committed changes into watch events (one JSON object per
//! line, as kube-apiserver streams them) and hands them to the response body over a small
//! bounded channel. A client that does not read holds up only its own task; once that task
//! falls behind the feed it ends the watch with an `ERROR` event (410, list again).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::header::CONTENT_TYPE;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::api::{Api, as_table, parsed, select};
use super::body::{ApiBody, ChannelBody, status_object};
use super::changes::{Change, ChangeKind, TooOld};
use super::resources::Resource;
use super::selector::Selector;

/// Events buffered for a client before its watch task waits.
const CLIENT_BUFFER: usize = 64;

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum From {
    /// No `resourceVersion`: changes from now on.
    Now,
    /// `resourceVersion=0`: every current object as `ADDED`, then the changes.
    Everything,
    /// The changes after this version.
    Version(u64),
}

pub(crate) struct WatchRequest {
    pub(crate) resource: &'static Resource,
    pub(crate) selector: Selector,
    pub(crate) from: From,
    pub(crate) bookmarks: bool,
    pub(crate) timeout: Option<Duration>,
    /// Objects as one-row tables (`kubectl get -w`).
    pub(crate) table: bool,
    /// For a watch through the cloud: held while the watch runs, never read (its drop
    /// tells the cloud when the last watcher of an application is gone).
    #[allow(dead_code)]
    pub(crate) guard: Option<super::remote_watch::WatchGuard>,
}

struct Watcher {
    req: WatchRequest,
    tx: mpsc::Sender<Bytes>,
}

impl Watcher {
    fn object(&self, object: &Value) -> Value {
        let typed = self.req.resource.typed(object.clone());
        if self.req.table {
            as_table(std::slice::from_ref(&typed), 0)
        } else {
            typed
        }
    }

    /// Sends one event line; false once the client is gone.
    async fn send(&self, kind: &str, object: Value) -> bool {
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        self.tx.send(Bytes::from(line)).await.is_ok()
    }

    async fn change(&self, change: &Change) -> bool {
        if change.stored_type != self.req.resource.stored {
            return true;
        }
        let now = self.req.selector.matches(&change.object);
        let before = change
            .previous
            .as_ref()
            .map(|p| self.req.selector.matches(p));
        // As kube-apiserver's watch cache: an object that starts matching the selector is
        // ADDED to this watch, one that stops matching is DELETED from it.
        let kind = match (change.kind, before, now) {
            (ChangeKind::Deleted, before, now) if now || before == Some(true) => {
                ChangeKind::Deleted
            }
            (ChangeKind::Deleted, ..) => return true,
            (_, Some(true), true) => ChangeKind::Modified,
            (_, Some(true), false) => ChangeKind::Deleted,
            (_, Some(false), true) => ChangeKind::Added,
            (kind, None, true) => kind,
            _ => return true,
        };
        // A watch from a version gets only what is newer (the cloud's listener first sends
        // every current object, which the client has listed already).
        if let From::Version(v) = self.req.from
            && change.rv <= v
            && change.kind != ChangeKind::Deleted
        {
            return true;
        }
        self.send(kind.as_str(), self.object(&change.object)).await
    }

    async fn error(&self, code: StatusCode, reason: &str, message: &str) {
        let _ = self
            .send("ERROR", status_object(code, reason, message))
            .await;
    }

    async fn bookmark(&self, revision: u64) -> bool {
        let object = json!({
            "kind": self.req.resource.kind,
            "apiVersion": self.req.resource.api_version(),
            "metadata": {"resourceVersion": revision.to_string()},
        });
        self.send("BOOKMARK", object).await
    }
}

/// Starts the watch of `req`; its events stream in the response.
pub(crate) async fn start(api: &Api, req: WatchRequest) -> Response<ApiBody> {
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    let mut resp = Response::new(BoxBody::new(ChannelBody(rx)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    *resp.status_mut() = StatusCode::OK;
    let task = api.clone();
    api.tracker.spawn(run(task, Watcher { req, tx }));
    resp
}

async fn run(api: Api, w: Watcher) {
    let version = match w.req.from {
        From::Version(v) => Some(v),
        From::Now | From::Everything => None,
    };
    let sub = match api.changes.subscribe(version) {
        Ok(s) => s,
        Err(TooOld { oldest }) => {
            let asked = version.unwrap_or(0);
            w.error(
                StatusCode::GONE,
                "Expired",
                &format!("too old resource version: {asked} ({oldest})"),
            )
            .await;
            return;
        }
    };
    let mut live = sub.live;
    // Changes up to this one are in the replay or in the listing; the feed repeats them.
    let mut seen = sub.seq;
    let mut revision = sub.revision;
    match w.req.from {
        From::Everything => match select(&api, w.req.resource, &w.req.selector).await {
            Ok((texts, listed)) => {
                revision = revision.max(listed);
                for item in parsed(w.req.resource, texts) {
                    let object = if w.req.table {
                        as_table(std::slice::from_ref(&item), 0)
                    } else {
                        item
                    };
                    if !w.send(ChangeKind::Added.as_str(), object).await {
                        return;
                    }
                }
            }
            Err(e) => {
                w.error(e.code, e.reason, &e.message).await;
                return;
            }
        },
        From::Version(_) => {
            for change in &sub.replay {
                if !w.change(change).await {
                    return;
                }
            }
        }
        From::Now => {}
    }
    let deadline = w.req.timeout.map(|t| Instant::now() + t);
    let mut bookmarks = tokio::time::interval(api.bookmark_every);
    bookmarks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    bookmarks.tick().await;
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = api.cancel.cancelled() => return,
            () = until_deadline => return,
            () = w.tx.closed() => return,
            got = live.recv() => match got {
                Ok(change) => {
                    revision = revision.max(change.rv);
                    if change.seq <= seen {
                        continue;
                    }
                    seen = change.seq;
                    if !w.change(&change).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(resource = w.req.resource.plural, missed, "metaserver watch fell behind; closed");
                    w.error(
                        StatusCode::GONE,
                        "Expired",
                        &format!("the watch fell {missed} changes behind; list again"),
                    )
                    .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = bookmarks.tick(), if w.req.bookmarks => {
                if !w.bookmark(revision).await {
                    return;
                }
            }
        }
    }
}
