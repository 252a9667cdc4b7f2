//! Recovery: sandboxes a previous run left (adopt or collect) and sandboxes that died.

use super::*;

impl Shared {
    /// The runtime's sandboxes, listed at most once per sync period for all pods.
    pub(super) async fn relist(&self) -> Option<Arc<Relist>> {
        let mut cached = self.relist.lock().await;
        if let Some(list) = cached.as_ref()
            && list.at.elapsed() < self.settings.pod_sync_period
        {
            return Some(list.clone());
        }
        let at = Instant::now();
        match self
            .call("ListPodSandbox", self.runtime.list_sandboxes())
            .await
        {
            Ok(sandboxes) => Some(cached.insert(Arc::new(Relist { at, sandboxes })).clone()),
            Err(error) => {
                self.failed(&error);
                None
            }
        }
    }

    /// A pod whose sandbox is gone or no longer ready gets a new one (its containers are
    /// recreated, counting a restart), as the kubelet does.
    pub(super) async fn check_sandbox(&self, rec: &mut PodRecord) {
        let Some(id) = rec.sandbox_id.clone() else {
            return;
        };
        let Some(list) = self.relist().await else {
            return;
        };
        if rec.sandbox_since.is_none_or(|since| since >= list.at)
            || list.sandboxes.iter().any(|s| s.id == id && s.ready)
        {
            return;
        }
        warn!(pod = %rec.pod.key(), sandbox = %id, "sandbox is gone or not ready; recreating the pod");
        for c in &mut rec.containers {
            if let Some(cid) = c.id.take() {
                let _ = self
                    .call("RemoveContainer", self.runtime.remove_container(&cid))
                    .await;
                c.last_terminated = c.status.take().map(|mut s| {
                    if s.state != ContainerState::Exited {
                        // It was running when last seen; it ended no later than now.
                        s.state = ContainerState::Exited;
                        s.reason = "SandboxGone".to_owned();
                        if s.finished_at <= 0 {
                            s.finished_at = now_nanos();
                        }
                    }
                    api_state(&s)
                });
                c.restart_count += 1;
                c.attempt += 1;
            }
        }
        self.remove_sandbox(&id).await;
        rec.sandbox_id = None;
        rec.sandbox_since = None;
        rec.pod_ip = None;
    }

    /// The sandboxes a previous run left, listed once; false when they could not be listed.
    /// Runs with the lock held, so no two pods list and nothing is collected meanwhile.
    async fn leftovers_listed(
        &self,
        leftovers: &mut Option<HashMap<String, Vec<SandboxInfo>>>,
    ) -> bool {
        if leftovers.is_some() {
            return true;
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
                *leftovers = Some(by_uid);
                true
            }
            Err(error) => {
                self.failed(&error);
                false
            }
        }
    }

    /// Removes leftover sandboxes that no pod claimed within the grace period; true once
    /// done.
    pub(super) async fn collect_orphans(&self) -> bool {
        let orphans: Vec<(String, Vec<SandboxInfo>)> = {
            let mut leftovers = self.leftovers.lock().await;
            if !self.leftovers_listed(&mut leftovers).await {
                return false;
            }
            leftovers.iter_mut().flat_map(|l| l.drain()).collect()
        };
        for (uid, sandboxes) in orphans {
            let (ours, others): (Vec<SandboxInfo>, Vec<SandboxInfo>) =
                sandboxes.into_iter().partition(|s| s.managed);
            if !others.is_empty() {
                // Another agent's: not ours to remove (it may share this runtime).
                info!(%uid, sandboxes = others.len(), "leaving sandboxes another agent made for a pod this node does not run");
            }
            if ours.is_empty() {
                continue;
            }
            info!(%uid, "removing sandboxes of a pod this node no longer runs");
            for s in ours {
                self.remove_sandbox(&s.id).await;
            }
            self.settings.cgroups.remove_pod(&uid);
        }
        true
    }

    /// Stops and removes a sandbox, best effort.
    pub(super) async fn remove_sandbox(&self, id: &str) {
        if let Err(error) = self.stop_and_remove_sandbox(id).await {
            warn!(sandbox = %id, %error, "leftover sandbox not removed");
            self.failed(&error);
        }
    }

    /// Takes over a sandbox (and its newest containers) a previous run left for this pod;
    /// false when the runtime's sandboxes could not be listed.
    pub(super) async fn adopt(&self, rec: &mut PodRecord) -> bool {
        let uid = rec.pod.metadata.uid.clone();
        let found = {
            let mut leftovers = self.leftovers.lock().await;
            if !self.leftovers_listed(&mut leftovers).await {
                return false;
            }
            leftovers.as_mut().and_then(|l| l.remove(&uid))
        };
        let Some(mut found) = found else {
            return true;
        };
        let ready = found.iter().position(|s| s.ready);
        let adopted = ready.map(|i| found.swap_remove(i));
        for stale in found {
            self.remove_sandbox(&stale.id).await;
        }
        let Some(sandbox) = adopted else {
            return true;
        };
        let containers = match self
            .call("ListContainers", self.runtime.list_containers(&sandbox.id))
            .await
        {
            Ok(c) => c,
            Err(error) => {
                self.failed(&error);
                self.remove_sandbox(&sandbox.id).await;
                return true;
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
        let made_by = if sandbox.managed {
            "edgecore"
        } else {
            "another agent"
        };
        info!(pod = %rec.pod.key(), sandbox = %sandbox.id, made_by, "adopted the running sandbox");
        rec.pod_ip = self.sandbox_ip(&rec.pod, &sandbox.id).await;
        rec.sandbox_id = Some(sandbox.id);
        rec.sandbox_since = Some(Instant::now());
        rec.sandbox_attempt = 1;
        true
    }

    /// The pod-network IP of a new or adopted sandbox; `None` for host-network pods, and
    /// (logged) when the runtime does not say.
    pub(super) async fn sandbox_ip(&self, pod: &Pod, sandbox: &str) -> Option<String> {
        if pod.spec.host_network {
            return None;
        }
        match self
            .call("PodSandboxStatus", self.runtime.sandbox_ip(sandbox))
            .await
        {
            Ok(ip) => ip,
            Err(error) => {
                warn!(pod = %pod.key(), %sandbox, %error, "the sandbox's IP is not known");
                None
            }
        }
    }
}
