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
use crate::env::{Objects, container_env, expand_refs};
use crate::meta::{MetaClient, PodEvent};
use crate::node_status::META_CALL_TIMEOUT;
use crate::pod::{Pod, PullPolicy, RestartPolicy};
use crate::pod_status::{
    ApiState, CONDITIONS, ContainerView, PodView, condition_states, status_patch,
};
use crate::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, Runtime, RuntimeError, RuntimeFuture,
    RuntimeState, SandboxConfig, SandboxInfo,
};
use crate::settings::EdgedSettings;
use crate::time::rfc3339;
use crate::volumes;

/// Kubelet's crash-loop backoff: 10 s doubling to 5 min.
const CRASH_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(300);
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
    restart_at: Option<Instant>,
    /// The spec changed (image update): replace the running container.
    replace: bool,
}

impl ContainerRecord {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            id: None,
            attempt: 0,
            restart_count: 0,
            status: None,
            last_terminated: None,
            waiting: None,
            backoff: Backoff::new(CRASH_BACKOFF_INITIAL, CRASH_BACKOFF_MAX),
            restart_at: None,
            replace: false,
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
    volumes: HashMap<String, PathBuf>,
    containers: Vec<ContainerRecord>,
    start_time: String,
    transitions: [(Option<bool>, String); 4],
    last_patch: Option<String>,
    /// Backoff between failed sandbox creations.
    sandbox_backoff: Backoff,
    sandbox_retry_at: Option<Instant>,
}

