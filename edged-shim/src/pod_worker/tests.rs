use super::*;
use crate::fake_runtime::FakeRuntime;
use crate::testutil::{MetaCall, RecordingMeta};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const APP: &str = "localhost/app:local";

struct Harness {
    meta: Arc<RecordingMeta>,
    calls: mpsc::Receiver<MetaCall>,
    events: mpsc::Sender<PodEvent>,
    rt: FakeRuntime,
    state: watch::Receiver<RuntimeState>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    root: tempfile::TempDir,
}

impl Harness {
    fn start(rt: FakeRuntime) -> Self {
        Self::start_with(rt, |_| {})
    }

    /// With the node's resolver file at `<root>/resolv.conf` (written by the caller, or not).
    fn start_with(rt: FakeRuntime, tweak: impl FnOnce(&mut EdgedSettings)) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut settings = EdgedSettings::from_config(&config::Edged::default());
        settings.node_name = "n1".to_owned();
        settings.root_directory = root.path().join("root");
        settings.pod_log_directory = root.path().join("logs");
        settings.dns.resolv_conf = Some(root.path().join("resolv.conf"));
        // A cgroup v1 tree of its own, with the two hierarchies pod limits go to.
        settings.cgroups.mount = root.path().join("cgroup");
        for controller in ["cpu", "memory"] {
            std::fs::create_dir_all(settings.cgroups.mount.join(controller)).unwrap();
        }
        std::fs::write(
            root.path().join("resolv.conf"),
            "nameserver 192.168.1.1\nsearch lan\n",
        )
        .unwrap();
        tweak(&mut settings);
        let (meta, calls) = RecordingMeta::new();
        meta.put(
            "configmap",
            "default",
            "cfg",
            json!({"data": {"greeting": "hello"}}),
        );
        meta.put(
            "secret",
            "default",
            "sec",
            json!({"data": {"password": "czNjcmV0"}}),
        );
        let (state_tx, state) = watch::channel(RuntimeState::Unknown);
        let (events, rx) = mpsc::channel(16);
        let worker = PodWorker::new(
            settings,
            meta.clone(),
            Box::new(rt.clone()),
            state_tx,
            NodeFacts {
                ip: "192.168.1.50".to_owned(),
                cpu_milli: 4000,
                memory_bytes: 3 << 30,
            },
            4 << 30,
        );
        let cancel = CancellationToken::new();
        let task = tokio::spawn(worker.run(rx, cancel.clone()));
        Self {
            meta,
            calls,
            events,
            rt,
            state,
            cancel,
            task,
            root,
        }
    }

    /// The next meta call matching `pred`, skipping others, within 10 virtual minutes.
    async fn next(&mut self, what: &str, pred: impl Fn(&MetaCall) -> bool) -> MetaCall {
        let wait = async {
            loop {
                match self.calls.recv().await {
                    Some(call) if pred(&call) => return call,
                    Some(_) => {}
                    None => panic!("meta channel closed while waiting for {what}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(600), wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// The next pod status patch of `name` whose status satisfies `pred`.
    async fn status(&mut self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let call = self
            .next(what, |c| match c {
                MetaCall::PatchPod { name: n, patch, .. } if n == name => {
                    pred(&serde_json::from_str::<Value>(patch).unwrap()["status"])
                }
                _ => false,
            })
            .await;
        match call {
            MetaCall::PatchPod { patch, .. } => serde_json::from_str(&patch).unwrap(),
            _ => unreachable!(),
        }
    }

    /// The first status patch satisfying `pred` of each of `names`, in whatever order the
    /// pods' tasks send them.
    async fn statuses(
        &mut self,
        names: &[&str],
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> BTreeMap<String, Value> {
        let mut found = BTreeMap::new();
        while found.len() < names.len() {
            let call = self
                .next(what, |c| match c {
                    MetaCall::PatchPod { name, patch, .. } => {
                        names.contains(&name.as_str())
                            && !found.contains_key(name)
                            && pred(&serde_json::from_str::<Value>(patch).unwrap()["status"])
                    }
                    _ => false,
                })
                .await;
            if let MetaCall::PatchPod { name, patch, .. } = call {
                found.insert(name, serde_json::from_str(&patch).unwrap());
            }
        }
        found
    }

    /// Waits until the runtime state satisfies `pred`.
    async fn runtime_state(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&RuntimeState) -> bool,
    ) {
        let wait = async {
            while !pred(&self.state.borrow_and_update()) {
                self.state.changed().await.unwrap();
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or_else(|_| panic!("the runtime state never went {what}"));
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

fn pod(name: &str, restart: &str, extra_container: Value) -> Value {
    let mut container = json!({
        "name": "app",
        "image": APP,
        "command": ["/bin/sh", "-c", "echo $GREETING $PASSWORD"],
        "env": [
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}}
        ],
        "volumeMounts": [{"name": "conf", "mountPath": "/etc/conf"}]
    });
    if let (Some(c), Some(extra)) = (container.as_object_mut(), extra_container.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {
            "hostNetwork": true,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "conf", "configMap": {"name": "cfg"}}],
            "containers": [container]
        }
    })
}

fn running(s: &Value) -> bool {
    s["phase"] == "Running" && s["containerStatuses"][0]["state"]["running"].is_object()
}

#[tokio::test(start_paused = true)]
async fn runs_a_pod_with_env_and_volumes_and_reports_running() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    let mut web = pod("web", "Always", json!({}));
    web["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sa", "mountPath": "/var/run/secrets/x", "readOnly": true}));
    web["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sa", "emptyDir": {}}));
    h.events.send(PodEvent::Upsert(web)).await.unwrap();
    let patch = h.status("web", "running status", running).await;
    assert_eq!(patch["metadata"]["uid"], "uid-web");
    let s = &patch["status"];
    // The mounts in the container status, as the kubelet reports them.
    assert_eq!(
        s["containerStatuses"][0]["volumeMounts"],
        json!([{"mountPath": "/etc/conf", "name": "conf"},
               {"mountPath": "/var/run/secrets/x", "name": "sa", "readOnly": true,
                "recursiveReadOnly": "Disabled"}])
    );
    assert_eq!(s["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(s["containerStatuses"][0]["ready"], true);
    assert_eq!(s["hostIP"], "192.168.1.50");
    assert_eq!(
        s["podIP"], "192.168.1.50",
        "host network pods carry the node IP"
    );
    assert_eq!(s["conditions"][2]["type"], "Ready");
    assert_eq!(s["conditions"][2]["status"], "True");

    assert_eq!(
        h.rt.calls_named("PullImage"),
        0,
        "present image is not pulled"
    );
    {
        let st = h.rt.state();
        let sandbox = st.sandboxes.values().next().unwrap();
        assert!(sandbox.host_network);
        assert_eq!(sandbox.uid, "uid-web");
        let c = st.containers.values().next().unwrap();
        assert_eq!(
            c.config.env,
            [
                ("GREETING".to_owned(), "hello".to_owned()),
                ("PASSWORD".to_owned(), "s3cret".to_owned())
            ]
        );
        assert_eq!(c.config.mounts[0].container_path, "/etc/conf");
        let file = c.config.mounts[0].host_path.join("greeting");
        assert_eq!(std::fs::read_to_string(file).unwrap(), "hello");
    }
    h.stop().await;
}

/// `PodScheduled` goes up true; a scheduler's transition time on the cloud's pod is kept.
#[tokio::test(start_paused = true)]
async fn pod_scheduled_is_reported_keeping_a_schedulers_time() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    let mut scheduled = pod("web", "Always", json!({}));
    scheduled["status"] = json!({"conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-06-01T07:59:00Z"}
    ]});
    h.events.send(PodEvent::Upsert(scheduled)).await.unwrap();
    let web = h.status("web", "running status", running).await;
    h.events
        .send(PodEvent::Upsert(pod("bare", "Always", json!({}))))
        .await
        .unwrap();
    let bare = h.status("bare", "running status", running).await;
    let cond = |p: &Value| p["status"]["conditions"][4].clone();
    assert_eq!(cond(&web)["type"], "PodScheduled");
    assert_eq!(cond(&web)["status"], "True");
    assert_eq!(cond(&web)["lastTransitionTime"], "2025-06-01T07:59:00Z");
    assert_eq!(cond(&bare)["status"], "True");
    let at = cond(&bare)["lastTransitionTime"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(at.ends_with('Z') && at.len() == 20, "{at}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn pulls_missing_images_and_reports_pull_errors() {
    let rt = FakeRuntime::default();
    rt.state().pullable.insert(APP.to_owned());
    let mut h = Harness::start(rt);
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running status", running).await;
    assert_eq!(h.rt.calls_named("PullImage"), 1);

    h.events
        .send(PodEvent::Upsert(pod(
            "bad",
            "Always",
            json!({"image": "nowhere/img:1"}),
        )))
        .await
        .unwrap();
    let s = h
        .status("bad", "pull error", |s| {
            s["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
        })
        .await;
    assert_eq!(s["status"]["phase"], "Pending");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn missing_configmap_is_a_config_error() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    h.events
        .send(PodEvent::Upsert(pod(
            "web",
            "Always",
            json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]}),
        )))
        .await
        .unwrap();
    let s = h
        .status("web", "config error", |s| {
            s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        })
        .await;
    let msg = s["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("configmap default/absent not found"), "{msg}");
    // Once the configmap exists the pod starts.
    h.meta.put(
        "configmap",
        "default",
        "absent",
        json!({"data": {"k": "v"}}),
    );
    h.status("web", "running after the configmap appears", running)
        .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn always_restarts_after_crash_backoff() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running status", running).await;
    h.rt.exit("app", 1);
    let crashed_at = Instant::now();
    h.status("web", "crash loop back-off", |s| {
        s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    let s = h
        .status("web", "restarted", |s| {
            running(s) && s["containerStatuses"][0]["restartCount"] == 1
        })
        .await;
    assert!(crashed_at.elapsed() >= CRASH_BACKOFF_INITIAL);
    let last = &s["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 1);
    assert_eq!(last["reason"], "Error");
    assert_eq!(h.rt.calls_named("CreateContainer"), 2);
    assert_eq!(
        h.rt.state().containers.len(),
        1,
        "the old container was removed"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn never_policy_pod_succeeds_and_stays_down() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    h.events
        .send(PodEvent::Upsert(pod("job", "Never", json!({}))))
        .await
        .unwrap();
    h.status("job", "running status", running).await;
    h.rt.exit("app", 0);
    let s = h
        .status("job", "succeeded", |s| s["phase"] == "Succeeded")
        .await;
    assert_eq!(
        s["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    tokio::time::sleep(Duration::from_secs(60)).await; // virtual: many sync passes
    assert_eq!(h.rt.calls_named("CreateContainer"), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn cloud_delete_tears_down_without_notifying_the_cloud() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running status", running).await;
    h.events
        .send(PodEvent::Delete {
            namespace: "default".to_owned(),
            name: "web".to_owned(),
            uid: "uid-web".to_owned(),
        })
        .await
        .unwrap();
    // The worker handles events in order: once the next pod runs, the delete is done.
    h.events
        .send(PodEvent::Upsert(pod("other", "Always", json!({}))))
        .await
        .unwrap();
    h.status("other", "second pod running", running).await;
    {
        let st = h.rt.state();
        assert_eq!(st.sandboxes.len(), 1);
        assert!(st.sandboxes.values().all(|s| s.name == "other"));
        assert_eq!(st.containers.len(), 1);
        assert!(st.calls.iter().any(|c| c == "StopContainer"));
    }
    while let Ok(call) = h.calls.try_recv() {
        assert!(!matches!(call, MetaCall::DeletePod { .. }), "{call:?}");
    }
    h.stop().await;
}

/// Runs pod `web`, then sends it back marked for deletion with `deletionGracePeriodSeconds`
/// `grace`; returns the harness and the worker's pod delete to the cloud.
async fn delete_running_pod(grace: u64) -> (Harness, MetaCall) {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running status", running).await;
    let mut deleting = pod("web", "Always", json!({}));
    deleting["metadata"]["deletionTimestamp"] = json!("2025-06-01T08:10:00Z");
    deleting["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    h.events.send(PodEvent::Upsert(deleting)).await.unwrap();
    let call = h
        .next("pod delete to the cloud", |c| {
            matches!(c, MetaCall::DeletePod { .. })
        })
        .await;
    (h, call)
}

#[tokio::test(start_paused = true)]
async fn graceful_deletion_tears_down_then_tells_the_cloud() {
    // `kubectl delete --grace-period=7` overrides the spec's 1 s.
    let (h, call) = delete_running_pod(7).await;
    assert_eq!(
        call,
        MetaCall::DeletePod {
            namespace: "default".to_owned(),
            name: "web".to_owned(),
            uid: "uid-web".to_owned()
        }
    );
    {
        let st = h.rt.state();
        assert!(st.sandboxes.is_empty());
        assert!(st.containers.is_empty());
        assert_eq!(st.stop_graces, [Duration::from_secs(7)]);
    }
    h.stop().await;
}

/// The real cloud sends the status change of the stopped containers as an `update` that can
/// arrive after edged's final delete: the pod must not come back, nor be deleted twice.
#[tokio::test(start_paused = true)]
async fn an_update_arriving_after_the_pod_was_removed_is_ignored() {
    let (mut h, _) = delete_running_pod(1).await;
    let mut late = pod("web", "Always", json!({}));
    late["metadata"]["deletionTimestamp"] = json!("2025-06-01T08:10:00Z");
    late["metadata"]["deletionGracePeriodSeconds"] = json!(1);
    h.events.send(PodEvent::Upsert(late)).await.unwrap();
    // A new pod of the same name (a new uid) then runs, and a stale update of the old uid
    // still does not touch it.
    let mut again = pod("web", "Always", json!({}));
    again["metadata"]["uid"] = json!("uid-web-2");
    h.events.send(PodEvent::Upsert(again)).await.unwrap();
    let s = h
        .status("web", "the new incarnation running", running)
        .await;
    assert_eq!(s["metadata"]["uid"], "uid-web-2");
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.events
        .send(PodEvent::Upsert(pod("other", "Always", json!({}))))
        .await
        .unwrap();
    h.status("other", "a later pod running", running).await;
    while let Ok(call) = h.calls.try_recv() {
        assert!(
            !matches!(call, MetaCall::DeletePod { .. }),
            "second delete: {call:?}"
        );
    }
    assert_eq!(
        h.rt.calls_named("RunPodSandbox"),
        3,
        "old web, new web, other"
    );
    {
        let st = h.rt.state();
        assert_eq!(st.sandboxes.len(), 2, "web (new uid) and other");
        assert!(st.sandboxes.values().all(|s| s.uid != "uid-web"));
    }
    h.stop().await;
}

/// A ConfigMap change reaches the running pod's volume file through the `..data` swap, without
/// restarting anything; an unrelated change touches nothing.
#[tokio::test(start_paused = true)]
async fn a_configmap_change_rewrites_the_volume_file_in_place() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running status", running).await;
    let dir = h
        .root
        .path()
        .join("root/pods/uid-web/volumes/kubernetes.io~configmap/conf");
    assert_eq!(
        std::fs::read_to_string(dir.join("greeting")).unwrap(),
        "hello"
    );
    let data_before = std::fs::read_link(dir.join("..data")).unwrap();

    h.meta.put(
        "configmap",
        "other-ns",
        "cfg",
        json!({"data": {"greeting": "not mine"}}),
    );
    h.events
        .send(PodEvent::ObjectChanged {
            kind: VolumeSource::ConfigMap,
            namespace: "other-ns".to_owned(),
            name: "cfg".to_owned(),
        })
        .await
        .unwrap();
    h.meta.put(
        "configmap",
        "default",
        "cfg",
        json!({"data": {"greeting": "bonjour"}}),
    );
    h.events
        .send(PodEvent::ObjectChanged {
            kind: VolumeSource::ConfigMap,
            namespace: "default".to_owned(),
            name: "cfg".to_owned(),
        })
        .await
        .unwrap();
    // Events are handled in order: once a later pod runs, the change is applied.
    h.events
        .send(PodEvent::Upsert(pod("other", "Always", json!({}))))
        .await
        .unwrap();
    h.status("other", "second pod running", running).await;
    assert_eq!(
        std::fs::read_to_string(dir.join("greeting")).unwrap(),
        "bonjour"
    );
    assert_ne!(std::fs::read_link(dir.join("..data")).unwrap(), data_before);
    assert_eq!(
        h.rt.calls_named("CreateContainer"),
        2,
        "nothing was restarted"
    );
    h.stop().await;
}

/// A grace period from the cloud that no clock can add to is no panic.
#[tokio::test(start_paused = true)]
async fn an_absurd_grace_period_still_tears_the_pod_down() {
    let (h, _) = delete_running_pod(u64::MAX).await;
    assert_eq!(h.rt.state().stop_graces, [Duration::from_secs(u64::MAX)]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn runtime_down_is_reported_then_recovered() {
    let rt = FakeRuntime::with_images(&[APP]);
    rt.state().down = true;
    let mut h = Harness::start(rt);
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    let s = h
        .status("web", "runtime unavailable", |s| {
            s["containerStatuses"][0]["state"]["waiting"]["reason"] == "RuntimeUnavailable"
        })
        .await;
    let msg = s["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("unavailable"), "{msg}");
    assert!(matches!(&*h.state.borrow(), RuntimeState::Down { .. }));
    h.rt.state().down = false;
    h.status("web", "running after the runtime returns", running)
        .await;
    assert!(matches!(&*h.state.borrow(), RuntimeState::Up { .. }));
    h.stop().await;
}

fn leftover(rt: &FakeRuntime, name: &str, ready_container: &str, attempt: u32) {
    let (sandbox, container) = running_pair(name, ready_container, attempt);
    rt.preexisting(sandbox, container);
}

fn running_pair(
    name: &str,
    ready_container: &str,
    attempt: u32,
) -> (SandboxConfig, ContainerConfig) {
    crate::testutil::running_pair(name, ready_container, APP, attempt)
}

#[tokio::test(start_paused = true)]
async fn a_restarted_worker_adopts_the_running_sandbox() {
    let rt = FakeRuntime::with_images(&[APP]);
    leftover(&rt, "web", "app", 2);
    let mut h = Harness::start(rt);
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    let s = h.status("web", "running status", running).await;
    assert_eq!(s["status"]["containerStatuses"][0]["restartCount"], 2);
    assert_eq!(h.rt.calls_named("RunPodSandbox"), 0);
    assert_eq!(h.rt.calls_named("CreateContainer"), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn sandboxes_no_pod_claims_are_removed_after_the_grace_period() {
    let rt = FakeRuntime::with_images(&[APP]);
    leftover(&rt, "ghost", "app", 0);
    let mut h = Harness::start(rt);
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running status", running).await;
    assert_eq!(
        h.rt.state().sandboxes.len(),
        2,
        "ghost kept during the grace period"
    );
    // Virtual time: let the sync passes run past the grace period.
    tokio::time::sleep(ORPHAN_GRACE + Duration::from_secs(5)).await;
    {
        let st = h.rt.state();
        assert_eq!(st.sandboxes.len(), 1);
        assert!(st.sandboxes.values().all(|s| s.name == "web"));
    }
    h.stop().await;
}

/// The same edgecore.db used by KubeEdge's agent before: its kubelet's running sandbox for a
/// stored pod is adopted (no second copy of the pod), and one for a pod this node does not run
/// is left alone, since it is not edged-shim's to remove.
#[tokio::test(start_paused = true)]
async fn another_agents_sandboxes_are_adopted_for_our_pods_and_never_collected() {
    let rt = FakeRuntime::with_images(&[APP]);
    let (sandbox, container) = running_pair("web", "app", 0);
    rt.foreign(sandbox, container);
    let (sandbox, container) = running_pair("theirs", "app", 0);
    rt.foreign(sandbox, container);
    let mut h = Harness::start(rt);
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running status", running).await;
    assert_eq!(
        h.rt.calls_named("RunPodSandbox"),
        0,
        "adopted, not recreated"
    );
    assert_eq!(h.rt.calls_named("CreateContainer"), 0);
    tokio::time::sleep(ORPHAN_GRACE + Duration::from_secs(5)).await;
    assert_eq!(h.rt.calls_named("RemovePodSandbox"), 0);
    assert_eq!(h.rt.state().sandboxes.len(), 2);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn sandbox_failures_are_reported_and_retried_with_backoff() {
    let rt = FakeRuntime::with_images(&[APP]);
    rt.state().failing_sandboxes = 3;
    let mut h = Harness::start(rt);
    let start = Instant::now();
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    let s = h
        .status("web", "sandbox failure", |s| {
            s["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("runc create failed"))
        })
        .await;
    assert_eq!(s["status"]["phase"], "Pending");
    h.status("web", "running after the failures", running).await;
    assert_eq!(h.rt.calls_named("RunPodSandbox"), 4);
    // Retries wait 1 s, 2 s, 4 s (rounded up to the 2 s sync period).
    assert!(
        start.elapsed() >= Duration::from_secs(7),
        "{:?}",
        start.elapsed()
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_vanished_sandbox_is_recreated_with_a_restart() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running status", running).await;
    {
        // Someone removes the pod behind edged-shim's back.
        let mut st = h.rt.state();
        st.sandboxes.clear();
        st.containers.clear();
    }
    let s = h
        .status("web", "running again", |s| {
            running(s) && s["containerStatuses"][0]["restartCount"] == 1
        })
        .await;
    let last = &s["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["reason"], "SandboxGone");
    // It was running when last seen: it ended when the worker noticed, not at the epoch.
    let finished = last["finishedAt"].as_str().unwrap();
    assert!(finished > "2025", "finishedAt {finished}");
    assert_eq!(h.rt.calls_named("RunPodSandbox"), 2);
    assert_eq!(h.rt.state().sandboxes.len(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_image_update_replaces_the_container() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP, "localhost/app:v2"]));
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running status", running).await;
    h.events
        .send(PodEvent::Upsert(pod(
            "web",
            "Always",
            json!({"image": "localhost/app:v2"}),
        )))
        .await
        .unwrap();
    let s = h
        .status("web", "running the new image", |s| {
            running(s) && s["containerStatuses"][0]["image"] == "localhost/app:v2"
        })
        .await;
    assert_eq!(s["status"]["containerStatuses"][0]["restartCount"], 1);
    {
        let st = h.rt.state();
        assert_eq!(st.containers.len(), 1);
        assert!(
            st.containers
                .values()
                .all(|c| c.config.image == "localhost/app:v2")
        );
    }
    h.stop().await;
}

/// The sandbox carries the pod's DNS as the kubelet forms it; an unreadable resolver file holds
/// the sandbox back with a message naming it, until it is readable.
#[tokio::test(start_paused = true)]
async fn the_sandbox_gets_the_pods_dns_and_waits_for_a_readable_resolver_file() {
    let missing = tempfile::tempdir().unwrap();
    let resolv = missing.path().join("resolv.conf");
    let path = resolv.clone();
    let mut h = Harness::start_with(FakeRuntime::with_images(&[APP]), move |s| {
        s.dns.cluster_dns = vec!["10.96.0.10".parse().unwrap()];
        s.dns.resolv_conf = Some(path);
    });
    let mut web = pod("web", "Always", json!({}));
    web["spec"]["dnsPolicy"] = json!("ClusterFirstWithHostNet");
    web["spec"]["dnsConfig"] = json!({"options": [{"name": "ndots", "value": "2"}]});
    h.events.send(PodEvent::Upsert(web)).await.unwrap();
    let s = h
        .status("web", "waiting on the resolver file", |s| {
            s["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("resolvConf") && m.contains("resolv.conf"))
        })
        .await;
    assert_eq!(s["status"]["phase"], "Pending");
    assert_eq!(h.rt.calls_named("RunPodSandbox"), 0);

    std::fs::write(&resolv, "nameserver 192.168.1.1\nsearch lan\n").unwrap();
    h.status("web", "running once the file is there", running)
        .await;
    {
        let st = h.rt.state();
        let dns = st.sandboxes.values().next().unwrap().dns.clone().unwrap();
        assert_eq!(dns.servers, ["10.96.0.10"]);
        assert_eq!(
            dns.searches,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "lan"
            ]
        );
        assert_eq!(dns.options, ["ndots:2"]);
    }
    h.stop().await;
}

/// A host-network pod with the default policy gets the node's resolver configuration.
#[tokio::test(start_paused = true)]
async fn a_host_network_pod_gets_the_nodes_dns() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running", running).await;
    let dns = h.rt.state().sandboxes.values().next().unwrap().dns.clone();
    let dns = dns.unwrap();
    assert_eq!(dns.servers, ["192.168.1.1"]);
    assert_eq!(dns.searches, ["lan"]);
    h.stop().await;
}

/// A failed pull is `ErrImagePull`, then `ImagePullBackOff` while the kubelet's back-off runs
/// (10 s, 20 s, ...), with a retry at each step.
#[tokio::test(start_paused = true)]
async fn failed_pulls_back_off_as_the_kubelet_does() {
    let mut h = Harness::start(FakeRuntime::default());
    let start = Instant::now();
    h.events
        .send(PodEvent::Upsert(pod(
            "bad",
            "Always",
            json!({"image": "nowhere/img:1"}),
        )))
        .await
        .unwrap();
    let reason = |r: &'static str| {
        move |s: &Value| s["containerStatuses"][0]["state"]["waiting"]["reason"] == r
    };
    h.status("bad", "pull error", reason("ErrImagePull")).await;
    let s = h
        .status("bad", "back-off", reason("ImagePullBackOff"))
        .await;
    let message = s["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with("Back-off pulling image \"nowhere/img:1\": ErrImagePull: "),
        "{message}"
    );
    assert_eq!(
        h.rt.calls_named("PullImage"),
        1,
        "no pull during the back-off"
    );
    h.status("bad", "second pull error", reason("ErrImagePull"))
        .await;
    assert_eq!(h.rt.calls_named("PullImage"), 2);
    let first_retry = start.elapsed();
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(13)).contains(&first_retry),
        "{first_retry:?}"
    );
    h.status("bad", "back-off again", reason("ImagePullBackOff"))
        .await;
    h.status("bad", "third pull error", reason("ErrImagePull"))
        .await;
    let second_retry = start.elapsed() - first_retry;
    assert!(
        (Duration::from_secs(20)..Duration::from_secs(23)).contains(&second_retry),
        "{second_retry:?}"
    );

    // Once the image can be pulled, the next retry starts the container.
    h.rt.state().pullable.insert("nowhere/img:1".to_owned());
    h.status("bad", "running after the registry came back", running)
        .await;
    h.stop().await;
}

/// The pod's `imagePullSecrets` reach the runtime: the matching credential is tried first, a
/// missing or malformed secret is skipped, and the pull succeeds with the right one.
#[tokio::test(start_paused = true)]
async fn image_pull_secrets_give_the_pull_its_credentials() {
    const PRIVATE: &str = "registry.example.com/team/app:v1";
    let rt = FakeRuntime::default();
    {
        let mut st = rt.state();
        st.pullable.insert(PRIVATE.to_owned());
        st.private.insert(PRIVATE.to_owned(), "robot".to_owned());
    }
    let mut h = Harness::start(rt);
    let config = json!({"auths": {
        "registry.example.com": {"username": "someone-else", "password": "x"},
        "https://registry.example.com/team": {"username": "robot", "password": "s3cret"}
    }});
    h.meta.put(
        "secret",
        "default",
        "regcred",
        json!({"type": "kubernetes.io/dockerconfigjson",
               "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD
                   .encode(config.to_string())}}),
    );
    h.meta.put(
        "secret",
        "default",
        "not-a-docker-config",
        json!({"data": {"password": "eA=="}}),
    );
    let mut web = pod("web", "Always", json!({"image": PRIVATE}));
    web["spec"]["imagePullSecrets"] =
        json!([{"name": "missing"}, {"name": "not-a-docker-config"}, {"name": "regcred"}]);
    h.events.send(PodEvent::Upsert(web)).await.unwrap();
    h.status("web", "running with the private image", running)
        .await;
    assert_eq!(
        h.rt.state().pull_auths,
        [Some("robot".to_owned())],
        "the most specific credential first, and it worked"
    );

    // Without the secrets the same pull is anonymous and refused.
    let mut other = pod("other", "Always", json!({"image": PRIVATE}));
    other["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
    h.events.send(PodEvent::Upsert(other)).await.unwrap();
    let s = h
        .status("other", "unauthorized pull", |s| {
            s["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
                || s["containerStatuses"][0]["state"]["running"].is_object()
        })
        .await;
    // The image is present by now, so a refused Always pull falls back to the local image.
    assert!(running(&s["status"]), "{s}");
    let (auths, calls) = {
        let st = h.rt.state();
        (st.pull_auths.clone(), st.calls.clone())
    };
    assert_eq!(auths.last(), Some(&None), "{auths:?} {calls:?}");
    h.stop().await;
}

/// Requests and limits reach the runtime as the kubelet derives them, with the pod's QoS class
/// deciding the OOM score adjustment.
#[tokio::test(start_paused = true)]
async fn requests_and_limits_reach_the_runtime_by_qos_class() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    let burstable = json!({"resources": {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"}}});
    let guaranteed = json!({"resources": {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "1Gi"}}});
    for (name, extra) in [
        ("burst", burstable),
        ("guar", guaranteed),
        ("best", json!({})),
    ] {
        h.events
            .send(PodEvent::Upsert(pod(name, "Always", extra)))
            .await
            .unwrap();
        h.status(name, "running", running).await;
    }
    {
        let st = h.rt.state();
        let of = |name: &str| {
            let sandbox = st
                .sandboxes
                .iter()
                .find(|(_, s)| s.name == name)
                .map(|(id, _)| id.clone())
                .unwrap();
            st.containers
                .values()
                .find(|c| c.sandbox == sandbox)
                .map(|c| c.config.resources)
                .unwrap()
        };
        let b = of("burst");
        assert_eq!(
            (
                b.cpu_shares,
                b.cpu_quota,
                b.cpu_period,
                b.memory_limit_bytes
            ),
            (256, 50_000, 100_000, 512 << 20)
        );
        assert_eq!(
            b.oom_score_adj,
            1000 - 1000 * 256 / 4096,
            "relative to the node's 4 GiB"
        );
        let g = of("guar");
        assert_eq!(
            (g.cpu_shares, g.cpu_quota, g.oom_score_adj),
            (1024, 100_000, -997)
        );
        let e = of("best");
        assert_eq!(
            (
                e.cpu_shares,
                e.cpu_quota,
                e.memory_limit_bytes,
                e.oom_score_adj
            ),
            (2, 0, 0, 1000)
        );
        // Each sandbox sits in its pod's cgroup, in the tree of its QoS class.
        let parent = |name: &str| {
            st.sandboxes
                .values()
                .find(|s| s.name == name)
                .and_then(|s| s.cgroup_parent.clone())
                .unwrap()
        };
        assert_eq!(parent("burst"), "/kubepods/burstable/poduid-burst");
        assert_eq!(parent("guar"), "/kubepods/poduid-guar");
        assert_eq!(parent("best"), "/kubepods/besteffort/poduid-best");
    }
    // The pod cgroups hold the pods' limits.
    let cgroup = h.root.path().join("cgroup");
    let read = |file: &str| std::fs::read_to_string(cgroup.join(file)).unwrap();
    let burst = "kubepods/burstable/poduid-burst";
    assert_eq!(read(&format!("cpu/{burst}/cpu.shares")), "256");
    assert_eq!(read(&format!("cpu/{burst}/cpu.cfs_quota_us")), "50000");
    assert_eq!(
        read(&format!("memory/{burst}/memory.limit_in_bytes")),
        (512u64 << 20).to_string()
    );
    assert_eq!(read("cpu/kubepods/poduid-guar/cpu.cfs_quota_us"), "100000");
    assert_eq!(read("cpu/kubepods/besteffort/cpu.shares"), "2");
    assert!(
        !cgroup
            .join("memory/kubepods/besteffort/poduid-best/memory.limit_in_bytes")
            .exists()
    );

    // A pod that goes takes its cgroup along (here the knob files must go first: a real
    // cgroup directory is removed with its knobs).
    for file in ["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"] {
        std::fs::remove_file(cgroup.join(format!("cpu/{burst}/{file}"))).unwrap();
    }
    std::fs::remove_file(cgroup.join(format!("memory/{burst}/memory.limit_in_bytes"))).unwrap();
    h.events
        .send(PodEvent::Delete {
            namespace: "default".to_owned(),
            name: "burst".to_owned(),
            uid: "uid-burst".to_owned(),
        })
        .await
        .unwrap();
    for _ in 0..100 {
        if !cgroup.join(format!("cpu/{burst}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!cgroup.join(format!("cpu/{burst}")).exists());
    assert!(!cgroup.join(format!("memory/{burst}")).exists());
    assert!(cgroup.join("cpu/kubepods/poduid-guar").exists());
    h.stop().await;
}

/// Init containers run one at a time, each to a clean exit, before the app container; their
/// statuses and the Initialized condition go up as the kubelet reports them.
#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_before_the_app() {
    let rt = FakeRuntime::with_images(&[APP]);
    let mut h = Harness::start(rt);
    let mut web = pod("web", "Always", json!({}));
    web["spec"]["initContainers"] = json!([
        {"name": "first", "image": APP, "command": ["/bin/true"]},
        {"name": "second", "image": APP, "command": ["/bin/true"]}
    ]);
    h.events.send(PodEvent::Upsert(web)).await.unwrap();
    let s = h
        .status("web", "initializing", |s| {
            s["initContainerStatuses"][0]["state"]["running"].is_object()
        })
        .await;
    let s = &s["status"];
    assert_eq!(s["phase"], "Pending");
    assert_eq!(s["conditions"][1]["type"], "Initialized");
    assert_eq!(s["conditions"][1]["status"], "False");
    assert_eq!(s["conditions"][1]["reason"], "ContainersNotInitialized");
    assert_eq!(
        s["conditions"][1]["message"],
        "containers with incomplete status: [first second]"
    );
    assert_eq!(
        s["initContainerStatuses"][1]["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    assert_eq!(
        h.rt.calls_named("StartContainer"),
        1,
        "only the first init container"
    );

    // The first exits cleanly: the second starts, then the app.
    h.rt.exit("first", 0);
    h.status("web", "second init running", |s| {
        s["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
            && s["initContainerStatuses"][0]["ready"] == true
            && s["initContainerStatuses"][1]["state"]["running"].is_object()
    })
    .await;
    assert_eq!(h.rt.calls_named("StartContainer"), 2);
    h.rt.exit("second", 0);
    let s = h.status("web", "running", running).await;
    let s = &s["status"];
    assert_eq!(s["conditions"][1]["status"], "True");
    assert_eq!(s["conditions"][1]["reason"], Value::Null);
    assert_eq!(
        s["initContainerStatuses"][1]["state"]["terminated"]["reason"],
        "Completed"
    );
    assert_eq!(h.rt.calls_named("StartContainer"), 3);
    h.stop().await;
}

/// A failing init container is restarted with back-off (the app never starts); under
/// `restartPolicy: Never` it fails the pod instead.
#[tokio::test(start_paused = true)]
async fn a_failing_init_container_is_retried_or_fails_the_pod() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    let start_init = |name: &str, policy: &str| {
        let mut p = pod(name, policy, json!({}));
        p["spec"]["initContainers"] = json!([{"name": format!("init-{name}"), "image": APP}]);
        p
    };
    let init_running = |s: &Value| s["initContainerStatuses"][0]["state"]["running"].is_object();

    h.events
        .send(PodEvent::Upsert(start_init("once", "Never")))
        .await
        .unwrap();
    h.status("once", "init running", init_running).await;
    h.rt.exit("init-once", 3);
    let s = h.status("once", "failed", |s| s["phase"] == "Failed").await;
    assert_eq!(
        s["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
    assert_eq!(
        s["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );

    h.events
        .send(PodEvent::Upsert(start_init("retry", "Always")))
        .await
        .unwrap();
    h.status("retry", "init running", init_running).await;
    h.rt.exit("init-retry", 3);
    let s = h
        .status("retry", "init back-off", |s| {
            s["initContainerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
        .await;
    assert_eq!(s["status"]["phase"], "Pending");
    assert_eq!(s["status"]["initContainerStatuses"][0]["ready"], false);
    h.status("retry", "init restarted", |s| {
        s["initContainerStatuses"][0]["restartCount"] == 1 && init_running(s)
    })
    .await;
    // No app container was ever created for either pod.
    let apps =
        h.rt.state()
            .containers
            .values()
            .filter(|c| c.config.name == "app")
            .count();
    assert_eq!(apps, 0);
    h.stop().await;
}

/// What the container wrote to its termination-log mount becomes the terminated state's
/// message; with FallbackToLogsOnError a silent failure reports its log's tail.
#[tokio::test(start_paused = true)]
async fn termination_messages_come_from_the_file_or_the_log() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    let custom = json!({"terminationMessagePath": "/tmp/why"});
    let fallback = json!({"terminationMessagePolicy": "FallbackToLogsOnError"});
    for (name, extra) in [("file", custom), ("logs", fallback)] {
        h.events
            .send(PodEvent::Upsert(pod(name, "Never", extra)))
            .await
            .unwrap();
        h.status(name, "running", running).await;
    }
    let (file, log) = {
        let st = h.rt.state();
        let config = |pod: &str| {
            let (sandbox_id, sandbox) = st.sandboxes.iter().find(|(_, s)| s.name == pod).unwrap();
            let c = st
                .containers
                .values()
                .find(|c| &c.sandbox == sandbox_id)
                .unwrap();
            (sandbox.clone(), c.config.clone())
        };
        let (_, c) = config("file");
        let mount = c
            .mounts
            .iter()
            .find(|m| m.container_path == "/tmp/why")
            .unwrap();
        assert!(!mount.read_only);
        let (sandbox, c) = config("logs");
        assert!(
            c.mounts
                .iter()
                .any(|m| m.container_path == "/dev/termination-log")
        );
        (
            mount.host_path.clone(),
            sandbox.log_directory.join(&c.log_path),
        )
    };
    std::fs::write(&file, "config key x is missing").unwrap();
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "2026-12-04T21:00:00Z stderr F panic: no config\n").unwrap();
    h.rt.exit("app", 2);
    let terminated = h
        .statuses(&["file", "logs"], "terminated", |s| {
            s["containerStatuses"][0]["state"]["terminated"].is_object()
        })
        .await;
    for (name, want) in [
        ("file", "config key x is missing"),
        ("logs", "panic: no config\n"),
    ] {
        let s = &terminated[name];
        let t = &s["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(t["message"], want, "{s}");
        assert_eq!(t["exitCode"], 2);
    }
    h.stop().await;
}

/// Crash back-off doubles (10 s, 20 s) and starts again from 10 s after 10 minutes of running.
#[tokio::test(start_paused = true)]
async fn crash_backoff_doubles_and_resets_after_ten_minutes() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    h.events
        .send(PodEvent::Upsert(pod("web", "Always", json!({}))))
        .await
        .unwrap();
    h.status("web", "running", running).await;
    let mut waited = Vec::new();
    for (restarts, ran_for) in [(1, 0), (2, 0), (3, 11 * 60)] {
        tokio::time::sleep(Duration::from_secs(ran_for)).await;
        h.rt.exit("app", 1);
        let crashed = Instant::now();
        h.status("web", "restarted", |s| {
            running(s) && s["containerStatuses"][0]["restartCount"] == restarts
        })
        .await;
        waited.push(crashed.elapsed().as_secs());
    }
    // Each wait is the back-off plus up to one 2 s sync period.
    let expected = [10, 20, 10];
    for (w, e) in waited.iter().zip(expected) {
        assert!(
            (e..=e + 3).contains(w),
            "waits {waited:?}, expected about {expected:?}"
        );
    }
    h.stop().await;
}

/// Readiness follows its probe (ready and the Ready condition), liveness failures restart
/// the container, and neither runs before the startup probe passed.
#[tokio::test(start_paused = true)]
async fn probes_drive_readiness_and_restarts() {
    let rt = FakeRuntime::with_images(&[APP]);
    rt.state().exec_codes.insert("app".to_owned(), 1);
    let mut h = Harness::start(rt);
    let exec = |period: u32, threshold: u32| {
        json!({"exec": {"command": ["check"]}, "periodSeconds": period,
               "failureThreshold": threshold})
    };
    h.events
        .send(PodEvent::Upsert(pod(
            "web",
            "Always",
            json!({"readinessProbe": exec(1, 1)}),
        )))
        .await
        .unwrap();
    let s = h.status("web", "running", running).await;
    let c = &s["status"]["containerStatuses"][0];
    assert_eq!(
        (c["ready"].clone(), c["started"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(s["status"]["conditions"][2]["status"], "False", "Ready");
    // A few failing checks keep it unready (the clock is paused: this sleep runs them).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n = h.rt.calls_named("ExecSync");
    assert!(n >= 2, "{n}");

    h.rt.state().exec_codes.insert("app".to_owned(), 0);
    let s = h
        .status("web", "ready", |s| {
            s["containerStatuses"][0]["ready"] == true
        })
        .await;
    assert_eq!(s["status"]["conditions"][2]["status"], "True");
    h.rt.state().exec_codes.insert("app".to_owned(), 1);
    h.status("web", "not ready again", |s| {
        s["containerStatuses"][0]["ready"] == false && running(s)
    })
    .await;
    assert_eq!(
        h.rt.calls_named("StopContainer"),
        0,
        "readiness never restarts"
    );

    // Liveness: three failures in a row restart the container.
    h.events
        .send(PodEvent::Upsert(pod(
            "live",
            "Always",
            json!({"livenessProbe": exec(2, 3)}),
        )))
        .await
        .unwrap();
    let s = h
        .status("live", "restarted after failing liveness", |s| {
            s["containerStatuses"][0]["restartCount"] == 1
        })
        .await;
    assert!(h.rt.calls_named("StopContainer") >= 1);
    assert!(s["status"]["containerStatuses"][0]["lastState"]["terminated"].is_object());
    h.stop().await;
}

/// A startup probe holds `started` false and keeps liveness and readiness from running.
#[tokio::test(start_paused = true)]
async fn the_startup_probe_gates_the_others() {
    let rt = FakeRuntime::with_images(&[APP]);
    rt.state().exec_codes.insert("app".to_owned(), 1);
    let mut h = Harness::start(rt);
    h.events
        .send(PodEvent::Upsert(pod(
            "slow",
            "Always",
            json!({
                "startupProbe": {"exec": {"command": ["started"]}, "periodSeconds": 1,
                                 "failureThreshold": 1000},
                "livenessProbe": {"exec": {"command": ["alive"]}, "periodSeconds": 1,
                                  "failureThreshold": 1}
            }),
        )))
        .await
        .unwrap();
    let s = h.status("slow", "running", running).await;
    assert_eq!(s["status"]["containerStatuses"][0]["started"], false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.rt.calls_named("StopContainer"),
        0,
        "liveness waits for startup: {:?}",
        h.rt.state().calls
    );
    h.rt.state().exec_codes.insert("app".to_owned(), 0);
    h.status("slow", "started", |s| {
        s["containerStatuses"][0]["started"] == true && s["containerStatuses"][0]["ready"] == true
    })
    .await;
    h.stop().await;
}

/// A pod on the pod network reports its sandbox's IP (CRI PodSandboxStatus) as podIP(s), and its
/// containers get it through `status.podIP`.
#[tokio::test(start_paused = true)]
async fn a_pod_network_pod_reports_its_sandbox_ip() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    let mut web = pod(
        "web",
        "Always",
        json!({"env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}),
    );
    web["spec"]["hostNetwork"] = json!(false);
    h.events.send(PodEvent::Upsert(web)).await.unwrap();
    let s = h.status("web", "running", running).await;
    let ip = s["status"]["podIP"].as_str().unwrap_or_default().to_owned();
    assert!(ip.starts_with("10.88.0."), "{s}");
    assert_eq!(s["status"]["podIPs"], json!([{"ip": ip}]));
    assert_eq!(s["status"]["hostIP"], "192.168.1.50");
    let env =
        h.rt.state()
            .containers
            .values()
            .next()
            .unwrap()
            .config
            .env
            .clone();
    assert!(env.contains(&("POD_IP".to_owned(), ip.clone())), "{env:?}");
    h.stop().await;
}

/// A pull that never ends holds up neither another pod's start nor its status reports: the
/// pull runs as its own task, the pod waits in ContainerCreating.
#[tokio::test(start_paused = true)]
async fn a_hanging_image_pull_does_not_hold_up_other_pods() {
    let rt = FakeRuntime::with_images(&[APP]);
    rt.state()
        .hanging
        .insert("registry.example.com/huge:1".to_owned());
    let mut h = Harness::start(rt);
    h.events
        .send(PodEvent::Upsert(pod(
            "slow",
            "Always",
            json!({"image": "registry.example.com/huge:1"}),
        )))
        .await
        .unwrap();
    let s = h
        .status("slow", "waiting for its pull", |s| {
            s["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
        })
        .await;
    assert_eq!(s["status"]["phase"], "Pending");
    let started = Instant::now();
    h.events
        .send(PodEvent::Upsert(pod("fast", "Always", json!({}))))
        .await
        .unwrap();
    h.status("fast", "running beside the hung pull", running)
        .await;
    // Not after the pull gave up (the runtime request timeout is 2 min): at once.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Its later changes are reported too.
    h.rt.exit("app", 1);
    h.status("fast", "crash reported", |s| {
        s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    assert_eq!(h.rt.calls_named("PullImage"), 1, "one pull, still running");
    h.stop().await;
}

/// The kubelet's pod-workers shape: a pod whose graceful stop takes its whole 30 s grace (its
/// process ignores SIGTERM) holds up no other pod's start, sync or status report.
#[tokio::test(start_paused = true)]
async fn a_slow_graceful_stop_does_not_hold_up_other_pods() {
    let rt = FakeRuntime::with_images(&[APP]);
    rt.state().ignore_sigterm.insert("stubborn".to_owned());
    let mut h = Harness::start(rt);
    for p in [
        pod("slow", "Always", json!({"name": "stubborn"})),
        pod("fast", "Always", json!({})),
    ] {
        h.events.send(PodEvent::Upsert(p)).await.unwrap();
    }
    h.statuses(&["slow", "fast"], "both running", running).await;
    let mut deleting = pod("slow", "Always", json!({"name": "stubborn"}));
    deleting["metadata"]["deletionTimestamp"] = json!("2025-06-01T08:10:00Z");
    deleting["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    h.events.send(PodEvent::Upsert(deleting)).await.unwrap();
    // The stop is under way before the other pods are touched.
    for _ in 0..1000 {
        if !h.rt.state().stop_graces.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!h.rt.state().stop_graces.is_empty(), "the stop never began");
    h.events
        .send(PodEvent::Upsert(pod("late", "Always", json!({}))))
        .await
        .unwrap();
    h.rt.exit("app", 1);

    let (mut late_running, mut fast_crashed) = (false, false);
    while !(late_running && fast_crashed) {
        let call = h
            .next("the other pods' reports", |c| {
                matches!(c, MetaCall::PatchPod { .. } | MetaCall::DeletePod { .. })
            })
            .await;
        match call {
            MetaCall::DeletePod { name, .. } => {
                panic!("{name} was deleted before the other pods were reported")
            }
            MetaCall::PatchPod { name, patch, .. } => {
                let s = &serde_json::from_str::<Value>(&patch).unwrap()["status"];
                late_running |= name == "late" && running(s);
                fast_crashed |= name == "fast"
                    && s["containerStatuses"][0]["state"]["waiting"]["reason"]
                        == "CrashLoopBackOff";
            }
            _ => {}
        }
    }
    // The stubborn pod still goes, after its grace.
    let call = h
        .next("the slow pod's delete", |c| {
            matches!(c, MetaCall::DeletePod { .. })
        })
        .await;
    assert!(matches!(call, MetaCall::DeletePod { name, .. } if name == "slow"));
    assert_eq!(h.rt.state().stop_graces, [Duration::from_secs(30)]);
    h.stop().await;
}

/// With no pod at all the runtime's health is still checked, both ways, so the node can report
/// it.
#[tokio::test(start_paused = true)]
async fn the_runtime_is_checked_with_no_pods() {
    let mut h = Harness::start(FakeRuntime::with_images(&[APP]));
    h.runtime_state("up", Duration::from_secs(10), |s| {
        matches!(s, RuntimeState::Up { .. })
    })
    .await;
    h.rt.state().down = true;
    h.runtime_state("down", Duration::from_secs(10), |s| {
        matches!(s, RuntimeState::Down { .. })
    })
    .await;
    h.rt.state().down = false;
    h.runtime_state("up again", Duration::from_secs(60), |s| {
        matches!(s, RuntimeState::Up { .. })
    })
    .await;
    h.stop().await;
}
