//! The pod task: one loop that owns every pod's state, drives the runtime towards the pods
//! metamanager sends, and reports their status back as `podpatch` strings.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::dns;
use crate::env::{NodeFacts, Objects, container_env, expand_refs};
use crate::meta::{MetaClient, PodEvent, VolumeSource};
use crate::node_status::META_CALL_TIMEOUT;
use crate::pod::{Pod, PullPolicy, RestartPolicy};
use crate::pod_status::{
    ApiState, CONDITIONS, ContainerView, MountView, POD_SCHEDULED, PodView, condition_states,
    status_patch,
};
use crate::probe;
use crate::resources;
use crate::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, Runtime, RuntimeError, RuntimeFuture,
    RuntimeState, SandboxConfig, SandboxInfo,
};
use crate::settings::EdgedSettings;
use crate::termination;
use crate::time::rfc3339;
use crate::volumes;
use removed::RemovedPods;

/// Kubelet's crash-loop backoff: 10 s doubling to 5 min.
const CRASH_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Pods asking to be synced now (a probe verdict changed, a pull ended); beyond this the
/// periodic sync catches up.
const WAKE_CAPACITY: usize = 64;
/// A back-off older than this starts again from the initial delay (twice the maximum, as the
/// kubelet's).
const CRASH_BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How long after start sandboxes of unknown pods are left alone (the startup pod list
/// arrives well within it).
const ORPHAN_GRACE: Duration = Duration::from_secs(60);
/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Grace period when the pod names none.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct ContainerRecord {
    name: String,
    id: Option<String>,
    attempt: u32,
    restart_count: u32,
    status: Option<ContainerStatus>,
    last_terminated: Option<ApiState>,
    /// Why the container is not running yet (image, config, sandbox, runtime problems).
    waiting: Option<(String, String)>,
    backoff: Backoff,
    /// When the last back-off was started.
    backoff_at: Option<Instant>,
    restart_at: Option<Instant>,
    /// The spec changed (image update): replace the running container.
    replace: bool,
    /// The kubelet's image pull back-off (10 s doubling to 5 min) and the failed pull it
    /// follows: until `pull_retry_at` the container waits in `ImagePullBackOff`.
    pull_backoff: Backoff,
    pull_retry_at: Option<(Instant, String)>,
    /// The termination message of the exited container with this ID, read once.
    exit_message: Option<(String, String)>,
    /// The probes running for the container with this ID; dropping the guard stops them.
    probes: Option<(String, tokio_util::sync::DropGuard)>,
}

impl ContainerRecord {
    /// Exited with code 0 when last looked at.
    fn succeeded(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.state == ContainerState::Exited && s.exit_code == 0)
    }

    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            id: None,
            attempt: 0,
            restart_count: 0,
            status: None,
            last_terminated: None,
            waiting: None,
            backoff: Backoff::exact(CRASH_BACKOFF_INITIAL, CRASH_BACKOFF_MAX),
            backoff_at: None,
            restart_at: None,
            replace: false,
            pull_backoff: Backoff::exact(CRASH_BACKOFF_INITIAL, CRASH_BACKOFF_MAX),
            pull_retry_at: None,
            exit_message: None,
            probes: None,
        }
    }
}

/// What one turn of the worker's loop does.
enum Work {
    /// Sync this pod (an event changed it).
    Pod(String),
    /// Rewrite the volumes made from this object.
    Volumes {
        kind: VolumeSource,
        namespace: String,
        name: String,
    },
    /// The periodic pass over every pod.
    All,
    /// The event changed nothing.
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Desired {
    Running,
    /// Tear down; `notify_cloud` sends the final delete (graceful deletion from the cloud).
    Gone {
        notify_cloud: bool,
    },
}

#[derive(Debug)]
struct PodRecord {
    pod: Pod,
    desired: Desired,
    sandbox_id: Option<String>,
    sandbox_attempt: u32,
    /// The sandbox's IP on the pod network (not for host-network pods).
    pod_ip: Option<String>,
    volumes: HashMap<String, PathBuf>,
    /// The init containers' records, then the app containers'.
    containers: Vec<ContainerRecord>,
    start_time: String,
    transitions: [(Option<bool>, String); CONDITIONS.len()],
    last_patch: Option<String>,
    /// The last patch failed (logged once until one succeeds).
    patch_failing: bool,
    /// Backoff between failed sandbox creations.
    sandbox_backoff: Backoff,
    sandbox_retry_at: Option<Instant>,
}

impl PodRecord {
    fn new(pod: Pod) -> Self {
        let containers = pod
            .all_containers()
            .map(|c| ContainerRecord::new(&c.name))
            .collect();
        Self {
            pod,
            desired: Desired::Running,
            sandbox_id: None,
            sandbox_attempt: 0,
            pod_ip: None,
            volumes: HashMap::new(),
            containers,
            start_time: String::new(),
            transitions: Default::default(),
            last_patch: None,
            patch_failing: false,
            sandbox_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            sandbox_retry_at: None,
        }
    }

