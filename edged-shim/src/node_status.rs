//! The node task: register the Node, then patch its status every `nodeStatusUpdateFrequency`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::host::HostProbe;
use crate::meta::{MetaClient, MetaError};
#[cfg(test)]
use crate::node::ConditionType;
use crate::node::{Condition, TimedCondition, conditions, node_object, status_patch};
use crate::runtime::RuntimeState;
use crate::settings::EdgedSettings;
use crate::time::rfc3339;

/// Upper bound for one metamanager call (its own remote timeout is 60 s by default).
pub(crate) const META_CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// Remembers when each condition last changed, as `lastTransitionTime` needs.
#[derive(Debug, Default)]
pub(crate) struct TransitionClock {
    last: Vec<TimedCondition>,
}

impl TransitionClock {
    pub(crate) fn update(&mut self, now: &str, current: [Condition; 4]) -> &[TimedCondition] {
        let previous = std::mem::take(&mut self.last);
        self.last = current
            .into_iter()
            .map(|condition| {
                let last_transition = previous
                    .iter()
                    .find(|p| {
                        p.condition.kind == condition.kind && p.condition.status == condition.status
                    })
                    .map_or_else(|| now.to_owned(), |p| p.last_transition.clone());
                TimedCondition {
                    condition,
                    last_transition,
                }
            })
            .collect();
        &self.last
    }

    #[cfg(test)]
    fn ready(&self) -> Option<&TimedCondition> {
        self.last
            .iter()
            .find(|c| c.condition.kind == ConditionType::Ready)
    }
}

