//! The pods of the node, in the kubelet's pod-workers shape: a dispatcher
//! ([`PodWorker`], `dispatch.rs`) turns metamanager's pod events into the latest desired state
//! of each pod, kept in that pod's one-slot mailbox, and each pod has its own task (`task.rs`)
//! that owns the pod's record, drives the runtime towards the mailbox's state and reports the
//! status back as `podpatch` strings. A pod whose sync is slow (a 30 s graceful stop, a hung
//! runtime call) delays no other pod and no other pod's report.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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
pub(crate) use dispatch::PodWorker;
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
/// How long a pod waits for another pod's runtime check before reporting the runtime down.
const PROBE_WAIT: Duration = Duration::from_secs(5);
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
    /// When the sandbox was made or adopted: a listing asked for earlier may lack it.
    sandbox_since: Option<Instant>,
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
            sandbox_since: None,
        }
    }

    /// Takes the cloud's newer copy of the same pod (same UID). Only a container's image may
    /// change in a running pod; that container is replaced.
    fn update(&mut self, pod: Pod) {
        let key = pod.key();
        let init = self.init_count();
        let apps = self.containers.iter_mut().skip(init);
        for (c, new) in apps.zip(&pod.spec.containers) {
            let old = self.pod.spec.containers.iter().find(|o| o.name == new.name);
            if old.is_some_and(|o| o.image != new.image) {
                info!(pod = %key, container = %c.name, image = %new.image, "image changed");
                c.replace = true;
            }
        }
        if self.pod.spec.containers.len() == pod.spec.containers.len() {
            self.pod.spec.containers = pod.spec.containers;
        }
        self.pod.metadata = pod.metadata;
        self.pod.status = pod.status;
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

/// What every pod's task shares: the node, the runtime and its health, the cloud, and the
/// node-wide bookkeeping (image pulls, sandboxes of a previous run, removed pods). Locks here
/// are held for map look-ups only, never across a runtime or cloud call, except the two
/// listing caches, which make concurrent pods wait for one listing instead of each making one.
struct Shared {
    settings: EdgedSettings,
    meta: Arc<dyn MetaClient>,
    runtime: Arc<dyn Runtime>,
    state: watch::Sender<RuntimeState>,
    /// Verdicts of the containers' probes.
    probe_results: probe::Results,
    /// Where probe tasks and image pulls ask for a pod to be synced now.
    wake: mpsc::Sender<String>,
    /// Image pulls in flight, by image.
    pulls: Mutex<HashMap<String, images::PullJob>>,
    /// The node as the downward API and resource defaults see it.
    node: NodeFacts,
    /// When the runtime, while down, is asked again; held while it is asked.
    runtime_probe: tokio::sync::Mutex<RuntimeProbe>,
    /// Sandboxes a previous run left, by pod UID; `None` until listed.
    leftovers: tokio::sync::Mutex<Option<HashMap<String, Vec<SandboxInfo>>>>,
    /// The runtime's sandboxes as last listed, shared by the pods' liveness checks.
    relist: tokio::sync::Mutex<Option<Arc<Relist>>>,
    /// UIDs of pods torn down for good: later events for them are stale.
    removed: Mutex<RemovedPods>,
    /// The node's memory in bytes: burstable containers' OOM score adjustment is relative to it.
    memory_capacity: u64,
}

/// The back-off of the runtime health check while the runtime is down.
struct RuntimeProbe {
    backoff: Backoff,
    next: Instant,
}

/// One listing of the runtime's sandboxes, and when it was asked for: a sandbox made later
/// may be missing from it without being dead.
struct Relist {
    at: Instant,
    sandboxes: Vec<SandboxInfo>,
}

/// The guarded value, also after a panic elsewhere left the lock poisoned (every critical
/// section here leaves the value consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

impl Shared {
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

    /// Checks the runtime when due; true when it answers. While it is down one caller asks
    /// it at a time, with a back-off; callers meanwhile wait for that answer rather than
    /// report the runtime missing while it is being asked.
    async fn probe_runtime(&self) -> bool {
        let up = || matches!(&*self.state.borrow(), RuntimeState::Up { .. });
        if up() {
            return true;
        }
        // A runtime that hangs keeps its checker waiting the whole request timeout; the others
        // wait a little, then report the runtime unavailable.
        let Ok(mut probe) = timeout(PROBE_WAIT, self.runtime_probe.lock()).await else {
            return false;
        };
        if up() {
            return true;
        }
        if Instant::now() < probe.next {
            return false;
        }
        match self.call("Version", self.runtime.version()).await {
            Ok(version) => {
                info!(%version, "container runtime is up");
                probe.backoff.reset();
                self.state.send_replace(RuntimeState::Up { version });
                true
            }
            Err(error) => {
                self.runtime_down(&error);
                probe.next = Instant::now() + probe.backoff.next_delay();
                false
            }
        }
    }

    /// Records that the runtime is unreachable (logged once per outage); pods then wait for
    /// the next successful check.
    fn runtime_down(&self, error: &RuntimeError) {
        let reason = error.to_string();
        let changed = self.state.send_if_modified(|s| {
            if matches!(s, RuntimeState::Down { .. }) {
                false
            } else {
                *s = RuntimeState::Down {
                    reason: reason.clone(),
                };
                true
            }
        });
        if changed {
            warn!(%error, "container runtime is down; pods wait for it");
        }
    }

    /// Marks every not-yet-created container with the runtime's failure, and reports.
    async fn report_pod(&self, rec: &mut PodRecord) {
        let reason = match &*self.state.borrow() {
            RuntimeState::Down { reason } => reason.clone(),
            _ => "container runtime not probed yet".to_owned(),
        };
        if rec.desired == Desired::Running {
            rec.set_waiting("RuntimeUnavailable", &reason);
        }
        self.send_status(rec).await;
    }

    /// Drives the pod one step towards what is desired and reports it; true once it is torn
    /// down for good.
    async fn sync_pod(&self, rec: &mut PodRecord) -> bool {
        if !self.probe_runtime().await {
            self.report_pod(rec).await;
            return false;
        }
        match rec.desired {
            Desired::Running => {
                self.check_sandbox(rec).await;
                self.drive(rec).await;
            }
            Desired::Gone { notify_cloud } => {
                if self.teardown(rec, notify_cloud).await {
                    return true;
                }
            }
        }
        if matches!(&*self.state.borrow(), RuntimeState::Down { .. }) {
            self.report_pod(rec).await;
        } else {
            self.send_status(rec).await;
        }
        false
    }

    /// Handles a runtime error of one call: marks the runtime down when it is unreachable.
    fn failed(&self, error: &RuntimeError) {
        if error.is_unavailable() {
            self.runtime_down(error);
        }
    }
}

mod dispatch;
mod images;
mod lifecycle;
mod probes;
mod recovery;
mod refresh;
mod removed;
mod report;
mod task;
#[cfg(test)]
mod tests;