    /// How many of `containers` are init containers (the spec's never change after creation).
    fn init_count(&self) -> usize {
        self.pod.spec.init_containers.len()
    }

    /// The pod's IP: the node's for a host-network pod, else its sandbox's once known.
    fn ip(&self, node_ip: &str) -> Option<String> {
        if self.pod.spec.host_network {
            Some(node_ip.to_owned()).filter(|ip| !ip.is_empty())
        } else {
            self.pod_ip.clone()
        }
    }

    /// Every init container has run to a clean exit (or there are none).
    fn initialized(&self) -> bool {
        self.containers[..self.init_count().min(self.containers.len())]
            .iter()
            .all(ContainerRecord::succeeded)
    }

    fn set_waiting(&mut self, reason: &str, message: &str) {
        for c in &mut self.containers {
            if c.id.is_none() {
                c.waiting = Some((reason.to_owned(), message.to_owned()));
            }
        }
    }
}

pub(crate) struct PodWorker {
    settings: EdgedSettings,
    meta: Arc<dyn MetaClient>,
    runtime: Arc<dyn Runtime>,
    state: watch::Sender<RuntimeState>,
    pods: BTreeMap<String, PodRecord>,
    /// Verdicts of the containers' probes.
    probe_results: probe::Results,
    /// Where probe tasks and image pulls ask for a pod to be synced now.
    wake: mpsc::Sender<String>,
    /// Image pulls in flight, by image.
    pulls: HashMap<String, images::PullJob>,
    woken: Option<mpsc::Receiver<String>>,
    /// The node as the downward API and resource defaults see it.
    node: NodeFacts,
    probe_backoff: Backoff,
    next_probe: Instant,
    /// Sandboxes a previous run left, by pod UID; `None` until listed.
    leftovers: Option<HashMap<String, Vec<SandboxInfo>>>,
    /// Leftovers no pod claimed by then are removed.
    gc_after: Instant,
    /// When the files of every pod's configmap and secret volumes are checked next.
    next_refresh: Instant,
    /// UIDs of pods torn down for good: later events for them are stale.
    removed: RemovedPods,
    /// The node's memory in bytes: burstable containers' OOM score adjustment is relative to it.
    memory_capacity: u64,
}

/// A runtime timestamp (nanoseconds since the epoch) as the API writes it; empty for the
/// runtime's "never" (0 or less), which the patch sends as `null` like the kubelet's zero time.
fn nanos_to_rfc3339(n: i64) -> String {
    match u64::try_from(n / 1_000_000_000) {
        Ok(secs) if secs > 0 => rfc3339(UNIX_EPOCH + Duration::from_secs(secs)),
        _ => String::new(),
    }
}

/// Now, in the runtime's nanoseconds.
fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

fn api_state(s: &ContainerStatus) -> ApiState {
    match s.state {
        ContainerState::Running => ApiState::Running {
            started_at: nanos_to_rfc3339(s.started_at),
        },
        ContainerState::Exited => ApiState::Terminated {
            exit_code: s.exit_code,
            reason: if s.reason.is_empty() {
                if s.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_owned()
            } else {
                s.reason.clone()
            },
            message: s.message.clone(),
            started_at: nanos_to_rfc3339(s.started_at),
            finished_at: nanos_to_rfc3339(s.finished_at),
            container_id: format!("containerd://{}", s.id),
        },
        ContainerState::Created | ContainerState::Unknown => ApiState::Waiting {
            reason: "ContainerCreating".to_owned(),
            message: String::new(),
        },
    }
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
        let settings_sync_frequency = settings.sync_frequency;
        let (wake, woken) = mpsc::channel(WAKE_CAPACITY);
        Self {
            settings,
            meta,
            runtime: Arc::from(runtime),
            probe_results: probe::Results::default(),
            wake,
            pulls: HashMap::new(),
            woken: Some(woken),
            state,
            pods: BTreeMap::new(),
            node,
            probe_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            next_probe: Instant::now(),
            leftovers: None,
            gc_after: Instant::now() + ORPHAN_GRACE,
            removed: RemovedPods::default(),
            next_refresh: Instant::now() + settings_sync_frequency,
            memory_capacity,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut events: mpsc::Receiver<PodEvent>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.settings.pod_sync_period);
        let Some(mut woken) = self.woken.take() else {
            return;
        };
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let work = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                ev = events.recv() => match ev {
                    Some(PodEvent::ObjectChanged { kind, namespace, name }) => {
                        Work::Volumes { kind, namespace, name }
                    }
                    Some(ev) => self.apply(ev).map_or(Work::Nothing, Work::Pod),
                    None => {
                        info!("pod feed closed; pod worker stops");
                        return;
                    }
                },
                Some(key) = woken.recv() => Work::Pod(key),
                _ = tick.tick() => Work::All,
            };
            let pass = async {
                match work {
                    Work::Pod(key) => {
                        if self.probe_runtime().await {
                            self.sync_pod(&key).await;
                        } else {
                            self.report_pod(&key).await;
                        }
                    }
                    Work::Volumes {
                        kind,
                        namespace,
                        name,
                    } => self.refresh_volumes(Some((kind, &namespace, &name))).await,
                    Work::All => self.sync_all().await,
                    Work::Nothing => {}
                }
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = pass => {}
            }
        }
    }

    /// Records an event; returns the key of the pod to sync now.
    fn apply(&mut self, ev: PodEvent) -> Option<String> {
        match ev {
            PodEvent::Upsert(json) => {
                let pod = match Pod::from_json(&json) {
                    Ok(p) => p,
                    Err(error) => {
                        warn!(%error, "pod ignored");
                        return None;
                    }
                };
                let key = pod.key();
                if self.removed.contains(&pod.metadata.uid) {
                    // The cloud's copy of a pod this node already finished (an update that
                    // was in flight when the pod went): starting it again would run it twice
                    // and send a second delete.
                    debug!(pod = %key, uid = %pod.metadata.uid, "event for a removed pod ignored");
                    return None;
                }
                let deleting = pod.metadata.deletion_timestamp.is_some();
                match self.pods.get_mut(&key) {
                    Some(rec) if rec.pod.metadata.uid == pod.metadata.uid => {
                        if deleting {
                            rec.desired = Desired::Gone { notify_cloud: true };
                        }
                        // Only the image of a container may change in a running pod.
                        let init = rec.init_count();
                        let apps = rec.containers.iter_mut().skip(init);
                        for (c, new) in apps.zip(&pod.spec.containers) {
                            let old = rec.pod.spec.containers.iter().find(|o| o.name == new.name);
                            if old.is_some_and(|o| o.image != new.image) {
                                info!(pod = %key, container = %c.name, image = %new.image, "image changed");
                                c.replace = true;
                            }
                        }
                        if rec.pod.spec.containers.len() == pod.spec.containers.len() {
                            rec.pod.spec.containers = pod.spec.containers;
                        }
                        rec.pod.metadata = pod.metadata;
                        rec.pod.status = pod.status;
                    }
                    Some(rec) => {
                        // Same name, new UID: the old pod goes, the new one waits for it.
                        info!(pod = %key, "pod replaced by a new uid");
                        rec.desired = Desired::Gone {
                            notify_cloud: false,
                        };
                        let old = std::mem::replace(rec, PodRecord::new(pod));
                        self.pods
                            .insert(format!("{key}#old-{}", old.pod.metadata.uid), old);
                    }
                    None => {
                        info!(pod = %key, "pod added");
                        let mut rec = PodRecord::new(pod);
                        if deleting {
                            rec.desired = Desired::Gone { notify_cloud: true };
                        }
                        self.pods.insert(key.clone(), rec);
                    }
                }
                Some(key)
            }
            PodEvent::ObjectChanged { .. } => None,
            PodEvent::Delete {
                namespace,
                name,
                uid,
            } => {
                let key = format!("{namespace}/{name}");
                let rec = self.pods.get_mut(&key)?;
                if uid.is_empty() || rec.pod.metadata.uid == uid {
                    info!(pod = %key, "pod deleted by the cloud");
                    rec.desired = Desired::Gone {
                        notify_cloud: false,
                    };
                    Some(key)
                } else {
                    None
                }
            }
        }
    }

    async fn call<T>(
        &self,
        call: &'static str,
        fut: RuntimeFuture<'_, T>,
    ) -> Result<T, RuntimeError> {
        let limit = self.settings.runtime_request_timeout;
        timeout(limit, fut)
            .await
            .unwrap_or(Err(RuntimeError::Timeout {
                call,
                timeout: limit,
            }))
    }

    /// Checks the runtime when due; true when it answers.
    async fn probe_runtime(&mut self) -> bool {
        let up = matches!(&*self.state.borrow(), RuntimeState::Up { .. });
        if up {
            return true;
        }
        if Instant::now() < self.next_probe {
            return false;
        }
        match self.call("Version", self.runtime.version()).await {
            Ok(version) => {
                info!(%version, "container runtime is up");
                self.probe_backoff.reset();
                self.state.send_replace(RuntimeState::Up { version });
                true
            }
            Err(error) => {
                self.runtime_down(&error);
                false
            }
        }
    }

    fn runtime_down(&mut self, error: &RuntimeError) {
        let reason = error.to_string();
        let changed = self.state.send_if_modified(|s| {
            let next = RuntimeState::Down {
                reason: reason.clone(),
            };
            if *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
        if changed {
            warn!(%error, "container runtime is down; pods wait for it");
        }
        self.next_probe = Instant::now() + self.probe_backoff.next_delay();
    }

    async fn sync_all(&mut self) {
        let runtime_up = self.probe_runtime().await;
        if runtime_up {
            self.check_sandboxes().await;
        }
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        for key in keys {
            if runtime_up && matches!(&*self.state.borrow(), RuntimeState::Up { .. }) {
                self.sync_pod(&key).await;
            } else {
                self.report_pod(&key).await;
            }
        }
        if runtime_up && Instant::now() >= self.gc_after {
            self.collect_orphans().await;
        }
        if Instant::now() >= self.next_refresh {
            self.refresh_volumes(None).await;
        }
    }

    /// Marks every not-yet-created container with the runtime's failure, and reports.
    async fn report_pod(&mut self, key: &str) {
        let reason = match &*self.state.borrow() {
            RuntimeState::Down { reason } => reason.clone(),
            _ => "container runtime not probed yet".to_owned(),
        };
        if let Some(rec) = self.pods.get_mut(key)
            && rec.desired == Desired::Running
        {
            rec.set_waiting("RuntimeUnavailable", &reason);
        }
        self.send_status(key).await;
    }

    async fn sync_pod(&mut self, key: &str) {
        let Some(mut rec) = self.pods.remove(key) else {
            return;
        };
        let keep = match rec.desired {
            Desired::Running => {
                self.drive(&mut rec).await;
                true
            }
            Desired::Gone { notify_cloud } => !self.teardown(&mut rec, notify_cloud).await,
        };
        let runtime_lost = matches!(&*self.state.borrow(), RuntimeState::Down { .. });
        if keep {
            self.pods.insert(key.to_owned(), rec);
            if runtime_lost {
                self.report_pod(key).await;
            } else {
                self.send_status(key).await;
            }
        }
    }

    /// Handles a runtime error of one call: marks the runtime down when it is unreachable.
    fn failed(&mut self, error: &RuntimeError) {
        if error.is_unavailable() {
            self.runtime_down(error);
        }
    }
}

mod images;
mod lifecycle;
mod probes;
mod recovery;
mod refresh;
mod removed;
mod report;
#[cfg(test)]
mod tests;
