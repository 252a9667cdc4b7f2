//! What a simulator replica reports to tests: an event stream and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgehub::Message;
use tokio::sync::broadcast;

/// Capacity of the event broadcast; a subscriber that falls this far behind loses events and
/// is told so.
pub(crate) const EVENT_CAPACITY: usize = 1 << 16;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The same node connected again; the last connection wins.
    Replaced,
    /// No `keepalive` within the timeout.
    KeepaliveTimeout,
    /// The edge closed the connection or the transport failed.
    Closed,
    /// A write failed or did not finish in time.
    WriteFailed,
    /// [`crate::CloudSim::kill_connections`] reset it.
    Killed,
    /// The replica stopped.
    Stopped,
}

impl DisconnectReason {
    /// Static label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replaced => "replaced",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::Closed => "closed",
            Self::WriteFailed => "write_failed",
            Self::Killed => "killed",
            Self::Stopped => "stopped",
        }
    }
}

/// One thing that happened on a replica.
#[derive(Debug, Clone)]
pub enum Event {
    /// A node session started.
    Connected {
        /// `node_id` header.
        node: String,
        /// Replica name.
        replica: String,
    },
    /// A connection without `ConnectionUse: msg`: accepted, never read (like viaduct).
    Ignored {
        /// `node_id` header.
        node: String,
        /// Replica name.
        replica: String,
    },
    /// A node session ended.
    Disconnected {
        /// Node.
        node: String,
        /// Replica name.
        replica: String,
        /// Why.
        reason: DisconnectReason,
    },
    /// A decoded upstream message (keepalives included).
    Upstream {
        /// Node.
        node: String,
        /// The message.
        msg: Message,
    },
    /// A frame that is not a beehive message; skipped.
    BadFrame {
        /// Node.
        node: String,
        /// Decoder error.
        error: String,
    },
    /// A downstream message went out.
    Sent {
        /// Node.
        node: String,
        /// The message.
        msg: Message,
        /// 1 for the first send of this msg_id, 2..=5 for resends.
        attempt: u32,
        /// The same (uid, rv) had already been delivered to this node by an earlier send.
        duplicate: bool,
    },
    /// An ack-required message was acked and its ObjectSync recorded.
    Acked {
        /// Node.
        node: String,
        /// Object UID (empty for answers without an object).
        uid: String,
        /// Acked RV.
        rv: u64,
        /// The acked msg_id.
        msg_id: String,
    },
}

/// A subscription to a replica's events.
#[derive(Debug)]
pub struct EventStream {
    pub(crate) rx: broadcast::Receiver<Event>,
}

impl EventStream {
    /// The next event, or an error naming `what` after `within`.
    pub async fn next_event(&mut self, within: Duration, what: &str) -> anyhow::Result<Event> {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Ok(ev)) => Ok(ev),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                anyhow::bail!("event stream lagged by {n} events while awaiting {what}")
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                anyhow::bail!("replica stopped while awaiting {what}")
            }
            Err(_) => anyhow::bail!("timed out after {within:?} awaiting {what}"),
        }
    }

    /// Skips events until `pred` matches one; errors after `within` naming `what`.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> anyhow::Result<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = self.next_event(left, what).await?;
            if pred(&ev) {
                return Ok(ev);
            }
        }
    }
}

/// Counters of one replica.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) disconnections: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) resent: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) stale_acks: AtomicU64,
    pub(crate) gave_up: AtomicU64,
    pub(crate) upstream: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) dropped_enqueues: AtomicU64,
}

/// A snapshot of a replica's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Node sessions started.
    pub connections: u64,
    /// Node sessions ended.
    pub disconnections: u64,
    /// Downstream messages written, first sends and resends.
    pub sent: u64,
    /// Of those, resends of the same msg_id.
    pub resent: u64,
    /// First sends of a (uid, rv) already delivered to that node before.
    pub duplicates: u64,
    /// Acks matched to the in-flight message.
    pub acked: u64,
    /// `response` messages whose parent was not in flight (late or repeated acks).
    pub stale_acks: u64,
    /// Messages that used up their 5 sends and went back to the queue.
    pub gave_up: u64,
    /// Upstream messages decoded.
    pub upstream: u64,
    /// Upstream frames that did not decode.
    pub bad_frames: u64,
    /// Change-log messages a busy session could not take (resync covers them).
    pub dropped_enqueues: u64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CounterSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            connections: g(&self.connections),
            disconnections: g(&self.disconnections),
            sent: g(&self.sent),
            resent: g(&self.resent),
            duplicates: g(&self.duplicates),
            acked: g(&self.acked),
            stale_acks: g(&self.stale_acks),
            gave_up: g(&self.gave_up),
            upstream: g(&self.upstream),
            bad_frames: g(&self.bad_frames),
            dropped_enqueues: g(&self.dropped_enqueues),
        }
    }
}
