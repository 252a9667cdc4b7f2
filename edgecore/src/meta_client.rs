//! edged-shim's [`MetaClient`] on top of metamanager: each call becomes one edged message
//! (source `edged`, group `meta`) or a read of the local store.

mod token;

use std::sync::Arc;
use std::time::SystemTime;

use edged_shim::{MetaClient, MetaFuture};
use edgehub::{Message, Route, op};
use serde_json::{Value, json};

use crate::error::{MetaError, RemoteStatus};
use crate::metamanager::MetaHandle;
use crate::store::Store;

/// Namespace segment of the Node's resources: KubeEdge's edged writes `null/node/<node>` and
/// `null/nodepatch/<node>` whatever `registerNodeNamespace` says, and CloudCore pushes Node
/// changes as `null/node/<node>` too, so the stored Node is one row.
const NODE_NAMESPACE: &str = "null";
const SOURCE: &str = "edged";
/// The type of service-account token rows and resources.
const TOKEN_KIND: &str = "serviceaccounttoken";
const GROUP: &str = "meta";

/// What edged-shim calls; cheap to share.
#[derive(Debug, Clone)]
pub(crate) struct EdgedMeta {
    meta: MetaHandle,
    store: Store,
}

impl EdgedMeta {
    pub(crate) fn new(meta: MetaHandle, store: Store) -> Arc<Self> {
        Arc::new(Self { meta, store })
    }

