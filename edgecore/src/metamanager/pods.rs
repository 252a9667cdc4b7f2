//! The pod feed to edged-shim: which committed cloud messages become [`PodEvent`]s, and the
//! queue that holds them while edged-shim is busy.
//!
//! metamanager never waits on the feed: edged-shim's pod task calls back into metamanager
//! (status patches, configmap queries) while it syncs a pod, so a blocking send could deadlock.
//! Events wait in a queue that keeps one event per pod, configmap or secret (the latest wins,
//! in the place of the first), so it never holds more entries than there are such objects.

use std::collections::{HashMap, VecDeque};

use edged_shim::{PodEvent, VolumeSource};
use edgehub::{Message, Resource, op};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::StoreError;
use crate::store::{Outcome, PutOutcome};

/// The feed and the events waiting for room in it, one per `<ns>/<name>`.
#[derive(Debug)]
pub(crate) struct PodQueue {
    tx: mpsc::Sender<PodEvent>,
    order: VecDeque<String>,
    events: HashMap<String, PodEvent>,
}

impl PodQueue {
    pub(crate) fn new(tx: mpsc::Sender<PodEvent>) -> Self {
        Self {
            tx,
            order: VecDeque::new(),
            events: HashMap::new(),
        }
    }

    /// The feed itself.
    pub(crate) fn sender(&self) -> mpsc::Sender<PodEvent> {
        self.tx.clone()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Queues `event` for pod `key`, replacing one still waiting for the same pod.
    pub(crate) fn push(&mut self, key: String, event: PodEvent) {
        if let Some(waiting) = self.events.get_mut(&key) {
            *waiting = event;
            return;
        }
        self.order.push_back(key.clone());
        self.events.insert(key, event);
    }

    /// Queues a stored pod (startup); a row without a name is skipped.
    pub(crate) fn upsert(&mut self, pod: Value) {
        let meta = |field: &str| {
            pod.pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (namespace, name) = (meta("namespace"), meta("name"));
        if name.is_empty() {
            tracing::warn!("stored pod without metadata.name; skipped");
            return;
        }
        self.push(format!("{namespace}/{name}"), PodEvent::Upsert(pod));
    }

    /// The oldest waiting event.
    pub(crate) fn pop(&mut self) -> Option<PodEvent> {
        while let Some(key) = self.order.pop_front() {
            if let Some(event) = self.events.remove(&key) {
                return Some(event);
            }
        }
        None
    }
}

/// Room for one event in the feed; `None` once edged-shim's end is closed. Never resolves
/// without a feed. Cancel-safe.
pub(crate) async fn reserve(
    tx: Option<&mpsc::Sender<PodEvent>>,
) -> Option<mpsc::Permit<'_, PodEvent>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

/// The event for a committed cloud message on `<ns>/pod/<name>`: an applied insert or update
/// is an upsert (an older resourceVersion that was not applied is nothing), a delete is a
/// delete with the uid the cloud sent. An applied write or delete of a configmap or secret is
/// an `ObjectChanged` (pods with a volume of it rewrite their files).
pub(crate) fn pod_event(
    msg: &Message,
    outcome: &[Result<Outcome, StoreError>],
) -> Option<(String, PodEvent)> {
    let resource = Resource::parse(msg.route.resource.trim())?;
    let name = resource.name?;
    let source = match resource.kind {
        "pod" => None,
        "configmap" => Some(VolumeSource::ConfigMap),
        "secret" => Some(VolumeSource::Secret),
        _ => return None,
    };
    if let Some(kind) = source {
        // The object's own write or delete, applied: pods with a volume of it are refreshed.
        let applied = match outcome.first() {
            Some(Ok(Outcome::Put(PutOutcome::Applied))) => true,
            Some(Ok(Outcome::Deleted(n))) => *n > 0,
            _ => false,
        };
        return applied.then(|| {
            (
                format!("{}:{}/{}", resource.kind, resource.namespace, name),
                PodEvent::ObjectChanged {
                    kind,
                    namespace: resource.namespace.to_owned(),
                    name: name.to_owned(),
                },
            )
        });
    }
    let key = format!("{}/{}", resource.namespace, name);
    let event = match msg.route.operation.as_str() {
        op::INSERT | op::UPDATE | op::RESPONSE => match outcome.first() {
            Some(Ok(Outcome::Put(PutOutcome::Applied))) => PodEvent::Upsert(msg.content.clone()),
            _ => return None,
        },
        op::DELETE => PodEvent::Delete {
            namespace: resource.namespace.to_owned(),
            name: name.to_owned(),
            uid: msg
                .content
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        },
        _ => return None,
    };
    Some((key, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upsert(name: &str, v: u32) -> PodEvent {
        PodEvent::Upsert(json!({"metadata": {"name": name, "v": v}}))
    }

    #[test]
    fn the_queue_keeps_one_event_per_pod_in_first_come_order() {
        let (tx, _rx) = mpsc::channel(1);
        let mut q = PodQueue::new(tx);
        q.push("ns/a".into(), upsert("a", 1));
        q.push("ns/b".into(), upsert("b", 1));
        q.push("ns/a".into(), upsert("a", 2));
        assert_eq!(q.pop(), Some(upsert("a", 2)));
        assert_eq!(q.pop(), Some(upsert("b", 1)));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn applied_pod_and_volume_object_changes_are_events() {
        let m = |operation: &str, resource: &str, content: Value| {
            Message::new(
                edgehub::Route::new("edgecontroller", "resource", operation, resource),
                content,
            )
        };
        let applied = [Ok(Outcome::Put(PutOutcome::Applied))];
        let stale = [Ok(Outcome::Put(PutOutcome::Stale {
            stored: 2.into(),
            incoming: 1.into(),
        }))];
        let pod = json!({"metadata": {"name": "p", "uid": "u1"}});
        assert_eq!(
            pod_event(&m(op::INSERT, "ns/pod/p", pod.clone()), &applied),
            Some(("ns/p".into(), PodEvent::Upsert(pod.clone())))
        );
        assert_eq!(
            pod_event(&m(op::UPDATE, "ns/pod/p", pod.clone()), &stale),
            None
        );
        assert_eq!(
            pod_event(&m(op::INSERT, "ns/lease/p", pod.clone()), &applied),
            None
        );
        // A configmap or secret change is an event for the pods that mount it, keyed apart
        // from a pod of the same name.
        assert_eq!(
            pod_event(&m(op::UPDATE, "ns/configmap/p", pod.clone()), &applied),
            Some((
                "configmap:ns/p".into(),
                PodEvent::ObjectChanged {
                    kind: VolumeSource::ConfigMap,
                    namespace: "ns".into(),
                    name: "p".into()
                }
            ))
        );
        assert_eq!(
            pod_event(&m(op::UPDATE, "ns/secret/p", pod.clone()), &stale),
            None
        );
        assert!(matches!(
            pod_event(
                &m(op::DELETE, "ns/secret/p", pod.clone()),
                &[Ok(Outcome::Deleted(1))]
            ),
            Some((
                _,
                PodEvent::ObjectChanged {
                    kind: VolumeSource::Secret,
                    ..
                }
            ))
        ));
        assert_eq!(
            pod_event(&m(op::DELETE, "ns/pod/p", pod), &[Ok(Outcome::Deleted(1))]),
            Some((
                "ns/p".into(),
                PodEvent::Delete {
                    namespace: "ns".into(),
                    name: "p".into(),
                    uid: "u1".into()
                }
            ))
        );
    }
}
