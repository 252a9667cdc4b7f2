//! The feed from metamanager's commits to MetaServer's watchers: every cloud write that was
//! committed (and only then) becomes one [`Change`], numbered in commit order, kept in a
//! bounded ring for watchers that resume from a resourceVersion, and broadcast to the live
//! ones. A watcher that falls behind the broadcast is closed, never buffered without bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::broadcast;

/// Changes kept for watchers resuming from a resourceVersion; an older one gets `410 Gone`.
const RING: usize = 1024;
/// Changes a live watcher may be behind before it is closed.
const BROADCAST: usize = 1024;

/// What a committed cloud message did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Written by an `insert`.
    Added,
    /// Written by an `update`.
    Modified,
    /// Removed by a `delete`.
    Deleted,
}

impl ChangeKind {
    /// The watch event type.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub(crate) struct Change {
    /// Commit order, from 1.
    pub(crate) seq: u64,
    pub(crate) kind: ChangeKind,
    /// The `meta` table's type of the object (`pod`, `configmap`, …).
    pub(crate) stored_type: String,
    pub(crate) object: Value,
    /// What selectors read of the object this change replaced (`None`: there was none).
    pub(crate) previous: Option<Value>,
    /// The object's resourceVersion (for a delete without one: the revision at the time).
    pub(crate) rv: u64,
}

#[derive(Debug, Default)]
struct Ring {
    changes: VecDeque<Arc<Change>>,
    /// The largest resourceVersion published.
    revision: u64,
    seq: u64,
    /// Every change after this resourceVersion is in `changes` (0: every change since the
    /// feed began); resuming from an older one is not possible.
    complete_from: u64,
}

/// The feed; metamanager publishes, MetaServer subscribes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Changes {
    tx: broadcast::Sender<Arc<Change>>,
    ring: Arc<Mutex<Ring>>,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a watcher starts: the changes after its resourceVersion that the ring still holds,
/// and the live feed from the change after them.
pub(crate) struct Subscription {
    pub(crate) replay: Vec<Arc<Change>>,
    pub(crate) live: broadcast::Receiver<Arc<Change>>,
    /// The last change numbered when subscribing: a listing read after this holds every
    /// change up to it.
    pub(crate) seq: u64,
    pub(crate) revision: u64,
}

/// The resourceVersion is older than the oldest one a watch can resume from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooOld {
    pub(crate) oldest: u64,
}

/// An object's `metadata.resourceVersion` as a number.
pub(crate) fn rv_of(object: &Value) -> Option<u64> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

impl Changes {
    /// An empty feed.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(BROADCAST);
        Self {
            tx,
            ring: Arc::default(),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a committed change and hands it to the live watchers.
    ///
    /// `previous` is the object this change replaced, if any: a watch with a selector turns a
    /// change into `ADDED` or `DELETED` when the object starts or stops matching. Only what
    /// selectors read of it is kept.
    pub(crate) fn publish(
        &self,
        kind: ChangeKind,
        stored_type: &str,
        object: Value,
        previous: Option<&Value>,
    ) {
        let previous = previous.map(selector_view);
        let mut ring = self.ring();
        ring.seq += 1;
        let rv = rv_of(&object).unwrap_or(ring.revision);
        ring.revision = ring.revision.max(rv);
        let change = Arc::new(Change {
            seq: ring.seq,
            kind,
            stored_type: stored_type.to_owned(),
            object,
            previous,
            rv,
        });
        if ring.changes.len() == RING
            && let Some(dropped) = ring.changes.pop_front()
        {
            ring.complete_from = ring.complete_from.max(dropped.rv);
        }
        ring.changes.push_back(change.clone());
        // No receiver is fine: nobody watches.
        let _ = self.tx.send(change);
    }

    /// Starts the feed at the store's newest resourceVersion: what changed before is not
    /// kept, so a watcher resuming from an older version must list again.
    pub(crate) fn start_at(&self, revision: u64) {
        let mut ring = self.ring();
        ring.revision = ring.revision.max(revision);
        ring.complete_from = ring.complete_from.max(revision);
    }

    /// The largest resourceVersion published so far.
    pub(crate) fn revision(&self) -> u64 {
        self.ring().revision
    }

    /// The live feed alone.
    #[cfg(test)]
    pub(crate) fn subscribe_for_tests(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// Subscribes; `from` is the watcher's resourceVersion (`None`: from now on).
    pub(crate) fn subscribe(&self, from: Option<u64>) -> Result<Subscription, TooOld> {
        let ring = self.ring();
        let replay: Vec<Arc<Change>> = match from {
            None => Vec::new(),
            Some(rv) => {
                if rv < ring.complete_from {
                    return Err(TooOld {
                        oldest: ring.complete_from,
                    });
                }
                ring.changes.iter().filter(|c| c.rv > rv).cloned().collect()
            }
        };
        Ok(Subscription {
            replay,
            live: self.tx.subscribe(),
            seq: ring.seq,
            revision: ring.revision,
        })
    }
}

/// The parts of an object that label and field selectors read.
fn selector_view(object: &Value) -> Value {
    let meta = &object["metadata"];
    serde_json::json!({
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": meta["labels"],
        },
        "spec": {"nodeName": object["spec"]["nodeName"]},
        "status": {"phase": object["status"]["phase"]},
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(name: &str, rv: u64) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string()}})
    }

    #[test]
    fn resuming_replays_what_followed_and_refuses_what_was_dropped() {
        let c = Changes::new();
        c.publish(ChangeKind::Added, "pod", obj("a", 10), None);
        c.publish(ChangeKind::Modified, "pod", obj("a", 11), None);
        let s = c.subscribe(Some(10)).ok().unwrap();
        assert_eq!(s.replay.len(), 1);
        assert_eq!(s.replay[0].kind, ChangeKind::Modified);
        assert_eq!((s.seq, s.revision), (2, 11));
        assert!(c.subscribe(Some(11)).ok().unwrap().replay.is_empty());
        // The version before the first change kept is still whole (nothing was dropped).
        assert_eq!(c.subscribe(Some(5)).ok().unwrap().replay.len(), 2);

        for i in 0..RING as u64 {
            c.publish(ChangeKind::Modified, "pod", obj("a", 12 + i), None);
        }
        // 10 and 11 were dropped: from 11 on the ring is whole.
        assert_eq!(c.subscribe(Some(10)).err(), Some(TooOld { oldest: 11 }));
        assert_eq!(c.subscribe(Some(11)).ok().unwrap().replay.len(), RING);
        // A delete without a version carries the revision.
        c.publish(
            ChangeKind::Deleted,
            "pod",
            json!({"metadata": {"name": "a"}}),
            None,
        );
        let mut live = c.subscribe(None).ok().unwrap();
        assert!(live.replay.is_empty());
        c.publish(ChangeKind::Added, "pod", obj("b", 5000), None);
        let got = live.live.try_recv().unwrap();
        assert_eq!((got.seq, got.rv), (RING as u64 + 4, 5000));
    }

    #[test]
    fn after_a_restart_only_versions_from_the_store_on_are_served() {
        let c = Changes::new();
        c.start_at(40);
        assert_eq!(c.subscribe(Some(7)).err(), Some(TooOld { oldest: 40 }));
        assert!(c.subscribe(Some(40)).is_ok());
        c.publish(ChangeKind::Added, "pod", obj("a", 41), None);
        assert_eq!(c.subscribe(Some(40)).ok().unwrap().replay.len(), 1);
        assert!(c.subscribe(Some(39)).is_err());
    }
}
