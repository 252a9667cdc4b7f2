use super::*;
use crate::testutil::{MetaCall, RecordingMeta};
use tokio::sync::mpsc;

fn settings() -> EdgedSettings {
    let mut s = EdgedSettings::from_config(&config::Edged::default());
    s.node_name = "n1".to_owned();
    s
}

fn start(meta: &Arc<RecordingMeta>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let (registered, rx) = watch::channel(false);
    let task = tokio::spawn(run(settings(), meta.clone(), rx, cancel.clone()));
    registered.send_replace(true);
    // The task keeps its receiver; the sender may go.
    (cancel, task)
}

async fn next(calls: &mut mpsc::Receiver<MetaCall>) -> MetaCall {
    tokio::time::timeout(Duration::from_secs(600), calls.recv())
        .await
        .expect("a lease call within 10 virtual minutes")
        .expect("meta channel open")
}

fn put(call: MetaCall) -> (Value, bool) {
    match call {
        MetaCall::PutLease { lease, create } => (lease, create),
        other => panic!("expected a lease write, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn creates_the_lease_owned_by_the_node_then_renews_every_quarter_duration() {
    let (meta, mut calls) = RecordingMeta::new();
    meta.put(
        "node",
        "null",
        "n1",
        json!({"metadata": {"name": "n1", "uid": "node-uid"}}),
    );
    let (cancel, task) = start(&meta);
    assert_eq!(
        next(&mut calls).await,
        MetaCall::GetLease {
            namespace: "kube-node-lease".to_owned(),
            name: "n1".to_owned()
        }
    );
    let t0 = tokio::time::Instant::now();
    let (created, create) = put(next(&mut calls).await);
    assert!(create);
    assert_eq!(created["metadata"]["namespace"], "kube-node-lease");
    assert_eq!(created["metadata"]["name"], "n1");
    assert_eq!(
        created["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "node-uid"}])
    );
    assert_eq!(created["spec"]["holderIdentity"], "n1");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 40);
    let renew_time = created["spec"]["renewTime"].as_str().unwrap().to_owned();
    assert_eq!(
        renew_time.len(),
        "2025-06-01T08:00:10.123456Z".len(),
        "{renew_time}"
    );
    for rv in ["2", "3"] {
        let (renewed, create) = put(next(&mut calls).await);
        assert!(!create, "renewals are updates");
        // The update carries the version the cloud answered last, so a conflict is detected.
        let previous: u64 = rv.parse::<u64>().unwrap() - 1;
        assert_eq!(renewed["metadata"]["resourceVersion"], previous.to_string());
        assert_eq!(renewed["spec"]["holderIdentity"], "n1");
    }
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(20),
        "renewed every 40 s / 4"
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_existing_lease_is_taken_over_and_a_rejected_renewal_fetches_it_again() {
    let (meta, mut calls) = RecordingMeta::new();
    meta.put(
        "lease",
        "kube-node-lease",
        "n1",
        json!({"metadata": {"name": "n1", "namespace": "kube-node-lease", "resourceVersion": "7"},
               "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}}),
    );
    meta.fail_leases(1);
    let (cancel, task) = start(&meta);
    assert!(matches!(next(&mut calls).await, MetaCall::GetLease { .. }));
    let (first, create) = put(next(&mut calls).await);
    assert!(!create, "an existing Lease is updated, never created again");
    assert_eq!(first["metadata"]["resourceVersion"], "7");
    assert!(
        first["metadata"].get("ownerReferences").is_none(),
        "no Node stored yet: no owner"
    );
    // That update was rejected: the next round fetches the Lease before updating it.
    meta.put(
        "node",
        "null",
        "n1",
        json!({"metadata": {"uid": "node-uid"}}),
    );
    assert!(matches!(next(&mut calls).await, MetaCall::GetLease { .. }));
    let (second, create) = put(next(&mut calls).await);
    assert!(!create);
    assert_eq!(second["metadata"]["ownerReferences"][0]["uid"], "node-uid");
    cancel.cancel();
    task.await.unwrap();
}

#[test]
fn a_lease_that_is_not_an_object_is_replaced_not_a_panic() {
    for junk in [json!(null), json!("x"), json!({"spec": 3})] {
        let lease = renewed(&junk, &settings(), Some("u"));
        assert_eq!(lease["spec"]["holderIdentity"], "n1", "{junk}");
    }
}
