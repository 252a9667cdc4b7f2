//! Starting edged-shim: the node task and the pod task, under the caller's token and tracker.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span};

use crate::env::NodeFacts;
use crate::host::{HostProbe, SysinfoProbe};
use crate::meta::{MetaClient, PodEvent};
use crate::node::internal_ip;
use crate::node_lease;
use crate::node_status;
use crate::pod_worker::PodWorker;
use crate::runtime::{Runtime, RuntimeState};
use crate::settings::EdgedSettings;

/// What the caller keeps of a running edged-shim.
#[derive(Debug, Clone)]
pub struct EdgedHandle {
    runtime: watch::Receiver<RuntimeState>,
}

impl EdgedHandle {
    /// The container runtime's health; changes whenever it goes up or down.
    pub fn runtime_state(&self) -> watch::Receiver<RuntimeState> {
        self.runtime.clone()
    }
}

/// Starts edged-shim: registers the node and patches its status, and runs the pods that
/// arrive on `pods` (capacity [`crate::POD_EVENT_CAPACITY`] recommended) through `runtime`.
/// Both tasks stop when `cancel` fires; they never exit on errors.
pub fn spawn(
    settings: EdgedSettings,
    meta: Arc<dyn MetaClient>,
    pods: mpsc::Receiver<PodEvent>,
    runtime: Box<dyn Runtime>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> EdgedHandle {
    let probe = SysinfoProbe::new(settings.root_directory.clone());
    spawn_with_probe(
        settings,
        meta,
        pods,
        runtime,
        Box::new(probe),
        cancel,
        tracker,
    )
}

pub(crate) fn spawn_with_probe(
    settings: EdgedSettings,
    meta: Arc<dyn MetaClient>,
    pods: mpsc::Receiver<PodEvent>,
    runtime: Box<dyn Runtime>,
    mut probe: Box<dyn HostProbe>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> EdgedHandle {
    let facts = probe.facts();
    let host_ip = internal_ip(&settings, &facts)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let (state_tx, state_rx) = watch::channel(RuntimeState::Unknown);
    let (registered_tx, registered_rx) = watch::channel(false);
    let span = info_span!("edged", node = %settings.node_name);
    tracker.spawn(
        node_status::run(
            settings.clone(),
            meta.clone(),
            probe,
            state_rx.clone(),
            registered_tx,
            cancel.clone(),
        )
        .instrument(info_span!(parent: &span, "node_status")),
    );
    tracker.spawn(
        node_lease::run(
            settings.clone(),
            meta.clone(),
            registered_rx,
            cancel.clone(),
        )
        .instrument(info_span!(parent: &span, "node_lease")),
    );
    let node = NodeFacts {
        ip: host_ip,
        cpu_milli: i128::try_from(facts.cpus).unwrap_or(0) * 1000,
        memory_bytes: i128::from(
            facts
                .memory_bytes
                .saturating_sub(settings.thresholds.memory_available_bytes),
        ),
    };
    let worker = PodWorker::new(settings, meta, runtime, state_tx, node, facts.memory_bytes);
    tracker.spawn(
        worker
            .run(pods, cancel)
            .instrument(info_span!(parent: &span, "pods")),
    );
    EdgedHandle { runtime: state_rx }
}
