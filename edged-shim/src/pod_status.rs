//! The `podpatch` string: phase, conditions and container statuses of one pod.

use serde_json::{Value, json};

use crate::pod::RestartPolicy;

/// A container's state as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
        started_at: String,
        finished_at: String,
        container_id: String,
    },
}

/// A timestamp field: the time, or `null` when unknown (never the epoch).
fn time(at: &str) -> Value {
    if at.is_empty() {
        Value::Null
    } else {
        json!(at)
    }
}

impl ApiState {
    fn to_json(&self) -> Value {
        match self {
            ApiState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"waiting": w})
            }
            ApiState::Running { started_at } => json!({"running": {"startedAt": time(started_at)}}),
            ApiState::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
                container_id,
            } => {
                let mut t = json!({
                    "containerID": container_id,
                    "exitCode": exit_code,
                    "finishedAt": time(finished_at),
                    "reason": reason,
                    "startedAt": time(started_at),
                });
                if !message.is_empty() {
                    t["message"] = json!(message);
                }
                json!({"terminated": t})
            }
        }
    }
}

/// One entry of `containerStatuses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerView {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) image_id: String,
    /// `containerd://<id>`, empty before the first create.
    pub(crate) container_id: String,
    pub(crate) state: ApiState,
    pub(crate) last_state: Option<ApiState>,
    pub(crate) restart_count: u32,
    /// Running, started (its startup probe, if any, passed) and its readiness probe, if any,
    /// passing.
    pub(crate) ready: bool,
    /// Running and its startup probe, if any, passed.
    pub(crate) started: bool,
    /// The container's `volumeMounts`, as the kubelet (1.30+) reports them in its status.
    pub(crate) volume_mounts: Vec<MountView>,
}

/// One entry of a container status' `volumeMounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountView {
    pub(crate) name: String,
    pub(crate) mount_path: String,
    pub(crate) read_only: bool,
}

impl MountView {
    fn to_json(&self) -> Value {
        let mut m = json!({"mountPath": self.mount_path, "name": self.name});
        if self.read_only {
            // Recursive read-only mounts are not asked for: the kubelet says so.
            m["readOnly"] = json!(true);
            m["recursiveReadOnly"] = json!("Disabled");
        }
        m
    }
}

impl ContainerView {
    /// Its entry in `containerStatuses` or `initContainerStatuses`. An init container is ready
    /// once it completed.
    fn to_json(&self, init: bool) -> Value {
        let ready = if init { self.completed() } else { self.ready };
        let mut s = json!({
            "image": self.image,
            "imageID": self.image_id,
            "lastState": self.last_state.as_ref().map_or_else(|| json!({}), ApiState::to_json),
            "name": self.name,
            "ready": ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": self.state.to_json(),
        });
        if !self.container_id.is_empty() {
            s["containerID"] = json!(self.container_id);
        }
        if !self.volume_mounts.is_empty() {
            s["volumeMounts"] =
                Value::Array(self.volume_mounts.iter().map(MountView::to_json).collect());
        }
        s
    }

    /// An init container that ran to a clean exit.
    fn completed(&self) -> bool {
        matches!(self.state, ApiState::Terminated { exit_code: 0, .. })
    }

    /// An init container that failed: it exited non-zero, or waits to restart after doing so.
    fn failed(&self) -> bool {
        match &self.state {
            ApiState::Terminated { exit_code, .. } => *exit_code != 0,
            ApiState::Waiting { .. } => matches!(
                self.last_state,
                Some(ApiState::Terminated { exit_code, .. }) if exit_code != 0
            ),
            ApiState::Running { .. } => false,
        }
    }
}

/// Everything the patch says about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodView {
    pub(crate) uid: String,
    pub(crate) restart_policy: RestartPolicy,
    pub(crate) sandbox_ready: bool,
    pub(crate) host_ip: String,
    pub(crate) pod_ip: String,
    pub(crate) start_time: String,
    /// Init containers, in their order.
    pub(crate) init_containers: Vec<ContainerView>,
    /// App containers.
    pub(crate) containers: Vec<ContainerView>,
}

