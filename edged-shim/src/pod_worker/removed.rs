//! Pods this node has finished with, by UID, so that a late `update` cannot bring one back.
//!
//! A graceful deletion ends with edged's own `delete` to the cloud. The cloud may still have an
//! `update` of that pod in flight (the status patch of its stopped containers changed it), and
//! it reaches the node after the pod is gone. A UID never comes back to life in Kubernetes, so
//! any pod event for a UID in this set is stale; the kubelet's pod workers drop them the same
//! way (a terminated UID is never started again).

use std::collections::{HashSet, VecDeque};

/// How many removed UIDs are remembered; the oldest is forgotten first. The cloud's final
/// `delete` arrives within seconds, so a few hundred covers any burst of deletions.
const REMEMBERED: usize = 512;

#[derive(Debug, Default)]
pub(super) struct RemovedPods {
    order: VecDeque<String>,
    uids: HashSet<String>,
}

impl RemovedPods {
    /// Remembers that the pod with `uid` was torn down for good.
    pub(super) fn insert(&mut self, uid: &str) {
        if uid.is_empty() || !self.uids.insert(uid.to_owned()) {
            return;
        }
        self.order.push_back(uid.to_owned());
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.uids.remove(&old);
            }
        }
    }

    pub(super) fn contains(&self, uid: &str) -> bool {
        self.uids.contains(uid)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.uids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_bounded_number_oldest_first_out() {
        let mut r = RemovedPods::default();
        r.insert("");
        assert_eq!(r.len(), 0, "an empty uid is never remembered");
        for i in 0..REMEMBERED + 3 {
            r.insert(&format!("uid-{i}"));
        }
        r.insert("uid-10"); // already there: no second entry
        assert_eq!(r.len(), REMEMBERED);
        assert!(!r.contains("uid-0") && !r.contains("uid-2"));
        assert!(r.contains("uid-3") && r.contains(&format!("uid-{}", REMEMBERED + 2)));
    }
}
