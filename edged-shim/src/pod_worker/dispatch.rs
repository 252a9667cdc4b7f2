//! The dispatcher: turns pod events into each pod's desired state, starts a task per pod and
//! forgets it once the pod is torn down. It never waits on the runtime or the cloud, so an
//! event for one pod reaches that pod's mailbox however busy the others are.

use std::collections::BTreeMap;

use tokio::task::{Id, JoinError, JoinSet};
use tracing::{Instrument, error};

use super::task::{Mailbox, PodTask};
use super::*;

/// A pod's task as the dispatcher knows it.
struct PodHandle {
    uid: String,
    task: Id,
    /// The one-slot mailbox: the newest desired state; writing it wakes the task.
    mailbox: watch::Sender<Mailbox>,
}

/// The pods of the node: one task per pod, fed through its mailbox.
pub(crate) struct PodWorker {
    shared: Arc<Shared>,
    woken: mpsc::Receiver<String>,
    /// By `namespace/name`; a pod being replaced by a new UID is kept as `…#old-<uid>`.
    pods: BTreeMap<String, PodHandle>,
    tasks: JoinSet<()>,
    /// When the files of every pod's configmap and secret volumes are checked next.
    next_refresh: Instant,
}

impl PodWorker {
    pub(crate) fn new(
        settings: EdgedSettings,
        meta: Arc<dyn MetaClient>,
        runtime: Box<dyn Runtime>,
        state: watch::Sender<RuntimeState>,
        node: NodeFacts,
        memory_capacity: u64,
    ) -> Self {
        let next_refresh = Instant::now() + settings.sync_frequency;
        let (wake, woken) = mpsc::channel(WAKE_CAPACITY);
        let shared = Shared {
            settings,
            meta,
            runtime: Arc::from(runtime),
            state,
            probe_results: probe::Results::default(),
            wake,
            pulls: Mutex::default(),
            node,
            runtime_probe: tokio::sync::Mutex::new(RuntimeProbe {
                backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
                next: Instant::now(),
            }),
            leftovers: tokio::sync::Mutex::default(),
            relist: tokio::sync::Mutex::default(),
            removed: Mutex::default(),
            memory_capacity,
        };
        Self {
            shared: Arc::new(shared),
            woken,
            pods: BTreeMap::new(),
            tasks: JoinSet::new(),
            next_refresh,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut events: mpsc::Receiver<PodEvent>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.shared.settings.pod_sync_period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The node's housekeeping, beside the pods: the runtime's health is checked every
        // period (also with no pod to sync, so the node reports it; while up, by the sandbox
        // listing the pods' checks share), and sandboxes no pod claimed within the grace are
        // removed once.
        let shared = self.shared.clone();
        let period = self.shared.settings.pod_sync_period;
        self.tasks.spawn(
            async move {
                let collect_at = Instant::now() + ORPHAN_GRACE;
                let mut collected = false;
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if !shared.probe_runtime().await || shared.relist().await.is_none() {
                        continue;
                    }
                    if !collected && Instant::now() >= collect_at {
                        collected = shared.collect_orphans().await;
                    }
                }
            }
            .in_current_span(),
        );
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                ev = events.recv() => match ev {
                    Some(PodEvent::ObjectChanged { kind, namespace, name }) => {
                        self.refresh_volumes(Some((kind, &namespace, &name)));
                    }
                    Some(ev) => self.apply(ev),
                    None => {
                        info!("pod feed closed; pod worker stops");
                        break;
                    }
                },
                Some(key) = self.woken.recv() => {
                    if let Some(pod) = self.pods.get(&key) {
                        pod.mailbox.send_modify(|_| {});
                    }
                }
                Some(done) = self.tasks.join_next_with_id() => self.finished(done),
                _ = tick.tick() => {
                    for pod in self.pods.values() {
                        pod.mailbox.send_modify(|_| {});
                    }
                    if Instant::now() >= self.next_refresh {
                        self.refresh_volumes(None);
                        self.next_refresh = Instant::now() + self.shared.settings.sync_frequency;
                    }
                }
            }
        }
        // The pods' tasks stop where they are, as the single loop did: the runtime keeps the
        // containers, and the next start adopts them.
        self.tasks.shutdown().await;
    }

    /// Records an event in the pod's mailbox, starting a task for a new pod.
    fn apply(&mut self, ev: PodEvent) {
        match ev {
            PodEvent::Upsert(json) => {
                let pod = match Pod::from_json(&json) {
                    Ok(p) => p,
                    Err(error) => {
                        warn!(%error, "pod ignored");
                        return;
                    }
                };
                let key = pod.key();
                if lock(&self.shared.removed).contains(&pod.metadata.uid) {
                    // The cloud's copy of a pod this node already finished (an update that
                    // was in flight when the pod went): starting it again would run it twice
                    // and send a second delete.
                    debug!(pod = %key, uid = %pod.metadata.uid, "event for a removed pod ignored");
                    return;
                }
                let deleting = pod.metadata.deletion_timestamp.is_some();
                match self.pods.get(&key) {
                    Some(known) if known.uid == pod.metadata.uid => {
                        known.mailbox.send_modify(|m| {
                            m.pod = pod;
                            m.pod_gen += 1;
                            if deleting {
                                m.desired = Desired::Gone { notify_cloud: true };
                            }
                        });
                    }
                    Some(_) => {
                        // Same name, new UID: the old pod goes while the new one starts.
                        info!(pod = %key, "pod replaced by a new uid");
                        if let Some(old) = self.pods.remove(&key) {
                            old.mailbox.send_modify(|m| {
                                m.desired = Desired::Gone {
                                    notify_cloud: false,
                                };
                            });
                            self.pods.insert(format!("{key}#old-{}", old.uid), old);
                        }
                        self.start(key, pod, deleting);
                    }
                    None => {
                        info!(pod = %key, "pod added");
                        self.start(key, pod, deleting);
                    }
                }
            }
            PodEvent::ObjectChanged { .. } => {}
            PodEvent::Delete {
                namespace,
                name,
                uid,
            } => {
                let key = format!("{namespace}/{name}");
                let Some(known) = self.pods.get(&key) else {
                    return;
                };
                if uid.is_empty() || known.uid == uid {
                    info!(pod = %key, "pod deleted by the cloud");
                    known.mailbox.send_modify(|m| {
                        m.desired = Desired::Gone {
                            notify_cloud: false,
                        };
                    });
                }
            }
        }
    }

    /// Starts the task of a pod new to this node.
    fn start(&mut self, key: String, pod: Pod, deleting: bool) {
        let uid = pod.metadata.uid.clone();
        let desired = if deleting {
            Desired::Gone { notify_cloud: true }
        } else {
            Desired::Running
        };
        let (mailbox, task) = PodTask::new(self.shared.clone(), pod, desired);
        let task = self.tasks.spawn(task.run().in_current_span()).id();
        self.pods.insert(key, PodHandle { uid, task, mailbox });
    }

    /// A task ended: its pod was torn down, or the task failed (logged; the pod's next event
    /// starts it again).
    fn finished(&mut self, done: Result<(Id, ()), JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                if e.is_panic() {
                    error!(error = %e, "a pod task panicked; the pod's next event restarts it");
                }
                e.id()
            }
        };
        self.pods.retain(|_, pod| pod.task != id);
    }

    /// Asks the running pods whose volumes are made from `object` (every running pod's when
    /// `None`) to rewrite them.
    fn refresh_volumes(&self, object: Option<(VolumeSource, &str, &str)>) {
        for pod in self.pods.values() {
            pod.mailbox.send_if_modified(|m| {
                let uses = object.is_none_or(|(kind, namespace, name)| {
                    m.pod.metadata.namespace == namespace
                        && volumes::uses(&m.pod, kind == VolumeSource::Secret, name)
                });
                if m.desired == Desired::Running && uses {
                    m.volumes_gen += 1;
                    true
                } else {
                    false
                }
            });
        }
    }
}
