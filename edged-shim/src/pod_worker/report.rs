//! What the pod looks like to the API, and sending it as a `podpatch`.

use super::*;

impl Shared {
    pub(super) fn view(&self, rec: &PodRecord) -> PodView {
        let initialized = rec.initialized();
        let mut containers: Vec<ContainerView> = rec
            .pod
            .all_containers()
            .zip(&rec.containers)
            .enumerate()
            .map(|(idx, (spec, c))| {
                let state = match (&c.waiting, &c.status) {
                    (Some((reason, message)), _) => ApiState::Waiting {
                        reason: reason.clone(),
                        message: message.clone(),
                    },
                    (None, Some(s)) => api_state(s),
                    (None, None) => ApiState::Waiting {
                        // App containers wait for the init containers.
                        reason: if idx >= rec.init_count() && !initialized {
                            "PodInitializing"
                        } else {
                            "ContainerCreating"
                        }
                        .to_owned(),
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
                // Probes gate `started` and `ready`; a container without them is both while
                // it runs.
                let running = matches!(state, ApiState::Running { .. });
                // Before a probe's first verdict: not started, not ready.
                let verdict = |kind, probe: &Option<probe::Probe>| {
                    c.id.as_deref()
                        .and_then(|id| self.probe_results.get(id, kind))
                        .unwrap_or(probe.is_none())
                };
                let started = running && verdict(probe::Kind::Startup, &spec.startup_probe);
                let ready = started && verdict(probe::Kind::Readiness, &spec.readiness_probe);
                ContainerView {
                    ready,
                    started,
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
                    volume_mounts: spec
                        .volume_mounts
                        .iter()
                        .map(|m| MountView {
                            name: m.name.clone(),
                            mount_path: m.mount_path.clone(),
                            read_only: m.read_only,
                        })
                        .collect(),
                }
            })
            .collect();
        let apps = containers.split_off(rec.init_count().min(containers.len()));
        let pod_ip = rec.ip(&self.node.ip).unwrap_or_default();
        PodView {
            uid: rec.pod.metadata.uid.clone(),
            restart_policy: rec.pod.spec.restart_policy.clone(),
            sandbox_ready: rec.sandbox_id.is_some(),
            host_ip: self.node.ip.clone(),
            pod_ip,
            start_time: rec.start_time.clone(),
            init_containers: containers,
            containers: apps,
        }
    }

    /// Sends the pod's status when it changed since the last successful patch.
    pub(super) async fn send_status(&self, rec: &mut PodRecord) {
        if rec.desired != Desired::Running {
            return;
        }
        let key = rec.pod.key();
        let view = self.view(rec);
        let states = condition_states(&view);
        let now = rfc3339(SystemTime::now());
        for (slot, (ok, _, _)) in rec.transitions.iter_mut().zip(states.iter()) {
            if slot.0 != Some(*ok) {
                *slot = (Some(*ok), now.clone());
            }
        }
        // A scheduler's PodScheduled time, when the pod has one, is kept as it is.
        if let (Some(at), Some(slot)) = (
            rec.pod.scheduled_at(),
            rec.transitions.get_mut(POD_SCHEDULED),
        ) {
            slot.1 = at.to_owned();
        }
        let times: [String; CONDITIONS.len()] = std::array::from_fn(|i| {
            rec.transitions
                .get(i)
                .map(|t| t.1.clone())
                .unwrap_or_default()
        });
        let patch = status_patch(&view, &times);
        if rec.last_patch.as_deref() == Some(patch.as_str()) {
            return;
        }
        let m = &rec.pod.metadata;
        let sent = timeout(
            META_CALL_TIMEOUT,
            self.meta
                .patch_pod_status(&m.namespace, &m.name, patch.clone()),
        )
        .await;
        match sent {
            Ok(Ok(())) => {
                debug!(pod = %key, "pod status patched");
                rec.last_patch = Some(patch);
                rec.patch_failing = false;
            }
            failure => {
                let first = !std::mem::replace(&mut rec.patch_failing, true);
                let why = match failure {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {META_CALL_TIMEOUT:?}"),
                };
                if first {
                    warn!(pod = %key, error = %why, "pod status patch failed; retrying");
                } else {
                    debug!(pod = %key, error = %why, "pod status patch failed again");
                }
            }
        }
    }
}
