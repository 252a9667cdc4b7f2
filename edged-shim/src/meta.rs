//! The boundary towards metamanager: what edged-shim asks of the cloud side, and the pod feed.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

/// A boxed future returned by [`MetaClient`] methods (dyn-compatible async).
pub type MetaFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, MetaError>> + Send + 'a>>;

/// What metamanager does for edged-shim. Implemented in `edgecore`; edged-shim never sees
/// hub messages, only these calls.
///
/// Every method maps onto one edged message of the KubeEdge protocol (source `edged`, group
/// `meta`). The implementation owns correlation with the cloud's answer and its timeout.
pub trait MetaClient: Send + Sync + 'static {
    /// `insert` on `null/node/<node>` with the Node object as content.
    fn register_node(&self, node: Value) -> MetaFuture<'_, ()>;
    /// `patch` on `null/nodepatch/<node>`; `patch` is the strategic-merge patch as a string.
    fn patch_node_status<'a>(&'a self, node: &'a str, patch: String) -> MetaFuture<'a, ()>;
    /// `patch` on `<ns>/podpatch/<name>`; `patch` is the strategic-merge patch as a string.
    fn patch_pod_status<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        patch: String,
    ) -> MetaFuture<'a, ()>;
    /// ConfigMap `<ns>/configmap/<name>`: local store first, cloud on a miss. `Ok(None)` when
    /// neither has it.
    fn get_configmap<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> MetaFuture<'a, Option<Value>>;
    /// Secret `<ns>/secret/<name>`, like [`MetaClient::get_configmap`].
    fn get_secret<'a>(&'a self, namespace: &'a str, name: &'a str)
    -> MetaFuture<'a, Option<Value>>;
    /// The Node as this edge last stored it (`null/node/<node>`: the registration's answer or
    /// the cloud's latest push), from the local store only. `Ok(None)` when there is none.
    fn get_node<'a>(&'a self, name: &'a str) -> MetaFuture<'a, Option<Value>>;
    /// `query` on `<ns>/lease/<name>`: the cloud while connected, the stored row otherwise.
    /// `Ok(None)` when the Lease does not exist.
    fn get_lease<'a>(&'a self, namespace: &'a str, name: &'a str) -> MetaFuture<'a, Option<Value>>;
    /// `insert` (`create`) or `update` on `<ns>/lease/<name>` with the Lease as content;
    /// answers the Lease the cloud stored. Fails with [`MetaError::NotConnected`] offline.
    fn put_lease(&self, lease: Value, create: bool) -> MetaFuture<'_, Value>;
    /// A token of service account `name` for `request` (a TokenRequest bound to a pod): a
    /// stored one while it is fresh (under 80 % of its lifetime), else the cloud's (`query`
    /// on `<ns>/serviceaccounttoken/<name>`, which CloudCore answers with a TokenRequest), else,
    /// offline, a stored one that has not expired. Answers the TokenRequest with
    /// `status.token`.
    fn service_account_token<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        request: Value,
    ) -> MetaFuture<'a, Value>;
    /// `delete` on `<ns>/pod/<name>` with `{"gracePeriodSeconds":0,"preconditions":{"uid":..}}`:
    /// tells the cloud the pod is gone from this node after a graceful deletion.
    fn delete_pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    ) -> MetaFuture<'a, ()>;
}

/// Why a [`MetaClient`] call failed. Every kind is retried by edged-shim later.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The cloud link is down; metamanager may have stored a patch locally.
    #[error("cloud not connected: {0}")]
    NotConnected(String),
    /// The cloud answered with an error message.
    #[error("cloud rejected the request: {0}")]
    Rejected(String),
    /// The object already exists in the cloud (an `insert` of something the API server has);
    /// for the Node this counts as registered.
    #[error("already exists in the cloud: {0}")]
    AlreadyExists(String),
    /// No answer within the remote query timeout.
    #[error("no answer from the cloud within {0:?}")]
    Timeout(Duration),
    /// Metamanager has shut down.
    #[error("metamanager has shut down")]
    Closed,
}

/// Pod input from metamanager, in cloud order, on a bounded channel.
#[derive(Debug, Clone, PartialEq)]
pub enum PodEvent {
    /// A pod was inserted or updated (cloud `insert`/`update`, or the startup pod list): the Pod JSON.
    Upsert(Value),
    /// A pod was deleted by the cloud (`delete` on `<ns>/pod/<name>`).
    Delete {
        /// Namespace of the pod.
        namespace: String,
        /// Name of the pod.
        name: String,
        /// UID of the pod, when the cloud sent it; an empty string matches any UID.
        uid: String,
    },
    /// The cloud changed (or deleted) a ConfigMap or Secret: the files of pod volumes made
    /// from it are rewritten from the stored copy.
    ObjectChanged {
        /// ConfigMap or Secret.
        kind: VolumeSource,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// The kind of object a pod reads through a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeSource {
    /// A ConfigMap (`configmap` resources).
    ConfigMap,
    /// A Secret (`secret` resources).
    Secret,
}

/// Capacity to use for the [`PodEvent`] channel.
pub const POD_EVENT_CAPACITY: usize = 128;