    /// `<ns>/<kind>/<name>`: the stored row first, the cloud (or, offline, the store again)
    /// on a miss; `None` when neither has it.
    async fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, edged_shim::MetaError> {
        let resource = format!("{namespace}/{kind}/{name}");
        match self.store.get(&resource).await {
            Ok(Some(row)) => match serde_json::from_str::<Value>(&row) {
                Ok(object @ Value::Object(_)) => return Ok(Some(object)),
                _ => tracing::warn!(%resource, "stored row is not an object; asking the cloud"),
            },
            Ok(None) => {}
            Err(e) => return Err(to_shim(MetaError::Store(e))),
        }
        match self.meta.query(&resource).await {
            Ok(objects) => Ok(objects.into_iter().find(|o| o.is_object())),
            Err(MetaError::Remote {
                status: RemoteStatus::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(to_shim(e)),
        }
    }

    async fn submit_patch(
        &self,
        resource: String,
        patch: String,
    ) -> Result<(), edged_shim::MetaError> {
        let msg = Message::new(
            Route::new(SOURCE, GROUP, op::PATCH, &resource),
            Value::String(patch),
        );
        self.meta.submit_status(msg).await.map_err(to_shim)
    }
}

/// metamanager's errors in edged-shim's terms. Local failures (store, busy, a bad request)
/// have no kind of their own there; they are reported as rejected, which edged-shim retries.
fn to_shim(e: MetaError) -> edged_shim::MetaError {
    use edged_shim::MetaError as Shim;
    match e {
        MetaError::Stopped => Shim::Closed,
        MetaError::NotConnected { .. } | MetaError::SessionLost { .. } => {
            Shim::NotConnected(e.to_string())
        }
        MetaError::RemoteTimeout { after, .. } => Shim::Timeout(after),
        MetaError::Remote {
            status: RemoteStatus::AlreadyExists,
            reason,
            ..
        } => Shim::AlreadyExists(reason),
        MetaError::Remote { reason, .. } => Shim::Rejected(reason),
        MetaError::Store(_) | MetaError::BadRequest { .. } | MetaError::Busy { .. } => {
            Shim::Rejected(e.to_string())
        }
    }
}

impl MetaClient for EdgedMeta {
    fn register_node(&self, node: Value) -> MetaFuture<'_, ()> {
        Box::pin(async move {
            let name = node
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let msg = Message::new(
                Route::new(
                    SOURCE,
                    GROUP,
                    op::INSERT,
                    &format!("{NODE_NAMESPACE}/node/{name}"),
                ),
                node,
            );
            self.meta.request(msg).await.map(drop).map_err(to_shim)
        })
    }

    fn patch_node_status<'a>(&'a self, node: &'a str, patch: String) -> MetaFuture<'a, ()> {
        Box::pin(self.submit_patch(format!("{NODE_NAMESPACE}/nodepatch/{node}"), patch))
    }

    fn patch_pod_status<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        patch: String,
    ) -> MetaFuture<'a, ()> {
        Box::pin(self.submit_patch(format!("{namespace}/podpatch/{name}"), patch))
    }

    fn get_configmap<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> MetaFuture<'a, Option<Value>> {
        Box::pin(self.get("configmap", namespace, name))
    }

    fn get_secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> MetaFuture<'a, Option<Value>> {
        Box::pin(self.get("secret", namespace, name))
    }

    fn get_node<'a>(&'a self, name: &'a str) -> MetaFuture<'a, Option<Value>> {
        Box::pin(async move {
            let key = format!("{NODE_NAMESPACE}/node/{name}");
            match self.store.get(&key).await {
                Ok(row) => Ok(row
                    .and_then(|r| serde_json::from_str::<Value>(&r).ok())
                    .filter(Value::is_object)),
                Err(e) => Err(to_shim(MetaError::Store(e))),
            }
        })
    }

    fn get_lease<'a>(&'a self, namespace: &'a str, name: &'a str) -> MetaFuture<'a, Option<Value>> {
        Box::pin(async move {
            match self.meta.query(&format!("{namespace}/lease/{name}")).await {
                Ok(objects) => Ok(objects.into_iter().find(Value::is_object)),
                Err(MetaError::Remote {
                    status: RemoteStatus::NotFound,
                    ..
                }) => Ok(None),
                Err(e) => Err(to_shim(e)),
            }
        })
    }

    fn put_lease(&self, lease: Value, create: bool) -> MetaFuture<'_, Value> {
        Box::pin(async move {
            let field = |f: &str| {
                lease
                    .pointer(&format!("/metadata/{f}"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let resource = format!("{}/lease/{}", field("namespace"), field("name"));
            let operation = if create { op::INSERT } else { op::UPDATE };
            let msg = Message::new(Route::new(SOURCE, GROUP, operation, &resource), lease);
            let answer = self.meta.request(msg).await.map_err(to_shim)?;
            answer.into_iter().find(Value::is_object).ok_or_else(|| {
                edged_shim::MetaError::Rejected(format!(
                    "the cloud answered {resource} without a Lease"
                ))
            })
        })
    }

    fn service_account_token<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        request: Value,
    ) -> MetaFuture<'a, Value> {
        Box::pin(async move {
            let now = SystemTime::now();
            let stored = match self.store.list_type(TOKEN_KIND).await {
                Ok(rows) => rows,
                Err(e) => return Err(to_shim(MetaError::Store(e))),
            };
            // The stored token for this pod that expires last, if any.
            let best = stored
                .iter()
                .filter_map(|row| serde_json::from_str::<Value>(row).ok())
                .filter(|t| token::matches(t, &request))
                .max_by_key(|t| {
                    t.pointer("/status/expirationTimestamp")
                        .and_then(Value::as_str)
                        .and_then(token::parse_rfc3339)
                });
            if let Some(t) = &best
                && token::freshness(t, now) == token::Freshness::Fresh
            {
                return Ok(t.clone());
            }
            let resource = format!("{namespace}/{TOKEN_KIND}/{name}");
            let msg = Message::new(Route::new(SOURCE, GROUP, op::QUERY, &resource), request);
            match self.meta.request(msg).await {
                Ok(answer) => answer
                    .into_iter()
                    .find(|v| v.pointer("/status/token").is_some())
                    .ok_or_else(|| {
                        edged_shim::MetaError::Rejected(format!(
                            "the cloud answered {resource} without a token"
                        ))
                    }),
                // The cloud cannot be asked: a token that is due for refresh but still valid
                // keeps the pod's volume working (a restart offline needs it).
                Err(e) => match best {
                    Some(t) if token::freshness(&t, now) == token::Freshness::Stale => {
                        tracing::debug!(%resource, error = %e, "serving a stored token due for refresh");
                        Ok(t)
                    }
                    _ => Err(to_shim(e)),
                },
            }
        })
    }

    fn delete_pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    ) -> MetaFuture<'a, ()> {
        Box::pin(async move {
            let msg = Message::new(
                Route::new(
                    SOURCE,
                    GROUP,
                    op::DELETE,
                    &format!("{namespace}/pod/{name}"),
                ),
                json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}),
            );
            self.meta.request(msg).await.map(drop).map_err(to_shim)
        })
    }
}
