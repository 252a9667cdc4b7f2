//! The public face of the cloud link: settings in, a handle and a link-state watch out.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::ReconnectBackoff;
use crate::dial::Target;
use crate::endpoints::Endpoints;
use crate::error::HubError;
use crate::link::Link;
use crate::link_state::{DisconnectReason, HubStats, LinkState};
use crate::message::Message;
use crate::session::SessionSettings;
use crate::tls::ClientTls;

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

/// Cloneable handle to the running hub.
#[derive(Debug, Clone)]
pub struct HubHandle {
    outbound: mpsc::Sender<Message>,
    link: watch::Receiver<LinkState>,
    stats: watch::Receiver<HubStats>,
    reload: Arc<watch::Sender<u64>>,
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

    /// Tells the hub that the certificate files were renewed: it reloads them and, when that
    /// works, ends the session and re-dials with the new pair (as KubeEdge does after a
    /// rotation). A pair that does not load is logged and the old one kept.
    pub fn certificates_rotated(&self) {
        self.reload.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A snapshot of the link counters.
    pub fn stats(&self) -> HubStats {
        self.stats.borrow().clone()
    }
}

/// Starts the hub. Cloud messages (other than the reserved operations the hub answers itself)
/// go to `inbound`.
///
/// Fails before anything runs when the TLS files, endpoints or URL parts in `settings` are
/// unusable; the error names the config key to fix.
pub fn spawn(
    settings: HubSettings,
    inbound: mpsc::Sender<Message>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<HubHandle, HubError> {
    let HubSettings { node_name, hub } = settings;
    let tls = ClientTls::load(&hub)?;
    let endpoints = Endpoints::from_config(&hub)?;
    let targets = endpoints
        .iter()
        .map(|ep| Target::new(ep.clone(), &tls, &node_name, &hub))
        .collect::<Result<Vec<_>, _>>()?;
    let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let (link_tx, link) = watch::channel(LinkState::Disconnected {
        reason: DisconnectReason::Closed,
    });
    let (stats_tx, stats) = watch::channel(HubStats::default());
    let (reload, reload_rx) = watch::channel(0u64);
    let task = Link {
        session: SessionSettings::from_config(&hub),
        targets,
        endpoints,
        backoff: ReconnectBackoff::new(&hub.failover),
        stable_after: std::time::Duration::from_millis(hub.failover.stable_after_ms),
        probe_every: std::time::Duration::from_millis(hub.failover.probe_preferred_ms.max(10)),
        inbound,
        outbound: outbound_rx,
        link: link_tx,
        stats: stats_tx,
        cancel,
        sessions: 0,
        reload: reload_rx,
        hub,
        node_name: node_name.clone(),
    };
    let span = tracing::info_span!("edgehub", node = %node_name);
    tracker.spawn(task.run().instrument(span));
    Ok(HubHandle {
        outbound,
        link,
        stats,
        reload: Arc::new(reload),
    })
}