/// Kubernetes pod phase from container states and the restart policy: `Failed` once an init
/// container failed under `Never`, `Pending` until every init container completed.
pub(crate) fn phase(
    policy: &RestartPolicy,
    init: &[ContainerView],
    containers: &[ContainerView],
) -> &'static str {
    if *policy == RestartPolicy::Never && init.iter().any(ContainerView::failed) {
        return "Failed";
    }
    if !init.iter().all(ContainerView::completed) {
        return "Pending";
    }
    let (mut pending, mut running, mut failed) = (0, 0, 0);
    for c in containers {
        match &c.state {
            ApiState::Running { .. } => running += 1,
            ApiState::Terminated { exit_code: 0, .. } => {}
            ApiState::Terminated { .. } => failed += 1,
            ApiState::Waiting { .. } if c.last_state.is_some() => running += 1,
            ApiState::Waiting { .. } => pending += 1,
        }
    }
    if pending > 0 || containers.is_empty() {
        "Pending"
    } else if running > 0 {
        "Running"
    } else {
        match policy {
            RestartPolicy::Always => "Running",
            RestartPolicy::OnFailure if failed > 0 => "Running",
            RestartPolicy::OnFailure => "Succeeded",
            RestartPolicy::Never if failed > 0 => "Failed",
            RestartPolicy::Never => "Succeeded",
        }
    }
}

/// Pod condition types in the order the kubelet reports them. The kubelet sets all five:
/// `PodScheduled` is the scheduler's, but the kubelet reports it `True` too (a pod bound with
/// `nodeName` and no scheduler, as on most KubeEdge nodes, has it from no one else).
pub(crate) const CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

/// Index of `PodScheduled` in [`CONDITIONS`].
pub(crate) const POD_SCHEDULED: usize = 4;

