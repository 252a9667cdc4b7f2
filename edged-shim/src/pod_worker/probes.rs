//! Starting a running container's probes and reading their verdicts.

use super::*;
use crate::pod::Container;
use crate::probe::Kind;

impl Shared {
    /// Starts the probes of running container `id` unless they run already; returns the probe
    /// (startup or liveness) whose failure means the container must be restarted.
    pub(super) fn watch_probes(
        &self,
        pod: &Pod,
        pod_ip: Option<String>,
        spec: &Container,
        c: &mut ContainerRecord,
        id: &str,
    ) -> Option<Kind> {
        let probes = [
            (Kind::Liveness, spec.liveness_probe.as_ref()),
            (Kind::Readiness, spec.readiness_probe.as_ref()),
            (Kind::Startup, spec.startup_probe.as_ref()),
        ];
        if probes.iter().all(|(_, p)| p.is_none()) {
            return None;
        }
        if c.probes.as_ref().is_none_or(|(of, _)| of != id) {
            self.stop_probes(c);
            let target = probe::Target {
                pod: pod.key(),
                container: spec.name.clone(),
                container_id: id.to_owned(),
                pod_ip: pod_ip.and_then(|ip| ip.parse().ok()),
                ports: spec.ports.clone(),
                runtime: self.runtime.clone(),
            };
            let guard = probe::start(&target, probes, &self.probe_results, &self.wake);
            c.probes = Some((id.to_owned(), guard));
        }
        [Kind::Startup, Kind::Liveness]
            .into_iter()
            .find(|k| self.probe_results.get(id, *k) == Some(false))
    }

    /// Stops a container's probes and forgets their verdicts.
    pub(super) fn stop_probes(&self, c: &mut ContainerRecord) {
        if let Some((id, guard)) = c.probes.take() {
            drop(guard);
            self.probe_results.remove(&id);
        }
    }
}