/// Registers the Node (then sets `registered`), and computes its status every
/// `nodeStatusUpdateFrequency`: a status that changed is patched at once, an unchanged one only
/// every `nodeStatusReportFrequency` (the Lease is the heartbeat in between), as the kubelet does.
pub(crate) async fn run(
    settings: EdgedSettings,
    meta: Arc<dyn MetaClient>,
    mut probe: Box<dyn HostProbe>,
    runtime: watch::Receiver<RuntimeState>,
    registered: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let facts = probe.facts();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let version = runtime.borrow().version().to_owned();
        let node = node_object(&settings, &facts, &version);
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            r = timeout(META_CALL_TIMEOUT, meta.register_node(node)) => r,
        };
        match result {
            Ok(Ok(())) => break,
            Ok(Err(MetaError::AlreadyExists(_))) => {
                info!(node = %settings.node_name, "node already registered");
                break;
            }
            Ok(Err(error)) => warn!(%error, "node registration failed; retrying"),
            Err(_) => warn!(timeout = ?META_CALL_TIMEOUT, "node registration timed out; retrying"),
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = sleep(backoff.next_delay()) => {}
        }
    }
    info!(node = %settings.node_name, "node registered");
    registered.send_replace(true);

    let mut clock = TransitionClock::default();
    let mut tick = tokio::time::interval(settings.node_status_update_frequency);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The last status sent (its heartbeat left out) and when.
    let mut reported: Option<(String, Instant)> = None;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sample = probe.sample();
        let state = runtime.borrow().clone();
        let current = conditions(&sample, &settings.thresholds, state.ready());
        let now = rfc3339(SystemTime::now());
        let timed = clock.update(&now, current);
        let unchanged_form = status_patch(&settings, &facts, state.version(), timed, "");
        let due = match &reported {
            Some((last, at)) => {
                *last != unchanged_form || at.elapsed() >= settings.node_status_report_frequency
            }
            None => true,
        };
        if !due {
            continue;
        }
        let patch = status_patch(&settings, &facts, state.version(), timed, &now);
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            r = timeout(META_CALL_TIMEOUT, meta.patch_node_status(&settings.node_name, patch)) => r,
        };
        match result {
            Ok(Ok(())) => {
                debug!("node status patched");
                reported = Some((unchanged_form, Instant::now()));
            }
            Ok(Err(error)) => warn!(%error, "node status patch failed"),
            Err(_) => warn!(timeout = ?META_CALL_TIMEOUT, "node status patch timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{HostFacts, HostSample};
    use crate::testutil::{MetaCall, RecordingMeta};
    use serde_json::Value;

    struct FixedProbe;
    impl HostProbe for FixedProbe {
        fn facts(&mut self) -> HostFacts {
            HostFacts {
                cpus: 2,
                memory_bytes: 1 << 30,
                arch: "amd64".to_owned(),
                kernel_version: "6.1.0".to_owned(),
                os_image: "test".to_owned(),
                machine_id: String::new(),
                system_uuid: String::new(),
                boot_id: String::new(),
                internal_ip: None,
            }
        }
        fn sample(&mut self) -> HostSample {
            HostSample {
                memory_available_bytes: 1 << 29,
                disk: None,
                processes: 10,
                pid_max: 1000,
            }
        }
    }

    fn settings() -> EdgedSettings {
        let mut s = EdgedSettings::from_config(&config::Edged::default());
        s.node_name = "n1".to_owned();
        s
    }

    /// The status loop running against `meta`; cancel it and join through `stop`.
    struct Loop {
        task: tokio::task::JoinHandle<()>,
        cancel: CancellationToken,
        registered: watch::Receiver<bool>,
    }

    impl Loop {
        fn start(
            meta: &std::sync::Arc<RecordingMeta>,
            state_rx: watch::Receiver<RuntimeState>,
        ) -> Self {
            let (registered_tx, registered) = watch::channel(false);
            let cancel = CancellationToken::new();
            let task = tokio::spawn(run(
                settings(),
                meta.clone(),
                Box::new(FixedProbe),
                state_rx,
                registered_tx,
                cancel.clone(),
            ));
            Self {
                task,
                cancel,
                registered,
            }
        }

        async fn stop(self) {
            self.cancel.cancel();
            self.task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn registers_with_retry_then_reports_an_unchanged_status_every_report_period() {
        let (meta, mut calls) = RecordingMeta::new();
        meta.fail_registrations(2);
        let (_state_tx, state_rx) = watch::channel(RuntimeState::Up {
            version: "containerd://1.6.20".to_owned(),
        });
        let running = Loop::start(&meta, state_rx);
        let start = tokio::time::Instant::now();
        for attempt in 0..3 {
            match calls.recv().await {
                Some(MetaCall::RegisterNode(node)) => {
                    assert_eq!(node["metadata"]["name"], "n1", "attempt {attempt}");
                    assert_eq!(
                        node["status"]["nodeInfo"]["containerRuntimeVersion"],
                        "containerd://1.6.20"
                    );
                }
                other => panic!("expected registration, got {other:?}"),
            }
        }
        // Two failures: 1 s + 2 s of backoff, each jittered up to double.
        let registered = start.elapsed();
        assert!(
            registered >= Duration::from_secs(3) && registered <= Duration::from_secs(6),
            "{registered:?}"
        );
        let mut at = Vec::new();
        for _ in 0..3 {
            match calls.recv().await {
                Some(MetaCall::PatchNode { node, patch }) => {
                    assert_eq!(node, "n1");
                    let v: Value = serde_json::from_str(&patch).unwrap();
                    assert_eq!(v["status"]["conditions"][3]["type"], "Ready");
                    assert_eq!(v["status"]["conditions"][3]["status"], "True");
                    at.push((start.elapsed() - registered).as_secs());
                }
                other => panic!("expected node patch, got {other:?}"),
            }
        }
        // Unchanged: once per nodeStatusReportFrequency (5 min), the Lease beats in between.
        assert_eq!(at, [0, 300, 600]);
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn runtime_down_makes_the_node_not_ready() {
        let (meta, mut calls) = RecordingMeta::new();
        let (_state_tx, state_rx) = watch::channel(RuntimeState::Down {
            reason: "no socket".to_owned(),
        });
        let running = Loop::start(&meta, state_rx);
        assert!(matches!(
            calls.recv().await,
            Some(MetaCall::RegisterNode(_))
        ));
        match calls.recv().await {
            Some(MetaCall::PatchNode { patch, .. }) => {
                let v: Value = serde_json::from_str(&patch).unwrap();
                assert_eq!(v["status"]["conditions"][3]["status"], "False");
                assert_eq!(v["status"]["conditions"][3]["reason"], "KubeletNotReady");
            }
            other => panic!("expected node patch, got {other:?}"),
        }
        running.stop().await;
    }

    /// A change (the runtime going down) goes up at the next computation, not after the
    /// report period; then nothing until the next change or period.
    #[tokio::test(start_paused = true)]
    async fn a_changed_status_is_patched_at_once() {
        let (meta, mut calls) = RecordingMeta::new();
        let (state_tx, state_rx) = watch::channel(RuntimeState::Up {
            version: "containerd://1.6.20".to_owned(),
        });
        let mut running = Loop::start(&meta, state_rx);
        assert!(matches!(
            calls.recv().await,
            Some(MetaCall::RegisterNode(_))
        ));
        running.registered.wait_for(|r| *r).await.unwrap();
        let start = tokio::time::Instant::now();
        assert!(matches!(
            calls.recv().await,
            Some(MetaCall::PatchNode { .. })
        ));
        tokio::time::sleep(Duration::from_secs(25)).await;
        state_tx.send_replace(RuntimeState::Down {
            reason: "gone".to_owned(),
        });
        match calls.recv().await {
            Some(MetaCall::PatchNode { patch, .. }) => {
                let v: Value = serde_json::from_str(&patch).unwrap();
                assert_eq!(v["status"]["conditions"][3]["status"], "False");
            }
            other => panic!("expected node patch, got {other:?}"),
        }
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(30),
            "at the next 10 s tick"
        );
        assert!(calls.try_recv().is_err());
        running.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_existing_node_counts_as_registered() {
        let (meta, mut calls) = RecordingMeta::new();
        meta.node_exists
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (_state_tx, state_rx) = watch::channel(RuntimeState::Unknown);
        let running = Loop::start(&meta, state_rx);
        assert!(matches!(
            calls.recv().await,
            Some(MetaCall::RegisterNode(_))
        ));
        assert!(matches!(
            calls.recv().await,
            Some(MetaCall::PatchNode { .. })
        ));
        running.stop().await;
    }

    #[test]
    fn transition_time_changes_only_on_a_status_change() {
        let probe_sample = FixedProbe.sample();
        let th = crate::settings::PressureThresholds::default();
        let mut clock = TransitionClock::default();
        clock.update("t1", conditions(&probe_sample, &th, Ok(())));
        clock.update("t2", conditions(&probe_sample, &th, Ok(())));
        assert_eq!(clock.ready().unwrap().last_transition, "t1");
        clock.update("t3", conditions(&probe_sample, &th, Err("down")));
        assert_eq!(clock.ready().unwrap().last_transition, "t3");
    }
}
