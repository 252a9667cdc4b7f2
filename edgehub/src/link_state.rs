//! The vocabulary of the cloud link's state: why a session ended, the link state published on
//! a watch, and the link's counters. Shared by the session, the reconnect loop and the hub's
//! public face, so none of them depends on another for it.

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The peer closed the connection or it was reset.
    Closed,
    /// No frame arrived within the ping timeout (half-open link).
    Silent,
    /// A write failed or timed out.
    WriteFailed,
    /// A connection attempt failed.
    DialFailed,
    /// A preferred endpoint answers again; moving back to it.
    Preferred,
    /// edgecore is shutting down.
    Shutdown,
    /// The client certificate was renewed; re-dialing with the new one.
    CertRotated,
}

impl DisconnectReason {
    /// Every reason, in a fixed order (for metrics).
    pub const ALL: [Self; 7] = [
        Self::Closed,
        Self::Silent,
        Self::WriteFailed,
        Self::DialFailed,
        Self::Preferred,
        Self::Shutdown,
        Self::CertRotated,
    ];

    /// Static label, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Silent => "silent",
            Self::WriteFailed => "write_failed",
            Self::DialFailed => "dial_failed",
            Self::Preferred => "preferred",
            Self::Shutdown => "shutdown",
            Self::CertRotated => "cert_rotated",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Self::Closed => 0,
            Self::Silent => 1,
            Self::WriteFailed => 2,
            Self::DialFailed => 3,
            Self::Preferred => 4,
            Self::Shutdown => 5,
            Self::CertRotated => 6,
        }
    }
}

/// The state of the cloud link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Dialling `endpoint`; `attempt` counts from 1 since the last session.
    Connecting {
        /// `host:port` being dialled.
        endpoint: String,
        /// Attempt number since the last session ended.
        attempt: u32,
    },
    /// A session is up.
    Connected {
        /// Increases with every new session.
        session: u64,
        /// `host:port` of the session.
        endpoint: String,
    },
    /// No session.
    Disconnected {
        /// Why the last session (or attempt) ended.
        reason: DisconnectReason,
    },
}

impl LinkState {
    /// True while a session is up.
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }
}

/// Counters of the link, for the metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Sessions established since start.
    pub sessions: u64,
    /// Time from the last session loss to the next session, in milliseconds.
    pub last_failover_ms: Option<u64>,
    /// The delay before the current or last round of attempts, in milliseconds.
    pub current_backoff_ms: u64,
    /// How often the link went down, by reason.
    pub by_reason: ReconnectCounts,
}

impl HubStats {
    /// How many times the link went down for `reason` (each failed attempt counts as
    /// [`DisconnectReason::DialFailed`]).
    pub fn reconnects(&self, reason: DisconnectReason) -> u64 {
        self.by_reason.get(reason)
    }

    /// `(reason, count)` for every reason.
    pub fn reconnects_by_reason(&self) -> impl Iterator<Item = (DisconnectReason, u64)> + '_ {
        DisconnectReason::ALL
            .into_iter()
            .map(|reason| (reason, self.reconnects(reason)))
    }
}

/// Cumulative counts per [`DisconnectReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconnectCounts([u64; 7]);

impl ReconnectCounts {
    /// The count for `reason`.
    pub fn get(&self, reason: DisconnectReason) -> u64 {
        self.0.get(reason.index()).copied().unwrap_or(0)
    }

    /// Adds one for `reason`.
    pub fn count(&mut self, reason: DisconnectReason) {
        if let Some(n) = self.0.get_mut(reason.index()) {
            *n = n.saturating_add(1);
        }
    }
}
