//! Against a real containerd: `tests/cri/setup.sh up && eval "$(tests/cri/setup.sh env)"`, then
//! `cargo test -p edged-shim -- --ignored cri_`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::testutil::{MetaCall, RecordingMeta};
use crate::{CriRuntime, EdgedSettings, PodEvent, Runtime};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run tests/cri/setup.sh up && eval \"$(tests/cri/setup.sh env)\"")
    })
}

/// Polls `check` every 100 ms, at most `tries` times.
async fn eventually<T>(what: &str, tries: u32, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..tries {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gave up waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs containerd from tests/cri/setup.sh and EDGECORE_CRI_SOCKET"]
async fn cri_pod_prints_configmap_and_secret_values_from_env() {
    let endpoint = env("EDGECORE_CRI_SOCKET");
    let image = std::env::var("EDGECORE_CRI_APP_IMAGE")
        .unwrap_or_else(|_| "localhost/app:local".to_owned());
    let root = tempfile::tempdir().unwrap();
    let log_root = std::env::var("EDGECORE_CRI_LOG_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.path().join("logs"));

    let mut settings = EdgedSettings::from_config(&config::Edged::default());
    settings.node_name = "cri-test".to_owned();
    settings.root_directory = root.path().join("root");
    settings.pod_log_directory = log_root.clone();
    settings.cgroups.root = std::env::var("EDGECORE_CRI_CGROUP_PARENT").unwrap_or_default();
    let cgroups = settings.cgroups.clone();
    settings.pod_sync_period = Duration::from_millis(500);
    settings.runtime_request_timeout = Duration::from_secs(30);

    let (meta, mut calls) = RecordingMeta::new();
    meta.put(
        "configmap",
        "default",
        "app-config",
        json!({"data": {"greeting": "hello-from-configmap"}}),
    );
    // "s3cret-from-secret"
    meta.put(
        "secret",
        "default",
        "app-secret",
        json!({"data": {"password": "czNjcmV0LWZyb20tc2VjcmV0"}}),
    );

    let uid = format!("cri-test-{}", std::process::id());
    let pod = json!({
        "metadata": {"name": "printer", "namespace": "default", "uid": uid},
        "spec": {
            "hostNetwork": true,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "volumes": [{"name": "conf", "configMap": {"name": "app-config"}}],
            "containers": [{
                "name": "app",
                "image": image,
                "command": ["/bin/sh", "-c",
                    "echo \"cm=$GREETING secret=$PASSWORD\"; echo \"file=$(cat /etc/conf/greeting)\"; exec sleep 3600"],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "password"}}}
                ],
                "volumeMounts": [{"name": "conf", "mountPath": "/etc/conf", "readOnly": true}]
            }]
        }
    });

    let runtime = CriRuntime::new(&endpoint, Duration::from_secs(30)).unwrap();
    let checker = runtime.clone();
    let (tx, rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let _handle = crate::spawn(
        settings,
        meta.clone() as Arc<_>,
        rx,
        Box::new(runtime),
        cancel.clone(),
        &tracker,
    );
    tx.send(PodEvent::Upsert(pod)).await.unwrap();

    let running = async {
        loop {
            match calls.recv().await {
                Some(MetaCall::PatchPod { patch, .. }) => {
                    let v: serde_json::Value = serde_json::from_str(&patch).unwrap();
                    let state = &v["status"]["containerStatuses"][0]["state"];
                    assert!(
                        state.get("terminated").is_none(),
                        "container ended early: {state}"
                    );
                    if v["status"]["phase"] == "Running" && state["running"].is_object() {
                        return v;
                    }
                }
                Some(_) => {}
                None => panic!("meta channel closed"),
            }
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("pod did not reach Running within 60 s");
    let container_id = status["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(container_id.starts_with("containerd://"), "{container_id}");

    let log = log_root
        .join(format!("default_printer_{uid}"))
        .join("app/0.log");
    let text = eventually("the container's log lines", 100, async || {
        let text = tokio::fs::read_to_string(&log).await.ok()?;
        text.contains("file=hello-from-configmap").then_some(text)
    })
    .await;
    assert!(
        text.contains("stdout F cm=hello-from-configmap secret=s3cret-from-secret"),
        "log was: {text}"
    );

    tx.send(PodEvent::Delete {
        namespace: "default".to_owned(),
        name: "printer".to_owned(),
        uid: uid.clone(),
    })
    .await
    .unwrap();
    eventually("the sandbox to be removed", 300, async || {
        let sandboxes = checker.list_sandboxes().await.ok()?;
        (!sandboxes.iter().any(|s| s.uid == uid)).then_some(())
    })
    .await;

    eventually("the pod cgroups to be removed", 100, async || {
        cgroups.pod_dirs(&uid).is_empty().then_some(())
    })
    .await;
    assert!(
        !root.path().join("root/pods").join(&uid).exists(),
        "pod volumes were not removed"
    );

    cancel.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .expect("edged-shim tasks did not stop");
    let _ = tokio::fs::remove_dir_all(log_root.join(format!("default_printer_{uid}"))).await;
}