/// Each condition's status for `view`, with reason and message when false.
pub(crate) fn condition_states(view: &PodView) -> [(bool, &'static str, String); 5] {
    let not_ready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let ready = not_ready.is_empty() && !view.containers.is_empty();
    let why = format!("containers with unready status: [{}]", not_ready.join(" "));
    let incomplete: Vec<&str> = view
        .init_containers
        .iter()
        .filter(|c| !c.completed())
        .map(|c| c.name.as_str())
        .collect();
    let initialized = (
        incomplete.is_empty(),
        "ContainersNotInitialized",
        format!(
            "containers with incomplete status: [{}]",
            incomplete.join(" ")
        ),
    );
    [
        (view.sandbox_ready, "", String::new()),
        initialized,
        (ready, "ContainersNotReady", why.clone()),
        (ready, "ContainersNotReady", why),
        (true, "", String::new()),
    ]
}

/// Conditions whose `False` carries a reason and message. When such a condition turns `True`
/// the patch sends both as `null`: a strategic-merge patch keeps fields it does not name, so
/// leaving them out would show `Ready=True reason=ContainersNotReady` (the kubelet's two-way
/// patch has the same nulls).
fn carries_reason(kind: &str) -> bool {
    matches!(kind, "Initialized" | "Ready" | "ContainersReady")
}

/// The patch string; `transitions[i]` is the lastTransitionTime of `CONDITIONS[i]`.
pub(crate) fn status_patch(view: &PodView, transitions: &[String; 5]) -> String {
    let states = condition_states(view);
    let order: Vec<Value> = CONDITIONS.iter().map(|t| json!({"type": t})).collect();
    let conditions: Vec<Value> = CONDITIONS
        .iter()
        .zip(states.iter())
        .zip(transitions.iter())
        .map(|((kind, (ok, reason, message)), at)| {
            let mut c = json!({
                "lastProbeTime": null,
                "lastTransitionTime": at,
                "status": if *ok { "True" } else { "False" },
                "type": kind,
            });
            if !*ok && !reason.is_empty() {
                c["message"] = json!(message);
                c["reason"] = json!(reason);
            } else if *ok && carries_reason(kind) {
                c["message"] = Value::Null;
                c["reason"] = Value::Null;
            }
            c
        })
        .collect();
    let statuses: Vec<Value> = view.containers.iter().map(|c| c.to_json(false)).collect();
    let mut status = json!({
        "$setElementOrder/conditions": order,
        "conditions": conditions,
        "containerStatuses": statuses,
        "phase": phase(&view.restart_policy, &view.init_containers, &view.containers),
    });
    if !view.init_containers.is_empty() {
        status["initContainerStatuses"] = Value::Array(
            view.init_containers
                .iter()
                .map(|c| c.to_json(true))
                .collect(),
        );
    }
    if !view.host_ip.is_empty() {
        status["hostIP"] = json!(view.host_ip);
        status["hostIPs"] = json!([{"ip": view.host_ip}]);
    }
    if !view.pod_ip.is_empty() {
        status["podIP"] = json!(view.pod_ip);
        status["podIPs"] = json!([{"ip": view.pod_ip}]);
    }
    if !view.start_time.is_empty() {
        status["startTime"] = json!(view.start_time);
    }
    json!({"metadata": {"uid": view.uid}, "status": status}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(name: &str) -> ContainerView {
        ContainerView {
            name: name.to_owned(),
            image: "docker.io/library/nginx:1.27".to_owned(),
            image_id: "docker.io/library/nginx@sha256:0123abcd".to_owned(),
            container_id: "containerd://5f1c0a".to_owned(),
            state: ApiState::Running {
                started_at: "2025-06-01T08:00:03Z".to_owned(),
            },
            last_state: None,
            restart_count: 0,
            ready: true,
            started: true,
            volume_mounts: Vec::new(),
        }
    }

    fn terminated(code: i32) -> ApiState {
        ApiState::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.to_owned(),
            message: String::new(),
            started_at: "t0".to_owned(),
            finished_at: "t1".to_owned(),
            container_id: "containerd://x".to_owned(),
        }
    }

    fn running_view() -> PodView {
        PodView {
            uid: "8f0b7c2e-3d4a-4b9e-9a61-2f5c1e7d9a10".to_owned(),
            restart_policy: RestartPolicy::Always,
            sandbox_ready: true,
            host_ip: "192.168.1.50".to_owned(),
            pod_ip: "10.88.0.7".to_owned(),
            start_time: "2025-06-01T08:00:01Z".to_owned(),
            init_containers: Vec::new(),
            containers: vec![running("nginx")],
        }
    }

    fn vector_times() -> [String; 5] {
        [
            "2025-06-01T08:00:03Z".to_owned(),
            "2025-06-01T08:00:01Z".to_owned(),
            "2025-06-01T08:00:04Z".to_owned(),
            "2025-06-01T08:00:04Z".to_owned(),
            "2025-06-01T08:00:00Z".to_owned(),
        ]
    }

    /// The vector is the kubelet's two-way patch against a pod the scheduler had already
    /// marked `PodScheduled`, whose Ready conditions were never false. Ours states the whole
    /// status: the same, plus `PodScheduled` and the `null` reason/message of conditions that
    /// can carry one (docs/realcloud.md, "Pod status").
    #[test]
    fn running_pod_matches_the_vector_plus_the_documented_fields() {
        let mut ours: Value =
            serde_json::from_str(&status_patch(&running_view(), &vector_times())).unwrap();
        let path = format!(
            "{}/../tests/fixtures/vectors/pod-status-patch.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let msg: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let theirs: Value = serde_json::from_str(msg["content"].as_str().unwrap()).unwrap();
        let conditions = ours["status"]["conditions"].as_array_mut().unwrap();
        let scheduled = conditions.pop().unwrap();
        assert_eq!(
            scheduled,
            json!({"lastProbeTime": null, "lastTransitionTime": "2025-06-01T08:00:00Z",
                   "status": "True", "type": "PodScheduled"})
        );
        for c in conditions.iter_mut() {
            let c = c.as_object_mut().unwrap();
            if carries_reason(c["type"].as_str().unwrap()) {
                assert_eq!(c.remove("reason"), Some(Value::Null));
                assert_eq!(c.remove("message"), Some(Value::Null));
            }
            assert!(!c.contains_key("reason"), "{c:?}");
        }
        assert_eq!(ours, theirs);
    }

    /// A condition that turns true clears the reason and message it had while false (the
    /// real cloud showed `Ready=True reason=ContainersNotReady` without the nulls).
    #[test]
    fn a_condition_that_turns_true_clears_its_reason_and_message() {
        let mut view = running_view();
        view.containers[0].state = ApiState::Waiting {
            reason: "ContainerCreating".to_owned(),
            message: String::new(),
        };
        view.containers[0].ready = false;
        view.containers[0].started = false;
        let before: Value = serde_json::from_str(&status_patch(&view, &vector_times())).unwrap();
        let ready = &before["status"]["conditions"][2];
        assert_eq!(
            (&ready["type"], &ready["status"]),
            (&json!("Ready"), &json!("False"))
        );
        assert_eq!(ready["reason"], "ContainersNotReady");
        let after: Value =
            serde_json::from_str(&status_patch(&running_view(), &vector_times())).unwrap();
        for i in [1, 2, 3] {
            let c = after["status"]["conditions"][i].as_object().unwrap();
            assert_eq!(c["status"], "True");
            assert_eq!(c.get("reason"), Some(&Value::Null), "{c:?}");
            assert_eq!(c.get("message"), Some(&Value::Null), "{c:?}");
        }
    }

    /// The kubelet reports `PodScheduled=True`; a KubeEdge pod bound by `nodeName` has no
    /// scheduler to set it. It stays true whatever the containers do.
    #[test]
    fn pod_scheduled_is_reported_true_in_the_kubelets_order() {
        let mut view = running_view();
        view.containers.clear();
        view.sandbox_ready = false;
        let v: Value = serde_json::from_str(&status_patch(&view, &vector_times())).unwrap();
        let types: Vec<&str> = v["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, CONDITIONS);
        assert_eq!(v["status"]["conditions"][POD_SCHEDULED]["status"], "True");
        assert_eq!(
            v["status"]["conditions"][POD_SCHEDULED]["lastTransitionTime"],
            "2025-06-01T08:00:00Z"
        );
        assert!(
            v["status"]["conditions"][POD_SCHEDULED]
                .get("reason")
                .is_none()
        );
    }

    #[test]
    fn phases_follow_states_and_restart_policy() {
        let with = |state: ApiState, last: bool| ContainerView {
            state,
            last_state: last.then(|| terminated(1)),
            ..running("c")
        };
        let waiting = ApiState::Waiting {
            reason: "ContainerCreating".to_owned(),
            message: String::new(),
        };
        use RestartPolicy::*;
        assert_eq!(
            phase(&Always, &[], &[with(waiting.clone(), false)]),
            "Pending"
        );
        assert_eq!(phase(&Always, &[], &[with(waiting, true)]), "Running");
        assert_eq!(phase(&Always, &[], &[running("c")]), "Running");
        assert_eq!(
            phase(&Never, &[], &[with(terminated(0), false)]),
            "Succeeded"
        );
        assert_eq!(
            phase(&Never, &[], &[with(terminated(2), false), running("d")]),
            "Running"
        );
        assert_eq!(
            phase(
                &Never,
                &[],
                &[with(terminated(2), false), with(terminated(0), false)]
            ),
            "Failed"
        );
        assert_eq!(
            phase(&OnFailure, &[], &[with(terminated(2), false)]),
            "Running"
        );
        assert_eq!(
            phase(&OnFailure, &[], &[with(terminated(0), false)]),
            "Succeeded"
        );
        assert_eq!(phase(&Always, &[], &[]), "Pending");

        // Init containers: pending until all completed; a failed one fails the pod under Never.
        let done = with(terminated(0), false);
        let app = [running("app")];
        assert_eq!(
            phase(&Always, &[done.clone(), running("i2")], &app),
            "Pending"
        );
        assert_eq!(
            phase(&Always, &[done.clone(), done.clone()], &app),
            "Running"
        );
        let crashed = with(terminated(1), false);
        assert_eq!(
            phase(&Never, std::slice::from_ref(&crashed), &app),
            "Failed"
        );
        assert_eq!(phase(&OnFailure, &[crashed], &app), "Pending");
        let backing_off = ApiState::Waiting {
            reason: "CrashLoopBackOff".to_owned(),
            message: String::new(),
        };
        assert_eq!(phase(&Always, &[with(backing_off, true)], &app), "Pending");
    }

    #[test]
    fn unready_containers_are_named() {
        let mut c = running("web");
        c.state = ApiState::Waiting {
            reason: "CrashLoopBackOff".to_owned(),
            message: "back-off".to_owned(),
        };
        c.ready = false;
        c.started = false;
        let view = PodView {
            uid: "u".to_owned(),
            restart_policy: RestartPolicy::Always,
            sandbox_ready: true,
            host_ip: String::new(),
            pod_ip: String::new(),
            start_time: String::new(),
            init_containers: Vec::new(),
            containers: vec![c],
        };
        let t: [String; 5] = Default::default();
        let v: Value = serde_json::from_str(&status_patch(&view, &t)).unwrap();
        assert_eq!(v["status"]["conditions"][2]["status"], "False");
        assert_eq!(
            v["status"]["conditions"][2]["message"],
            "containers with unready status: [web]"
        );
        assert_eq!(
            v["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
            "CrashLoopBackOff"
        );
        assert!(v["status"].get("hostIP").is_none());
    }
}