impl PodRecord {
    fn new(pod: Pod) -> Self {
        let containers = pod
            .spec
            .containers
            .iter()
            .map(|c| ContainerRecord::new(&c.name))
            .collect();
        Self {
            pod,
            desired: Desired::Running,
            sandbox_id: None,
            sandbox_attempt: 0,
            volumes: HashMap::new(),
            containers,
            start_time: String::new(),
            transitions: Default::default(),
            last_patch: None,
            sandbox_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            sandbox_retry_at: None,
        }
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
    runtime: Box<dyn Runtime>,
    state: watch::Sender<RuntimeState>,
    pods: BTreeMap<String, PodRecord>,
    host_ip: String,
    probe_backoff: Backoff,
    next_probe: Instant,
    /// Sandboxes a previous run left, by pod UID; `None` until listed.
    leftovers: Option<HashMap<String, Vec<SandboxInfo>>>,
    /// Leftovers no pod claimed by then are removed.
    gc_after: Instant,
}

fn nanos_to_rfc3339(n: i64) -> String {
    let secs = u64::try_from(n / 1_000_000_000).unwrap_or(0);
    rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
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
        host_ip: String,
    ) -> Self {
        Self {
            settings,
            meta,
            runtime,
            state,
            pods: BTreeMap::new(),
            host_ip,
            probe_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            next_probe: Instant::now(),
            leftovers: None,
            gc_after: Instant::now() + ORPHAN_GRACE,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut events: mpsc::Receiver<PodEvent>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.settings.pod_sync_period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let key = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                ev = events.recv() => match ev {
                    Some(ev) => self.apply(ev),
                    None => {
                        info!("pod feed closed; pod worker stops");
                        return;
                    }
                },
                _ = tick.tick() => None,
            };
            let pass = async {
                match key {
                    Some(key) => {
                        if self.probe_runtime().await {
                            self.sync_pod(&key).await;
                        } else {
                            self.report_pod(&key).await;
                        }
                    }
                    None => self.sync_all().await,
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
                let deleting = pod.metadata.deletion_timestamp.is_some();
                match self.pods.get_mut(&key) {
                    Some(rec) if rec.pod.metadata.uid == pod.metadata.uid => {
                        if deleting {
                            rec.desired = Desired::Gone { notify_cloud: true };
                        }
                        // Only the image of a container may change in a running pod.
                        for (c, new) in rec.containers.iter_mut().zip(&pod.spec.containers) {
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
    }

    /// Pods whose sandbox is gone or no longer ready get a new one (their containers are
    /// recreated, counting a restart), as kubelet does.
    async fn check_sandboxes(&mut self) {
        let live = match self
            .call("ListPodSandbox", self.runtime.list_sandboxes())
            .await
        {
            Ok(list) => list,
            Err(error) => {
                self.failed(&error);
                return;
            }
        };
        let dead: Vec<(String, String)> = self
            .pods
            .iter()
            .filter(|(_, rec)| rec.desired == Desired::Running)
            .filter_map(|(key, rec)| {
                let id = rec.sandbox_id.as_ref()?;
                let alive = live.iter().any(|s| &s.id == id && s.ready);
                (!alive).then(|| (key.clone(), id.clone()))
            })
            .collect();
        for (key, id) in dead {
            warn!(pod = %key, sandbox = %id, "sandbox is gone or not ready; recreating the pod");
            let Some(mut rec) = self.pods.remove(&key) else {
                continue;
            };
            for c in &mut rec.containers {
                if let Some(cid) = c.id.take() {
                    let _ = self
                        .call("RemoveContainer", self.runtime.remove_container(&cid))
                        .await;
                    c.last_terminated = c.status.take().map(|mut s| {
                        if s.state != ContainerState::Exited {
                            s.state = ContainerState::Exited;
                            s.reason = "SandboxGone".to_owned();
                        }
                        api_state(&s)
                    });
                    c.restart_count += 1;
                    c.attempt += 1;
                }
            }
            self.remove_sandbox(&id).await;
            rec.sandbox_id = None;
            self.pods.insert(key, rec);
        }
    }

    /// Lists sandboxes of a previous run once, so pods can adopt them.
    async fn load_leftovers(&mut self) {
        if self.leftovers.is_some() {
            return;
        }
        match self
            .call("ListPodSandbox", self.runtime.list_sandboxes())
            .await
        {
            Ok(list) => {
                let mut by_uid: HashMap<String, Vec<SandboxInfo>> = HashMap::new();
                for s in list {
                    by_uid.entry(s.uid.clone()).or_default().push(s);
                }
                if !by_uid.is_empty() {
                    info!(pods = by_uid.len(), "found sandboxes of a previous run");
                }
                self.leftovers = Some(by_uid);
            }
            Err(error) => self.failed(&error),
        }
    }

    /// Removes leftover sandboxes that no pod claimed within the grace period.
    async fn collect_orphans(&mut self) {
        let Some(leftovers) = self.leftovers.as_mut() else {
            return;
        };
        if leftovers.is_empty() {
            return;
        }
        let orphans: Vec<(String, Vec<SandboxInfo>)> = leftovers.drain().collect();
        for (uid, sandboxes) in orphans {
            info!(%uid, "removing sandboxes of a pod this node no longer runs");
            for s in sandboxes {
                self.remove_sandbox(&s.id).await;
            }
            if let Some(parent) = &self.settings.cgroup_parent {
                crate::cgroup::remove_pod_cgroups(Path::new(CGROUP_ROOT), parent, &uid);
            }
        }
    }

    /// Stops and removes a sandbox, best effort.
    async fn remove_sandbox(&mut self, id: &str) {
        let stopped = self
            .call("StopPodSandbox", self.runtime.stop_sandbox(id))
            .await;
        let result = match stopped {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {
                self.call("RemovePodSandbox", self.runtime.remove_sandbox(id))
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => {
                warn!(sandbox = %id, %error, "leftover sandbox not removed");
                self.failed(&error);
            }
        }
    }

    /// Takes over a sandbox (and its newest containers) a previous run left for this pod.
    async fn adopt(&mut self, rec: &mut PodRecord) {
        let uid = rec.pod.metadata.uid.clone();
        let Some(mut found) = self.leftovers.as_mut().and_then(|l| l.remove(&uid)) else {
            return;
        };
        let ready = found.iter().position(|s| s.ready);
        let adopted = ready.map(|i| found.swap_remove(i));
        for stale in found {
            self.remove_sandbox(&stale.id).await;
        }
        let Some(sandbox) = adopted else { return };
        let containers = match self
            .call("ListContainers", self.runtime.list_containers(&sandbox.id))
            .await
        {
            Ok(c) => c,
            Err(error) => {
                self.failed(&error);
                self.remove_sandbox(&sandbox.id).await;
                return;
            }
        };
        for c in &mut rec.containers {
            let newest = containers
                .iter()
                .filter(|info| info.name == c.name)
                .max_by_key(|info| info.attempt);
            if let Some(info) = newest {
                c.id = Some(info.id.clone());
                c.attempt = info.attempt;
                c.restart_count = info.attempt;
            }
        }
        info!(pod = %rec.pod.key(), sandbox = %sandbox.id, "adopted the running sandbox");
        rec.sandbox_id = Some(sandbox.id);
        rec.sandbox_attempt = 1;
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

    fn sandbox_config(&self, rec: &PodRecord) -> SandboxConfig {
        let m = &rec.pod.metadata;
        SandboxConfig {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            attempt: rec.sandbox_attempt,
            host_network: rec.pod.spec.host_network,
            // Host-network pods keep the node's hostname (runc refuses to set one there).
            hostname: if rec.pod.spec.host_network {
                String::new()
            } else {
                rec.pod
                    .spec
                    .hostname
                    .clone()
                    .unwrap_or_else(|| m.name.clone())
            },
            log_directory: self
                .settings
                .pod_log_directory
                .join(format!("{}_{}_{}", m.namespace, m.name, m.uid)),
            cgroup_parent: self
                .settings
                .cgroup_parent
                .as_ref()
                .map(|p| format!("{}/pod{}", p.trim_end_matches('/'), m.uid)),
            labels: m.labels.clone(),
        }
    }

    /// Handles a runtime error of one call: marks the runtime down when it is unreachable.
    fn failed(&mut self, error: &RuntimeError) {
        if error.is_unavailable() {
            self.runtime_down(error);
        }
    }

    async fn drive(&mut self, rec: &mut PodRecord) {
        let key = rec.pod.key();
        if rec.start_time.is_empty() {
            rec.start_time = rfc3339(SystemTime::now());
        }
        let sandbox = self.sandbox_config(rec);
        if rec.sandbox_id.is_none() {
            self.load_leftovers().await;
            if self.leftovers.is_none() {
                rec.set_waiting("ContainerCreating", "listing existing sandboxes failed");
                return;
            }
            self.adopt(rec).await;
        }
        if rec.sandbox_id.is_none() || rec.volumes.is_empty() && !rec.pod.spec.volumes.is_empty() {
            let mut objects = Objects::new(self.meta.as_ref(), &rec.pod.metadata.namespace);
            let prepared =
                volumes::prepare(&self.settings.root_directory, &rec.pod, &mut objects).await;
            match prepared {
                Ok(v) => rec.volumes = v,
                Err(error) => {
                    warn!(pod = %key, %error, "volumes not ready");
                    rec.set_waiting("CreateContainerConfigError", &error.to_string());
                    return;
                }
            }
        }
        if rec.sandbox_id.is_none() {
            if rec.sandbox_retry_at.is_some_and(|at| Instant::now() < at) {
                return;
            }
            match self
                .call("RunPodSandbox", self.runtime.run_sandbox(&sandbox))
                .await
            {
                Ok(id) => {
                    info!(pod = %key, sandbox = %id, "sandbox started");
                    rec.sandbox_id = Some(id);
                    rec.sandbox_attempt += 1;
                    rec.sandbox_backoff.reset();
                    rec.sandbox_retry_at = None;
                }
                Err(error) => {
                    warn!(pod = %key, %error, "sandbox not started");
                    rec.sandbox_retry_at = Some(Instant::now() + rec.sandbox_backoff.next_delay());
                    rec.set_waiting("ContainerCreating", &error.to_string());
                    self.failed(&error);
                    return;
                }
            }
        }
        let Some(sandbox_id) = rec.sandbox_id.clone() else {
            return;
        };
        for idx in 0..rec.containers.len() {
            self.drive_container(rec, idx, &sandbox_id, &sandbox).await;
            if matches!(&*self.state.borrow(), RuntimeState::Down { .. }) {
                return;
            }
        }
    }

    async fn drive_container(
        &mut self,
        rec: &mut PodRecord,
        idx: usize,
        sandbox_id: &str,
        sandbox: &SandboxConfig,
    ) {
        let key = rec.pod.key();
        let policy = rec.pod.spec.restart_policy.clone();
        let (Some(spec), Some(c)) = (
            rec.pod.spec.containers.get(idx).cloned(),
            rec.containers.get_mut(idx),
        ) else {
            return;
        };
        if c.replace
            && let Some(id) = c.id.clone()
        {
            let grace = rec
                .pod
                .spec
                .termination_grace_period_seconds
                .map_or(DEFAULT_GRACE, Duration::from_secs);
            let stop = self.runtime.stop_container(&id, grace);
            let stopped = timeout(grace + self.settings.runtime_request_timeout, stop)
                .await
                .unwrap_or(Err(RuntimeError::Timeout {
                    call: "StopContainer",
                    timeout: grace,
                }));
            let removed = match stopped {
                Ok(()) | Err(RuntimeError::NotFound { .. }) => {
                    self.call("RemoveContainer", self.runtime.remove_container(&id))
                        .await
                }
                Err(e) => Err(e),
            };
            match removed {
                Ok(()) | Err(RuntimeError::NotFound { .. }) => {
                    c.last_terminated = c.status.take().map(|mut st| {
                        st.state = ContainerState::Exited;
                        api_state(&st)
                    });
                    c.id = None;
                    c.restart_count += 1;
                    c.attempt += 1;
                    c.restart_at = None;
                }
                Err(error) => {
                    warn!(pod = %key, container = %c.name, %error, "replacing the container failed");
                    self.failed(&error);
                    return;
                }
            }
        }
        c.replace = false;
        if let Some(id) = c.id.clone() {
            let status = match self
                .call("ContainerStatus", self.runtime.container_status(&id))
                .await
            {
                Ok(s) => s,
                Err(RuntimeError::NotFound { .. }) => {
                    warn!(pod = %key, container = %c.name, "container vanished; recreating");
                    c.id = None;
                    c.status = None;
                    c.restart_count += 1;
                    return;
                }
                Err(error) => {
                    self.failed(&error);
                    return;
                }
            };
            c.status = Some(status.clone());
            match status.state {
                ContainerState::Running => {
                    c.waiting = None;
                    return;
                }
                ContainerState::Created => {
                    if let Err(error) = self
                        .call("StartContainer", self.runtime.start_container(&id))
                        .await
                    {
                        warn!(pod = %key, container = %c.name, %error, "start failed");
                        self.failed(&error);
                    }
                    return;
                }
                ContainerState::Exited | ContainerState::Unknown => {
                    let restart = match policy {
                        RestartPolicy::Always => true,
                        RestartPolicy::OnFailure => status.exit_code != 0,
                        RestartPolicy::Never => false,
                    };
                    if !restart {
                        return;
                    }
                    let now = Instant::now();
                    let due = *c
                        .restart_at
                        .get_or_insert_with(|| now + c.backoff.next_delay());
                    if now < due {
                        let wait = due - now;
                        c.waiting = Some((
                            "CrashLoopBackOff".to_owned(),
                            format!(
                                "back-off {}s restarting failed container={} pod={}",
                                wait.as_secs(),
                                c.name,
                                key
                            ),
                        ));
                        return;
                    }
                    if let Err(error) = self
                        .call("RemoveContainer", self.runtime.remove_container(&id))
                        .await
                        && !matches!(error, RuntimeError::NotFound { .. })
                    {
                        warn!(pod = %key, container = %c.name, %error, "remove before restart failed");
                        self.failed(&error);
                        return;
                    }
                    c.last_terminated = Some(api_state(&status));
                    c.id = None;
                    c.status = None;
                    c.restart_at = None;
                    c.restart_count += 1;
                    c.attempt += 1;
                    info!(pod = %key, container = %c.name, restarts = c.restart_count, "restarting container");
                }
            }
        }

        // Create and start.
        let present = match self
            .call("ImageStatus", self.runtime.image_status(&spec.image))
            .await
        {
            Ok(p) => p,
            Err(error) => {
                c.waiting = Some(("ErrImagePull".to_owned(), error.to_string()));
                self.failed(&error);
                return;
            }
        };
        let pull = match (spec.pull_policy(), &present) {
            (PullPolicy::Never, None) => {
                c.waiting = Some((
                    "ErrImageNeverPull".to_owned(),
                    format!(
                        "image {} is not present and the pull policy is Never",
                        spec.image
                    ),
                ));
                return;
            }
            (PullPolicy::Always, _) | (PullPolicy::IfNotPresent, None) => true,
            _ => false,
        };
        if pull {
            info!(pod = %key, image = %spec.image, "pulling image");
            if let Err(error) = self
                .call("PullImage", self.runtime.pull_image(&spec.image))
                .await
            {
                if present.is_none() {
                    warn!(pod = %key, image = %spec.image, %error, "image pull failed");
                    c.waiting = Some(("ErrImagePull".to_owned(), error.to_string()));
                    self.failed(&error);
                    return;
                }
                warn!(pod = %key, image = %spec.image, %error, "pull failed; using the local image");
            }
        }
        let mut objects = Objects::new(self.meta.as_ref(), &rec.pod.metadata.namespace);
        let env = match container_env(&rec.pod, &spec, &self.host_ip, &mut objects).await {
            Ok(env) => env,
            Err(error) => {
                warn!(pod = %key, container = %c.name, %error, "container config not ready");
                c.waiting = Some(("CreateContainerConfigError".to_owned(), error.to_string()));
                return;
            }
        };
        let config = ContainerConfig {
            name: spec.name.clone(),
            image: spec.image.clone(),
            command: spec.command.iter().map(|a| expand_refs(a, &env)).collect(),
            args: spec.args.iter().map(|a| expand_refs(a, &env)).collect(),
            env,
            mounts: volumes::mounts(&rec.pod, &spec, &rec.volumes),
            working_dir: spec.working_dir.clone(),
            log_path: format!("{}/{}.log", spec.name, c.attempt),
            attempt: c.attempt,
        };
        let id = match self
            .call(
                "CreateContainer",
                self.runtime.create_container(sandbox_id, sandbox, &config),
            )
            .await
        {
            Ok(id) => id,
            Err(error) => {
                warn!(pod = %key, container = %c.name, %error, "create failed");
                c.waiting = Some(("CreateContainerError".to_owned(), error.to_string()));
                self.failed(&error);
                return;
            }
        };
        c.id = Some(id.clone());
        c.waiting = None;
        match self
            .call("StartContainer", self.runtime.start_container(&id))
            .await
        {
            Ok(()) => info!(pod = %key, container = %c.name, "container started"),
            Err(error) => {
                warn!(pod = %key, container = %c.name, %error, "start failed");
                self.failed(&error);
            }
        }
        if let Ok(s) = self
            .call("ContainerStatus", self.runtime.container_status(&id))
            .await
        {
            c.status = Some(s);
        }
    }

    /// Stops and removes everything of the pod; true when done.
    async fn teardown(&mut self, rec: &mut PodRecord, notify_cloud: bool) -> bool {
        let key = rec.pod.key();
        let grace = rec
            .pod
            .spec
            .termination_grace_period_seconds
            .map_or(DEFAULT_GRACE, Duration::from_secs);
        for c in &mut rec.containers {
            let Some(id) = c.id.clone() else { continue };
            let stop = self.runtime.stop_container(&id, grace);
            let stopped = timeout(grace + self.settings.runtime_request_timeout, stop)
                .await
                .unwrap_or(Err(RuntimeError::Timeout {
                    call: "StopContainer",
                    timeout: grace,
                }));
            let removed = match stopped {
                Ok(()) | Err(RuntimeError::NotFound { .. }) => {
                    self.call("RemoveContainer", self.runtime.remove_container(&id))
                        .await
                }
                Err(e) => Err(e),
            };
            match removed {
                Ok(()) | Err(RuntimeError::NotFound { .. }) => c.id = None,
                Err(error) => {
                    warn!(pod = %key, container = %c.name, %error, "container not removed; retrying");
                    self.failed(&error);
                    return false;
                }
            }
        }
        if let Some(id) = rec.sandbox_id.clone() {
            let stopped = self
                .call("StopPodSandbox", self.runtime.stop_sandbox(&id))
                .await;
            let removed = match stopped {
                Ok(()) | Err(RuntimeError::NotFound { .. }) => {
                    self.call("RemovePodSandbox", self.runtime.remove_sandbox(&id))
                        .await
                }
                Err(e) => Err(e),
            };
            match removed {
                Ok(()) | Err(RuntimeError::NotFound { .. }) => rec.sandbox_id = None,
                Err(error) => {
                    warn!(pod = %key, %error, "sandbox not removed; retrying");
                    self.failed(&error);
                    return false;
                }
            }
        }
        volumes::cleanup(&self.settings.root_directory, &rec.pod.metadata.uid).await;
        if let Some(parent) = &self.settings.cgroup_parent {
            crate::cgroup::remove_pod_cgroups(
                Path::new(CGROUP_ROOT),
                parent,
                &rec.pod.metadata.uid,
            );
        }
        if notify_cloud {
            let m = &rec.pod.metadata;
            let sent = timeout(
                META_CALL_TIMEOUT,
                self.meta.delete_pod(&m.namespace, &m.name, &m.uid),
            )
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    warn!(pod = %key, %error, "pod delete not confirmed; retrying");
                    return false;
                }
                Err(_) => {
                    warn!(pod = %key, "pod delete timed out; retrying");
                    return false;
                }
            }
        }
        info!(pod = %key, "pod removed");
        true
    }

    fn view(&self, rec: &PodRecord) -> PodView {
        let containers = rec
            .pod
            .spec
            .containers
            .iter()
            .zip(&rec.containers)
            .map(|(spec, c)| {
                let state = match (&c.waiting, &c.status) {
                    (Some((reason, message)), _) => ApiState::Waiting {
                        reason: reason.clone(),
                        message: message.clone(),
                    },
                    (None, Some(s)) => api_state(s),
                    (None, None) => ApiState::Waiting {
                        reason: "ContainerCreating".to_owned(),
                        message: String::new(),
                    },
                };
                let (image, image_id) = match &c.status {
                    Some(s) => (
                        if s.image.is_empty() {
                            spec.image.clone()
                        } else {
                            s.image.clone()
                        },
                        s.image_ref.clone(),
                    ),
                    None => (spec.image.clone(), String::new()),
                };
                ContainerView {
                    name: c.name.clone(),
                    image,
                    image_id,
                    container_id: c
                        .id
                        .as_ref()
                        .map(|id| format!("containerd://{id}"))
                        .unwrap_or_default(),
                    state,
                    last_state: c.last_terminated.clone(),
                    restart_count: c.restart_count,
                }
            })
            .collect();
        let pod_ip = if rec.pod.spec.host_network {
            self.host_ip.clone()
        } else {
            String::new()
        };
        PodView {
            uid: rec.pod.metadata.uid.clone(),
            restart_policy: rec.pod.spec.restart_policy.clone(),
            sandbox_ready: rec.sandbox_id.is_some(),
            host_ip: self.host_ip.clone(),
            pod_ip,
            start_time: rec.start_time.clone(),
            containers,
        }
    }

    /// Sends the pod's status when it changed since the last successful patch.
    async fn send_status(&mut self, key: &str) {
        let Some(rec) = self.pods.get(key) else {
            return;
        };
        if rec.desired != Desired::Running {
            return;
        }
        let view = self.view(rec);
        let states = condition_states(&view);
        let now = rfc3339(SystemTime::now());
        let Some(rec) = self.pods.get_mut(key) else {
            return;
        };
        for (slot, (ok, _, _)) in rec.transitions.iter_mut().zip(states.iter()) {
            if slot.0 != Some(*ok) {
                *slot = (Some(*ok), now.clone());
            }
        }
        let times: [String; 4] = std::array::from_fn(|i| {
            rec.transitions
                .get(i)
                .map(|t| t.1.clone())
                .unwrap_or_default()
        });
        debug_assert_eq!(CONDITIONS.len(), times.len());
        let patch = status_patch(&view, &times);
        if rec.last_patch.as_deref() == Some(patch.as_str()) {
            return;
        }
        let (namespace, name) = (
            rec.pod.metadata.namespace.clone(),
            rec.pod.metadata.name.clone(),
        );
        let sent = timeout(
            META_CALL_TIMEOUT,
            self.meta.patch_pod_status(&namespace, &name, patch.clone()),
        )
        .await;
        match sent {
            Ok(Ok(())) => {
                debug!(pod = %key, "pod status patched");
                if let Some(rec) = self.pods.get_mut(key) {
                    rec.last_patch = Some(patch);
                }
            }
            Ok(Err(error)) => warn!(pod = %key, %error, "pod status patch failed; retrying"),
            Err(_) => warn!(pod = %key, "pod status patch timed out; retrying"),
        }
    }
}

#[cfg(test)]
mod tests;
