//! The per-node store of ack-required messages (spec §4.3): keyed by object UID, the latest
//! message per key wins, older RVs are dropped, deletes and responses are always queued, and a
//! message that exhausted its sends comes back after a per-key exponential backoff.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use edgehub::Message;
use tokio::time::Instant;

/// One ack-required message waiting to be sent.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// Queue key: the object UID, or `response:<msg_id>` for query answers.
    pub(crate) key: String,
    /// Object UID when the message carries an object.
    pub(crate) uid: Option<String>,
    /// The message.
    pub(crate) msg: Message,
    /// resourceVersion of the object, 0 when none.
    pub(crate) rv: u64,
    /// A `delete`: its ack removes the ObjectSync.
    pub(crate) is_delete: bool,
}

impl Outgoing {
    fn is_response(&self) -> bool {
        self.key.starts_with("response:")
    }
}

#[derive(Debug)]
struct Entry {
    out: Outgoing,
    not_before: Option<Instant>,
    failures: u32,
}

/// First backoff step of client-go's per-item rate limiter.
const BACKOFF_BASE: Duration = Duration::from_millis(5);
/// Its cap.
const BACKOFF_MAX: Duration = Duration::from_secs(1000);

#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    order: VecDeque<String>,
    store: HashMap<String, Entry>,
}

impl AckQueue {
    /// Adds a message; false if the rules dropped it.
    pub(crate) fn enqueue(&mut self, out: Outgoing) -> bool {
        if let Some(entry) = self.store.get_mut(&out.key) {
            if !out.is_response() {
                if entry.out.is_delete {
                    return false;
                }
                if !out.is_delete && out.rv <= entry.out.rv {
                    return false;
                }
            }
            entry.out = out;
            entry.not_before = None;
            return true;
        }
        self.order.push_back(out.key.clone());
        self.store.insert(
            out.key.clone(),
            Entry {
                out,
                not_before: None,
                failures: 0,
            },
        );
        true
    }

    /// Takes the first message that is not backing off, with its failure count.
    pub(crate) fn pop_ready(&mut self, now: Instant) -> Option<(Outgoing, u32)> {
        let idx = self.order.iter().position(|k| {
            self.store
                .get(k)
                .is_some_and(|e| e.not_before.is_none_or(|t| t <= now))
        })?;
        let key = self.order.remove(idx)?;
        let entry = self.store.remove(&key)?;
        Some((entry.out, entry.failures))
    }

    /// When the earliest backing-off message becomes ready, if all are backing off.
    pub(crate) fn next_ready_at(&self) -> Option<Instant> {
        self.store.values().filter_map(|e| e.not_before).min()
    }

    /// Puts a message whose sends are exhausted back, ready after the backoff, unless a newer
    /// message for the same key arrived meanwhile.
    pub(crate) fn requeue_later(&mut self, out: Outgoing, failures: u32, now: Instant) {
        if self.store.contains_key(&out.key) {
            return;
        }
        let delay = BACKOFF_BASE
            .checked_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(BACKOFF_MAX)
            .min(BACKOFF_MAX);
        self.order.push_back(out.key.clone());
        self.store.insert(
            out.key.clone(),
            Entry {
                out,
                not_before: Some(now + delay),
                failures: failures.saturating_add(1),
            },
        );
    }

    /// Messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.store.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgehub::Route;
    use serde_json::Value;

    fn out(key: &str, rv: u64, delete: bool) -> Outgoing {
        Outgoing {
            key: key.to_owned(),
            uid: Some(key.to_owned()),
            msg: Message::new(Route::default(), Value::Null),
            rv,
            is_delete: delete,
        }
    }

    #[test]
    fn latest_per_uid_wins_and_older_rvs_are_dropped() {
        let mut q = AckQueue::default();
        let now = Instant::now();
        assert!(q.enqueue(out("a", 5, false)));
        assert!(q.enqueue(out("b", 6, false)));
        assert!(!q.enqueue(out("a", 5, false)));
        assert!(!q.enqueue(out("a", 4, false)));
        assert!(q.enqueue(out("a", 7, false)));
        assert_eq!(q.len(), 2);
        let (first, _) = q.pop_ready(now).unwrap();
        assert_eq!(
            (first.key.as_str(), first.rv),
            ("a", 7),
            "keeps its place in line"
        );
    }

    #[test]
    fn deletes_always_queue_and_nothing_follows_a_stored_delete() {
        let mut q = AckQueue::default();
        assert!(q.enqueue(out("a", 9, false)));
        assert!(q.enqueue(out("a", 3, true)));
        assert!(!q.enqueue(out("a", 10, false)));
        let (m, _) = q.pop_ready(Instant::now()).unwrap();
        assert!(m.is_delete);
    }

    #[test]
    fn responses_are_always_queued() {
        let mut q = AckQueue::default();
        assert!(q.enqueue(out("response:1", 0, false)));
        assert!(q.enqueue(out("response:1", 0, false)));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn exhausted_messages_back_off() {
        let mut q = AckQueue::default();
        let now = Instant::now();
        q.requeue_later(out("a", 1, false), 0, now);
        assert!(q.pop_ready(now).is_none());
        assert_eq!(q.next_ready_at(), Some(now + BACKOFF_BASE));
        let (m, failures) = q.pop_ready(now + BACKOFF_BASE).unwrap();
        assert_eq!((m.key.as_str(), failures), ("a", 1));
        // A newer version is sent at once.
        q.requeue_later(out("a", 1, false), 3, now);
        assert!(q.enqueue(out("a", 2, false)));
        assert_eq!(q.pop_ready(now).unwrap().0.rv, 2);
    }
}
