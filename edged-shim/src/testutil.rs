//! Test doubles shared by the unit tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::meta::{MetaClient, MetaError, MetaFuture};

/// One call seen by [`RecordingMeta`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MetaCall {
    RegisterNode(Value),
    PatchNode {
        node: String,
        patch: String,
    },
    PatchPod {
        namespace: String,
        name: String,
        patch: String,
    },
    DeletePod {
        namespace: String,
        name: String,
        uid: String,
    },
}

/// A MetaClient that records calls on a channel and serves configmaps and secrets from maps.
pub(crate) struct RecordingMeta {
    calls: mpsc::Sender<MetaCall>,
    failing_registrations: AtomicU32,
    pub(crate) node_exists: std::sync::atomic::AtomicBool,
    pub(crate) objects: Mutex<HashMap<String, Value>>,
}

impl RecordingMeta {
    pub(crate) fn new() -> (Arc<Self>, mpsc::Receiver<MetaCall>) {
        let (tx, rx) = mpsc::channel(256);
        (
            Arc::new(Self {
                calls: tx,
                failing_registrations: AtomicU32::new(0),
                node_exists: std::sync::atomic::AtomicBool::new(false),
                objects: Mutex::new(HashMap::new()),
            }),
            rx,
        )
    }

    pub(crate) fn fail_registrations(&self, n: u32) {
        self.failing_registrations.store(n, Ordering::SeqCst);
    }

    pub(crate) fn put(&self, kind: &str, namespace: &str, name: &str, object: Value) {
        self.objects
            .lock()
            .unwrap()
            .insert(format!("{namespace}/{kind}/{name}"), object);
    }

    async fn record(&self, call: MetaCall) -> Result<(), MetaError> {
        self.calls.send(call).await.map_err(|_| MetaError::Closed)
    }

    fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.objects
            .lock()
            .unwrap()
            .get(&format!("{namespace}/{kind}/{name}"))
            .cloned()
    }
}

impl MetaClient for RecordingMeta {
    fn register_node(&self, node: Value) -> MetaFuture<'_, ()> {
        Box::pin(async move {
            self.record(MetaCall::RegisterNode(node)).await?;
            let left = self.failing_registrations.load(Ordering::SeqCst);
            if left > 0 {
                self.failing_registrations.store(left - 1, Ordering::SeqCst);
                return Err(MetaError::NotConnected("test".to_owned()));
            }
            if self.node_exists.load(Ordering::SeqCst) {
                return Err(MetaError::AlreadyExists(
                    "nodes \"n1\" already exists".to_owned(),
                ));
            }
            Ok(())
        })
    }

    fn patch_node_status<'a>(&'a self, node: &'a str, patch: String) -> MetaFuture<'a, ()> {
        Box::pin(self.record(MetaCall::PatchNode {
            node: node.to_owned(),
            patch,
        }))
    }

    fn patch_pod_status<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        patch: String,
    ) -> MetaFuture<'a, ()> {
        Box::pin(self.record(MetaCall::PatchPod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            patch,
        }))
    }

    fn get_configmap<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> MetaFuture<'a, Option<Value>> {
        Box::pin(async move { Ok(self.get("configmap", namespace, name)) })
    }

    fn get_secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> MetaFuture<'a, Option<Value>> {
        Box::pin(async move { Ok(self.get("secret", namespace, name)) })
    }

    fn delete_pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    ) -> MetaFuture<'a, ()> {
        Box::pin(self.record(MetaCall::DeletePod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        }))
    }
}
