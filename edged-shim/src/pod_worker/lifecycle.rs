//! Driving one pod towards its spec: sandbox, images, containers, restarts, teardown.

use super::*;

impl Shared {
    pub(super) fn sandbox_config(&self, rec: &PodRecord) -> SandboxConfig {
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
                .cgroups
                .sandbox_parent(rec.pod.qos_class(), &m.uid),
            labels: m.labels.clone(),
            dns: None,
        }
    }

    pub(super) async fn drive(&self, rec: &mut PodRecord) {
        let key = rec.pod.key();
        if rec.start_time.is_empty() {
            rec.start_time = rfc3339(SystemTime::now());
        }
        let sandbox = self.sandbox_config(rec);
        if rec.sandbox_id.is_none() && !self.adopt(rec).await {
            rec.set_waiting("ContainerCreating", "listing existing sandboxes failed");
            return;
        }
        if rec.sandbox_id.is_none() || rec.volumes.is_empty() && !rec.pod.spec.volumes.is_empty() {
            let mut objects = Objects::new(self.meta.as_ref(), &rec.pod.metadata.namespace);
            let prepared = volumes::prepare(
                &self.settings.root_directory,
                &rec.pod,
                &self.node,
                &mut objects,
            )
            .await;
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
            let spec = &rec.pod.spec;
            let dns = dns::pod_dns(
                &self.settings.dns,
                self.node.ip.parse().ok(),
                &rec.pod.metadata.namespace,
                spec.dns_policy.as_deref(),
                spec.host_network,
                spec.dns_config.as_ref(),
            )
            .await;
            let sandbox = match dns {
                Ok(formed) => {
                    for warning in &formed.warnings {
                        warn!(pod = %key, "DNS: {warning}");
                    }
                    SandboxConfig {
                        dns: Some(formed.config),
                        ..sandbox.clone()
                    }
                }
                Err(error) => {
                    warn!(pod = %key, %error, "sandbox not started");
                    rec.sandbox_retry_at = Some(Instant::now() + rec.sandbox_backoff.next_delay());
                    rec.set_waiting("ContainerCreating", &error.to_string());
                    return;
                }
            };
            let limits = resources::pod_resources(&rec.pod);
            let made = self.settings.cgroups.before_sandbox(
                rec.pod.qos_class(),
                &rec.pod.metadata.uid,
                &limits,
            );
            if let Err(error) = made {
                warn!(pod = %key, %error, "pod cgroup not made; sandbox not started");
                rec.sandbox_retry_at = Some(Instant::now() + rec.sandbox_backoff.next_delay());
                rec.set_waiting(
                    "ContainerCreating",
                    &format!(
                        "the pod's cgroup could not be made ({error}); to run pods without \
                         one set modules.edged.tailoredKubeletConfig.cgroupsPerQOS: false"
                    ),
                );
                return;
            }
            match self
                .call("RunPodSandbox", self.runtime.run_sandbox(&sandbox))
                .await
            {
                Ok(id) => {
                    info!(pod = %key, sandbox = %id, "sandbox started");
                    let limited = self.settings.cgroups.after_sandbox(
                        rec.pod.qos_class(),
                        &rec.pod.metadata.uid,
                        &limits,
                    );
                    if let Err(error) = limited {
                        warn!(pod = %key, %error, "the pod's limits were not written to its slice; its containers' own limits apply");
                    }
                    rec.pod_ip = self.sandbox_ip(&rec.pod, &id).await;
                    rec.sandbox_id = Some(id);
                    rec.sandbox_since = Some(Instant::now());
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
        // Init containers one at a time, each to a clean exit, before any app container.
        for idx in 0..rec.init_count() {
            if rec
                .containers
                .get(idx)
                .is_some_and(ContainerRecord::succeeded)
            {
                continue;
            }
            self.drive_container(rec, idx, &sandbox_id, &sandbox).await;
            if !rec
                .containers
                .get(idx)
                .is_some_and(ContainerRecord::succeeded)
            {
                return;
            }
            info!(pod = %key, container = %rec.containers[idx].name, "init container completed");
        }
        for idx in rec.init_count()..rec.containers.len() {
            self.drive_container(rec, idx, &sandbox_id, &sandbox).await;
            if matches!(&*self.state.borrow(), RuntimeState::Down { .. }) {
                return;
            }
        }
    }

    pub(super) async fn drive_container(
        &self,
        rec: &mut PodRecord,
        idx: usize,
        sandbox_id: &str,
        sandbox: &SandboxConfig,
    ) {
        let key = rec.pod.key();
        // An init container is restarted only when it failed, and not at all under Never.
        let policy = match rec.pod.spec.restart_policy {
            RestartPolicy::Never => RestartPolicy::Never,
            _ if idx < rec.init_count() => RestartPolicy::OnFailure,
            ref p => p.clone(),
        };
        let pod_ip = rec.ip(&self.node.ip);
        let (Some(spec), Some(c)) = (
            rec.pod.container_at(idx).cloned(),
            rec.containers.get_mut(idx),
        ) else {
            return;
        };
        if c.replace
            && let Some(id) = c.id.clone()
        {
            let grace = rec.pod.termination_grace(DEFAULT_GRACE);
            match self.stop_and_remove_container(&id, grace).await {
                Ok(()) => {
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
            let status = if status.state == ContainerState::Exited {
                let message = match &c.exit_message {
                    Some((of, message)) if *of == id => message.clone(),
                    _ => {
                        let file = termination::host_file(
                            &self.settings.root_directory,
                            &rec.pod.metadata.uid,
                            &c.name,
                            c.attempt,
                        );
                        let log = sandbox
                            .log_directory
                            .join(format!("{}/{}.log", spec.name, c.attempt));
                        let fallback = spec.termination_message_policy.as_deref()
                            == Some("FallbackToLogsOnError");
                        let message =
                            termination::message(&file, fallback, status.exit_code, &log).await;
                        c.exit_message = Some((id.clone(), message.clone()));
                        message
                    }
                };
                with_message(status, &message)
            } else {
                status
            };
            c.status = Some(status.clone());
            match status.state {
                ContainerState::Running => {
                    c.waiting = None;
                    if let Some(kind) = self.watch_probes(&rec.pod, pod_ip, &spec, c, &id) {
                        warn!(pod = %key, container = %c.name, probe = ?kind, "container failed its probe; it will be restarted");
                        let grace = rec.pod.termination_grace(DEFAULT_GRACE);
                        match self
                            .call("StopContainer", self.runtime.stop_container(&id, grace))
                            .await
                        {
                            Ok(()) => self.stop_probes(c),
                            Err(error) => self.failed(&error),
                        }
                    }
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
                    self.stop_probes(c);
                    let restart = match policy {
                        RestartPolicy::Always => true,
                        RestartPolicy::OnFailure => status.exit_code != 0,
                        RestartPolicy::Never => false,
                    };
                    if !restart {
                        return;
                    }
                    let now = Instant::now();
                    let due = match c.restart_at {
                        Some(due) => due,
                        None => {
                            // The kubelet forgets a container's back-off once it has gone
                            // 10 minutes without needing one.
                            if c.backoff_at
                                .is_some_and(|at| now - at > CRASH_BACKOFF_RESET)
                            {
                                c.backoff.reset();
                            }
                            c.backoff_at = Some(now);
                            *c.restart_at.insert(now + c.backoff.next_delay())
                        }
                    };
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
            if let Some((at, error)) = &c.pull_retry_at
                && Instant::now() < *at
            {
                c.waiting = Some((
                    "ImagePullBackOff".to_owned(),
                    format!(
                        "Back-off pulling image {:?}: ErrImagePull: {error}",
                        spec.image
                    ),
                ));
                return;
            }
            let Some(pulled) = self.pull_job(&rec.pod, &spec.image).await else {
                // The kubelet's state while an image is pulled.
                c.waiting = Some(("ContainerCreating".to_owned(), String::new()));
                return;
            };
            if let Err(error) = pulled {
                if present.is_none() {
                    warn!(pod = %key, image = %spec.image, %error, "image pull failed");
                    c.waiting = Some(("ErrImagePull".to_owned(), error.to_string()));
                    c.pull_retry_at = Some((
                        Instant::now() + c.pull_backoff.next_delay(),
                        error.to_string(),
                    ));
                    self.failed(&error);
                    return;
                }
                warn!(pod = %key, image = %spec.image, %error, "pull failed; using the local image");
            }
            c.pull_backoff.reset();
            c.pull_retry_at = None;
        }
        let mut objects = Objects::new(self.meta.as_ref(), &rec.pod.metadata.namespace);
        let env = match container_env(&rec.pod, &spec, &self.node, pod_ip.as_deref(), &mut objects)
            .await
        {
            Ok(env) => env,
            Err(error) => {
                warn!(pod = %key, container = %c.name, %error, "container config not ready");
                c.waiting = Some(("CreateContainerConfigError".to_owned(), error.to_string()));
                return;
            }
        };
        let mut mounts = volumes::mounts(&rec.pod, &spec, &rec.volumes);
        let file = termination::host_file(
            &self.settings.root_directory,
            &rec.pod.metadata.uid,
            &c.name,
            c.attempt,
        );
        match termination::prepare(&file, spec.termination_message_path.as_deref()).await {
            Ok(mount) => mounts.push(mount),
            Err(error) => {
                warn!(pod = %key, container = %c.name, %error, "no termination message file; the container runs without one");
            }
        }
        let config = ContainerConfig {
            name: spec.name.clone(),
            image: spec.image.clone(),
            command: spec.command.iter().map(|a| expand_refs(a, &env)).collect(),
            args: spec.args.iter().map(|a| expand_refs(a, &env)).collect(),
            env,
            mounts,
            working_dir: spec.working_dir.clone(),
            log_path: format!("{}/{}.log", spec.name, c.attempt),
            attempt: c.attempt,
            resources: resources::linux_resources(
                &spec.resources,
                rec.pod.qos_class(),
                rec.pod.spec.priority_class_name == "system-node-critical",
                self.memory_capacity,
            ),
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

    /// Stops container `id` (SIGKILL after `grace`) and removes it; a container the runtime no
    /// longer knows counts as removed.
    async fn stop_and_remove_container(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let stop = self.runtime.stop_container(id, grace);
        let stopped = timeout(
            grace.saturating_add(self.settings.runtime_request_timeout),
            stop,
        )
        .await
        .unwrap_or(Err(RuntimeError::Timeout {
            call: "StopContainer",
            timeout: grace,
        }));
        let removed = match stopped {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {
                self.call("RemoveContainer", self.runtime.remove_container(id))
                    .await
            }
            Err(e) => Err(e),
        };
        match removed {
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// Stops sandbox `id` and removes it; a sandbox the runtime no longer knows counts as
    /// removed.
    pub(super) async fn stop_and_remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let stopped = self
            .call("StopPodSandbox", self.runtime.stop_sandbox(id))
            .await;
        let removed = match stopped {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {
                self.call("RemovePodSandbox", self.runtime.remove_sandbox(id))
                    .await
            }
            Err(e) => Err(e),
        };
        match removed {
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// Stops and removes everything of the pod; true when done.
    pub(super) async fn teardown(&self, rec: &mut PodRecord, notify_cloud: bool) -> bool {
        let key = rec.pod.key();
        let grace = rec.pod.termination_grace(DEFAULT_GRACE);
        for c in &mut rec.containers {
            self.stop_probes(c);
            let Some(id) = c.id.clone() else { continue };
            match self.stop_and_remove_container(&id, grace).await {
                Ok(()) => c.id = None,
                Err(error) => {
                    warn!(pod = %key, container = %c.name, %error, "container not removed; retrying");
                    self.failed(&error);
                    return false;
                }
            }
        }
        if let Some(id) = rec.sandbox_id.clone() {
            match self.stop_and_remove_sandbox(&id).await {
                Ok(()) => {
                    rec.sandbox_id = None;
                    rec.pod_ip = None;
                }
                Err(error) => {
                    warn!(pod = %key, %error, "sandbox not removed; retrying");
                    self.failed(&error);
                    return false;
                }
            }
        }
        volumes::cleanup(&self.settings.root_directory, &rec.pod.metadata.uid).await;
        self.settings.cgroups.remove_pod(&rec.pod.metadata.uid);
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
        lock(&self.removed).insert(&rec.pod.metadata.uid);
        info!(pod = %key, "pod removed");
        true
    }
}

/// The runtime's message and the termination message, as the kubelet joins them.
fn with_message(mut status: ContainerStatus, message: &str) -> ContainerStatus {
    if !message.is_empty() {
        status.message = if status.message.is_empty() {
            message.to_owned()
        } else {
            format!("{}: {message}", status.message)
        };
    }
    status
}
