//! The node's Lease in `kube-node-lease`: fetched or created once, then renewed every quarter
//! of its duration, as the kubelet's lease controller does. The Lease is the node's heartbeat
//! for the controller-manager's node lifecycle controller; with it, node status patches go up
//! only when the status changes (or every `nodeStatusReportFrequency`).
//!
//! Each call goes through metamanager to the cloud (KubeEdge: `query`, `insert` and `update`
//! on `kube-node-lease/lease/<node>`, answered by edgecontroller with the API server's
//! Lease). Offline the renewals fail and resume on the next session.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::meta::{MetaClient, MetaError};
use crate::node_status::META_CALL_TIMEOUT;
use crate::settings::EdgedSettings;
use crate::time::rfc3339_micros;

/// Where node Leases live.
pub(crate) const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The kubelet's first retry after a failed lease call; doubled up to the renew interval.
const RETRY_INITIAL: Duration = Duration::from_millis(200);

/// Keeps the node's Lease renewed until `cancel` fires, from the moment `registered` turns
/// true (the Node must exist to own the Lease).
pub(crate) async fn run(
    settings: EdgedSettings,
    meta: Arc<dyn MetaClient>,
    mut registered: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    tokio::select! {
        biased;
        () = cancel.cancelled() => return,
        r = registered.wait_for(|r| *r) => if r.is_err() { return },
    }
    let renew_every = (settings.node_lease_duration / 4).max(Duration::from_secs(1));
    let mut backoff = Backoff::new(RETRY_INITIAL, renew_every);
    let mut latest: Option<Value> = None;
    let mut failing = false;
    loop {
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            r = timeout(META_CALL_TIMEOUT, renew(&settings, meta.as_ref(), &mut latest)) => {
                r.unwrap_or(Err(MetaError::Timeout(META_CALL_TIMEOUT)))
            }
        };
        let wait = match outcome {
            Ok(()) => {
                if std::mem::replace(&mut failing, false) {
                    info!(node = %settings.node_name, "node lease renewed again");
                }
                backoff.reset();
                renew_every
            }
            Err(error) => {
                if std::mem::replace(&mut failing, true) {
                    debug!(%error, "node lease renewal failed again");
                } else {
                    warn!(%error, "node lease renewal failed; retrying");
                }
                backoff.next_delay()
            }
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = sleep(wait) => {}
        }
    }
}

/// One round: the Lease we hold (else the cloud's, else a new one), renewed now.
async fn renew(
    settings: &EdgedSettings,
    meta: &dyn MetaClient,
    latest: &mut Option<Value>,
) -> Result<(), MetaError> {
    let node = settings.node_name.as_str();
    let owner = node_uid(meta, node).await;
    let held = match latest.take() {
        Some(lease) => lease,
        None => match meta.get_lease(LEASE_NAMESPACE, node).await? {
            Some(lease) => lease,
            None => {
                let created = meta
                    .put_lease(new_lease(settings, owner.as_deref()), true)
                    .await?;
                info!(%node, "node lease created");
                *latest = Some(created);
                return Ok(());
            }
        },
    };
    match meta
        .put_lease(renewed(&held, settings, owner.as_deref()), false)
        .await
    {
        Ok(lease) => {
            debug!("node lease renewed");
            *latest = Some(lease);
            Ok(())
        }
        // Not sent or not answered: the Lease we hold is still the cloud's latest.
        Err(e @ (MetaError::NotConnected(_) | MetaError::Timeout(_))) => {
            *latest = Some(held);
            Err(e)
        }
        // Rejected (a newer version exists, or it was deleted): fetch it again next round.
        Err(e) => Err(e),
    }
}

/// The registered Node's uid, for the Lease's owner reference (so the Lease goes with the Node).
async fn node_uid(meta: &dyn MetaClient, node: &str) -> Option<String> {
    let stored = meta.get_node(node).await.ok().flatten()?;
    stored
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .filter(|uid| !uid.is_empty())
        .map(str::to_owned)
}

fn owner_references(node: &str, uid: &str) -> Value {
    json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}])
}

/// A new Lease held by this node, renewed now.
fn new_lease(settings: &EdgedSettings, owner: Option<&str>) -> Value {
    let node = settings.node_name.as_str();
    let mut lease = json!({
        "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
        "spec": {},
    });
    if let Some(uid) = owner {
        lease["metadata"]["ownerReferences"] = owner_references(node, uid);
    }
    stamp(&mut lease, settings);
    lease
}

/// `held` with this node as holder, the configured duration and a renew time of now; the
/// owner reference is added when the Lease lacks one.
fn renewed(held: &Value, settings: &EdgedSettings, owner: Option<&str>) -> Value {
    let mut lease = held.clone();
    if !lease.is_object() {
        return new_lease(settings, owner);
    }
    let has_owner = lease
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| !refs.is_empty());
    if let (false, Some(uid), Some(meta)) = (
        has_owner,
        owner,
        lease.get_mut("metadata").and_then(Value::as_object_mut),
    ) {
        meta.insert(
            "ownerReferences".to_owned(),
            owner_references(&settings.node_name, uid),
        );
    }
    stamp(&mut lease, settings);
    lease
}

/// Sets holder, duration and renew time in the Lease object's spec (a spec that is not an
/// object is replaced).
fn stamp(lease: &mut Value, settings: &EdgedSettings) {
    let Some(object) = lease.as_object_mut() else {
        return;
    };
    let spec = object
        .entry("spec")
        .and_modify(|s| {
            if !s.is_object() {
                *s = json!({});
            }
        })
        .or_insert_with(|| json!({}));
    if let Some(spec) = spec.as_object_mut() {
        spec.insert("holderIdentity".to_owned(), json!(settings.node_name));
        spec.insert(
            "leaseDurationSeconds".to_owned(),
            json!(settings.node_lease_duration.as_secs()),
        );
        spec.insert(
            "renewTime".to_owned(),
            json!(rfc3339_micros(SystemTime::now())),
        );
    }
}

#[cfg(test)]
mod tests;
