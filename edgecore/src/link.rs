//! What metamanager needs from the cloud link, as a trait so tests can drive it with channels.

use std::future::Future;

use edgehub::{HubHandle, LinkState, Message};
use tokio::sync::watch;

/// The upstream half of the hub: send a message, watch the link.
pub trait CloudLink: Clone + Send + Sync + 'static {
    /// Queues `msg` for the cloud; waits while the queue is full. `Err(msg)` means the link has
    /// shut down.
    fn send(&self, msg: Message) -> impl Future<Output = Result<(), Message>> + Send;

    /// The link state, updated on every transition.
    fn link(&self) -> watch::Receiver<LinkState>;
}

impl CloudLink for HubHandle {
    fn send(&self, msg: Message) -> impl Future<Output = Result<(), Message>> + Send {
        HubHandle::send(self, msg)
    }

    fn link(&self) -> watch::Receiver<LinkState> {
        HubHandle::link(self)
    }
}
