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
    GetLease {
        namespace: String,
        name: String,
    },
    PutLease {
        lease: Value,
        create: bool,
    },
    Token {
        namespace: String,
        name: String,
        request: Value,
    },
}

/// A MetaClient that records calls on a channel and serves configmaps and secrets from maps.
pub(crate) struct RecordingMeta {
    calls: mpsc::Sender<MetaCall>,
    failing_registrations: AtomicU32,
    pub(crate) node_exists: std::sync::atomic::AtomicBool,
    pub(crate) objects: Mutex<HashMap<String, Value>>,
    /// `put_lease` fails this many more times (as the cloud rejecting a stale Lease).
    failing_leases: AtomicU32,
    tokens_issued: AtomicU32,
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
                failing_leases: AtomicU32::new(0),
                tokens_issued: AtomicU32::new(0),
            }),
            rx,
        )
    }

    pub(crate) fn fail_registrations(&self, n: u32) {
        self.failing_registrations.store(n, Ordering::SeqCst);
    }

    pub(crate) fn fail_leases(&self, n: u32) {
        self.failing_leases.store(n, Ordering::SeqCst);
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

    fn get_node<'a>(&'a self, name: &'a str) -> MetaFuture<'a, Option<Value>> {
        Box::pin(async move { Ok(self.get("node", "null", name)) })
    }

    fn get_lease<'a>(&'a self, namespace: &'a str, name: &'a str) -> MetaFuture<'a, Option<Value>> {
        Box::pin(async move {
            self.record(MetaCall::GetLease {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .await?;
            Ok(self.get("lease", namespace, name))
        })
    }

    /// Stores the Lease with the next resourceVersion, as the API server would.
    fn put_lease(&self, mut lease: Value, create: bool) -> MetaFuture<'_, Value> {
        Box::pin(async move {
            self.record(MetaCall::PutLease {
                lease: lease.clone(),
                create,
            })
            .await?;
            let left = self.failing_leases.load(Ordering::SeqCst);
            if left > 0 {
                self.failing_leases.store(left - 1, Ordering::SeqCst);
                return Err(MetaError::Rejected("conflict".to_owned()));
            }
            let ns = lease["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let name = lease["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let rv = self
                .get("lease", &ns, &name)
                .and_then(|l| {
                    l["metadata"]["resourceVersion"]
                        .as_str()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0);
            lease["metadata"]["resourceVersion"] = Value::String((rv + 1).to_string());
            self.put("lease", &ns, &name, lease.clone());
            Ok(lease)
        })
    }

    /// Answers the request with `status.token` = `token-<n>` for the n-th call.
    fn service_account_token<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        request: Value,
    ) -> MetaFuture<'a, Value> {
        Box::pin(async move {
            let n = self.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
            self.record(MetaCall::Token {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                request: request.clone(),
            })
            .await?;
            let mut answer = request;
            answer["status"] = serde_json::json!({"token": format!("token-{n}")});
            Ok(answer)
        })
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

/// A host-network sandbox of pod `default/<name>` (uid `uid-<name>`) and a container `container`
/// of `image` in it, as a previous run (or a test) would have made them.
pub(crate) fn running_pair(
    name: &str,
    container: &str,
    image: &str,
    attempt: u32,
) -> (
    crate::runtime::SandboxConfig,
    crate::runtime::ContainerConfig,
) {
    (
        crate::runtime::SandboxConfig {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            uid: format!("uid-{name}"),
            attempt: 0,
            host_network: true,
            hostname: String::new(),
            log_directory: std::path::PathBuf::from("/tmp"),
            cgroup_parent: None,
            labels: Default::default(),
            dns: None,
        },
        crate::runtime::ContainerConfig {
            name: container.to_owned(),
            image: image.to_owned(),
            command: vec![],
            args: vec![],
            env: vec![],
            mounts: vec![],
            working_dir: String::new(),
            log_path: String::new(),
            attempt,
            resources: Default::default(),
        },
    )
}
