//! The public face of the cloud link: settings in, a handle and a link-state watch out.
//!
//! STUB: the edgehub engineer replaces the body of `spawn` with the real session loop.

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::HubError;
use crate::message::Message;

/// Capacity of the queue of messages waiting to go to the cloud.
pub(crate) const OUTBOUND_CAPACITY: usize = 1024;

/// What the hub needs to run: the node name and the validated `modules.edgeHub` section.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// `modules.edged.hostnameOverride`.
    pub node_name: String,
    /// `modules.edgeHub`.
    pub hub: config::EdgeHub,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl DisconnectReason {
    /// Static label, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Silent => "silent",
            Self::WriteFailed => "write_failed",
            Self::DialFailed => "dial_failed",
            Self::Preferred => "preferred",
            Self::Shutdown => "shutdown",
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

/// Cloneable handle to the running hub.
#[derive(Debug, Clone)]
pub struct HubHandle {
    outbound: mpsc::Sender<Message>,
    link: watch::Receiver<LinkState>,
}

impl HubHandle {
    /// Queues a message for the cloud; waits while the queue is full. Returns the message back
    /// only when the hub has shut down.
    pub async fn send(&self, msg: Message) -> Result<(), Message> {
        self.outbound.send(msg).await.map_err(|e| e.0)
    }

    /// The link state, updated on every transition.
    pub fn link(&self) -> watch::Receiver<LinkState> {
        self.link.clone()
    }
}

/// Starts the hub. Cloud messages (other than the reserved operations the hub answers itself)
/// go to `inbound`.
pub fn spawn(
    settings: HubSettings,
    inbound: mpsc::Sender<Message>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<HubHandle, HubError> {
    let (outbound, _outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let (_link_tx, link) = watch::channel(LinkState::Disconnected {
        reason: DisconnectReason::Closed,
    });
    let _ = (settings, inbound, cancel, tracker);
    Ok(HubHandle { outbound, link })
}
