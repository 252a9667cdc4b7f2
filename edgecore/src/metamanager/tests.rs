use super::*;
use edgehub::DisconnectReason;
use serde_json::json;

use crate::metrics::tests::sample;

/// What the fake hub saw: the message and, for acks, the `meta` row of its resource at the
/// moment the ack was handed over (read through a second connection).
#[derive(Debug)]
struct Sent {
    msg: Message,
    row_at_send: Option<String>,
}

#[derive(Clone)]
struct FakeHub {
    sent: mpsc::Sender<Sent>,
    link: watch::Receiver<LinkState>,
    observer: Store,
}

impl CloudLink for FakeHub {
    async fn send(&self, msg: Message) -> Result<(), Message> {
        let row_at_send = if msg.route.operation == op::RESPONSE {
            self.observer.get(&msg.route.resource).await.ok().flatten()
        } else {
            None
        };
        self.sent
            .send(Sent { msg, row_at_send })
            .await
            .map_err(|e| e.0.msg)
    }

    fn link(&self) -> watch::Receiver<LinkState> {
        self.link.clone()
    }
}

struct Harness {
    metrics: Metrics,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Store,
    handle: MetaHandle,
    inbound: mpsc::Sender<Message>,
    cloud: mpsc::Receiver<Sent>,
    link: watch::Sender<LinkState>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

fn start(dir: tempfile::TempDir, link_state: LinkState) -> Harness {
    start_with(dir, link_state, MetaSettings::default())
}

fn start_with(dir: tempfile::TempDir, link_state: LinkState, settings: MetaSettings) -> Harness {
    let path = dir.path().join("edgecore.db");
    let store = Store::open(&path).unwrap();
    let observer = Store::open(&path).unwrap();
    let (link, link_rx) = watch::channel(link_state);
    let (sent, cloud) = mpsc::channel(64);
    let (inbound, inbound_rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let metrics = Metrics::new();
    let hub = FakeHub {
        sent,
        link: link_rx,
        observer,
    };
    let handle = spawn_metamanager(
        settings,
        store.clone(),
        hub,
        &metrics,
        inbound_rx,
        cancel.child_token(),
        &tracker,
    );
    Harness {
        metrics,
        _dir: dir,
        path,
        store,
        handle,
        inbound,
        cloud,
        link,
        cancel,
        tracker,
    }
}

fn harness() -> Harness {
    start(tempfile::tempdir().unwrap(), down())
}

fn down() -> LinkState {
    LinkState::Disconnected {
        reason: DisconnectReason::Closed,
    }
}

fn up(session: u64) -> LinkState {
    LinkState::Connected {
        session,
        endpoint: "cloud:10000".into(),
    }
}

fn vector(name: &str) -> Message {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/vectors")
        .join(name);
    Message::from_wire(&std::fs::read(path).unwrap()).unwrap()
}

fn cloud_msg(operation: &str, resource: &str, rv: &str, content: Value) -> Message {
    Message::new(
        Route::new("edgecontroller", "resource", operation, resource),
        content,
    )
    .with_resource_version(rv)
}

fn configmap(rv: &str, value: &str) -> Value {
    json!({"kind":"ConfigMap","apiVersion":"v1",
           "metadata":{"name":"app","namespace":"default","uid":"cm-uid","resourceVersion":rv},
           "data":{"k":value}})
}

fn answer_to(req: &Message, rv: &str, content: Value) -> Message {
    let mut m = cloud_msg(op::RESPONSE, &req.route.resource, rv, content);
    m.header.parent_msg_id = req.header.msg_id.clone();
    m
}

fn status_patch(resource: &str, text: &str) -> Message {
    Message::new(
        Route::new("edged", "meta", op::PATCH, resource),
        Value::String(text.to_owned()),
    )
}

impl Harness {
    async fn next(&mut self, what: &str) -> Sent {
        tokio::time::timeout(Duration::from_secs(10), self.cloud.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("hub closed while waiting for {what}"))
    }

    async fn push(&self, msg: Message) {
        self.inbound.send(msg).await.unwrap();
    }

    async fn stop(self) -> (tempfile::TempDir, std::path::PathBuf) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.store.shutdown().await;
        (self._dir, self.path)
    }
}

#[tokio::test]
async fn ack_is_sent_only_after_the_row_is_committed() {
    let mut h = harness();
    let insert = vector("pod-insert.json");
    h.push(insert.clone()).await;
    let sent = h.next("ack of pod insert").await;
    assert_eq!(sent.msg.route.operation, "response");
    assert_eq!(sent.msg.header.parent_msg_id, insert.header.msg_id);
    assert_eq!(sent.msg.content, json!("OK"));
    assert_eq!(sent.msg.route.source, "edgecontroller");
    let row = sent
        .row_at_send
        .expect("row must be committed before the ack leaves");
    assert!(row.contains("8f0b7c2e-3d4a-4b9e-9a61-2f5c1e7d9a10"));
    assert!(row.starts_with(r#"{"apiVersion":"v1","kind":"Pod""#));
    h.stop().await;
}

#[tokio::test]
async fn duplicate_delivery_is_acked_again() {
    let mut h = harness();
    let update = vector("configmap-update.json");
    h.push(update.clone()).await;
    h.push(update.clone()).await;
    for n in 1..=2 {
        let sent = h.next(&format!("ack {n} of the duplicate")).await;
        assert_eq!(sent.msg.header.parent_msg_id, update.header.msg_id);
        assert!(sent.row_at_send.is_some());
    }
    h.stop().await;
}

#[tokio::test]
async fn older_resource_version_is_acked_but_not_applied() {
    let mut h = harness();
    let key = "default/configmap/app";
    h.push(cloud_msg(op::UPDATE, key, "20", configmap("20", "new")))
        .await;
    h.next("ack of rv 20").await;
    let stale = cloud_msg(op::UPDATE, key, "10", configmap("10", "old"));
    h.push(stale.clone()).await;
    let sent = h.next("ack of rv 10").await;
    assert_eq!(sent.msg.header.parent_msg_id, stale.header.msg_id);
    assert!(sent.row_at_send.unwrap().contains("\"new\""));
    h.stop().await;
}

#[tokio::test]
async fn junk_gets_an_error_reply_and_processing_continues() {
    let mut h = harness();
    let junk = cloud_msg(op::INSERT, "default/pod/x", "1", json!("not an object"));
    let unknown = cloud_msg("frobnicate", "default/pod/x", "1", json!({}));
    let nameless = cloud_msg(op::INSERT, "node", "1", json!({}));
    for m in [&junk, &unknown, &nameless] {
        h.push(m.clone()).await;
        let sent = h.next("error reply").await;
        assert_eq!(sent.msg.route.operation, "error");
        assert_eq!(sent.msg.route.source, "metamanager");
        assert_eq!(sent.msg.header.parent_msg_id, m.header.msg_id);
    }
    // Another group is not ours: dropped without a reply; the next message is still served.
    h.push(vector("membership-update.json")).await;
    let good = vector("pod-insert.json");
    h.push(good.clone()).await;
    let sent = h.next("ack after junk").await;
    assert_eq!(sent.msg.header.parent_msg_id, good.header.msg_id);
    h.stop().await;
}

#[tokio::test]
async fn pod_delete_removes_the_row_then_acks() {
    let mut h = harness();
    h.push(vector("pod-insert.json")).await;
    h.next("insert ack").await;
    let del = vector("pod-delete-orphan.json");
    h.push(del.clone()).await;
    let sent = h.next("delete ack").await;
    assert_eq!(sent.msg.header.parent_msg_id, del.header.msg_id);
    assert_eq!(sent.row_at_send, None);
    h.stop().await;
}

/// Found by `bench chaos-kill` / `chaos-vip`: a name deleted and created again (new uid), and
/// the old incarnation's delete (synccontroller's orphan delete, no resourceversion) arrives
/// after the new object was stored and acked. Deleting by key lost the new object for good.
#[tokio::test]
async fn a_late_delete_of_an_older_uid_is_acked_and_spares_the_new_object() {
    let mut h = harness();
    let key = "default/configmap/app";
    h.push(cloud_msg(op::INSERT, key, "30", configmap("30", "new")))
        .await;
    h.next("insert ack").await;
    let mut old = configmap("20", "old");
    old["metadata"]["uid"] = json!("old-uid");
    let late = cloud_msg(op::DELETE, key, "", old);
    h.push(late.clone()).await;
    let sent = h.next("ack of the late delete").await;
    assert_eq!(sent.msg.header.parent_msg_id, late.header.msg_id);
    assert!(
        sent.row_at_send
            .expect("new object kept")
            .contains("cm-uid")
    );
    let del = cloud_msg(op::DELETE, key, "40", configmap("30", "new"));
    h.push(del.clone()).await;
    let sent = h.next("ack of the delete").await;
    assert_eq!(sent.msg.header.parent_msg_id, del.header.msg_id);
    assert_eq!(sent.row_at_send, None);
    h.stop().await;
}

#[tokio::test]
async fn remote_query_is_answered_stored_and_acked() {
    let mut h = harness();
    h.link.send(up(1)).unwrap();
    let handle = h.handle.clone();
    let query = tokio::spawn(async move { handle.query("default/configmap/app").await });
    let req = h.next("remote query").await.msg;
    assert_eq!(
        (req.route.operation.as_str(), req.route.group.as_str()),
        ("query", "meta")
    );
    assert_eq!(req.route.resource, "default/configmap/app");
    let answer = answer_to(&req, "30", configmap("30", "remote"));
    h.push(answer.clone()).await;
    let got = query.await.unwrap().unwrap();
    assert_eq!(got, vec![configmap("30", "remote")]);
    let ack = h.next("ack of the query response").await;
    assert_eq!(ack.msg.header.parent_msg_id, answer.header.msg_id);
    assert!(ack.row_at_send.unwrap().contains("\"remote\""));
    h.stop().await;
}

#[tokio::test]
async fn query_in_flight_is_resent_on_the_next_session() {
    let mut h = harness();
    h.link.send(up(1)).unwrap();
    let handle = h.handle.clone();
    let query = tokio::spawn(async move { handle.query("default/secret/s").await });
    let first = h.next("query on session 1").await.msg;
    h.link.send(down()).unwrap();
    h.link.send(up(2)).unwrap();
    let again = h.next("query re-sent on session 2").await.msg;
    assert_eq!(again.header.msg_id, first.header.msg_id);
    assert_eq!(again.route.resource, "default/secret/s");
    let secret = json!({"kind":"Secret","metadata":{"name":"s","resourceVersion":"4"}});
    h.push(answer_to(
        &again,
        "4",
        json!({"Object": secret, "Err": null}),
    ))
    .await;
    assert_eq!(query.await.unwrap().unwrap(), vec![secret]);
    h.stop().await;
}

#[tokio::test]
async fn remote_query_error_is_returned() {
    let mut h = harness();
    h.link.send(up(1)).unwrap();
    let handle = h.handle.clone();
    let query = tokio::spawn(async move { handle.query("default/secret/s").await });
    let req = h.next("query").await.msg;
    let mut err = Message::error_to(&req, "secrets \"s\" not found");
    err.route.group = "resource".into();
    h.push(err).await;
    match query.await.unwrap() {
        Err(MetaError::Remote { reason, .. }) => assert!(reason.contains("not found")),
        other => panic!("{other:?}"),
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn remote_query_times_out_after_remote_query_timeout() {
    let mut h = harness();
    h.link.send(up(1)).unwrap();
    // An insert round trip proves the connect was handled (the link arm has priority), so no
    // store work is outstanding while the paused clock runs the query's timer. No timeouts
    // here: with the clock paused they would fire while the store thread works.
    h.push(vector("pod-insert.json")).await;
    h.cloud.recv().await.unwrap();
    let started = tokio::time::Instant::now();
    let handle = h.handle.clone();
    let query = tokio::spawn(async move { handle.query("default/configmap/app").await });
    let req = h.cloud.recv().await.unwrap().msg;
    assert_eq!(req.route.operation, "query");
    match query.await.unwrap() {
        Err(MetaError::RemoteTimeout { after, .. }) => assert_eq!(after, Duration::from_secs(60)),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(60));
    // A late answer is still stored and acked (the cloud resends until acked).
    h.push(answer_to(&req, "8", configmap("8", "late"))).await;
    let ack = h.cloud.recv().await.unwrap();
    assert!(ack.row_at_send.unwrap().contains("\"late\""));
    h.stop().await;
}

#[tokio::test]
async fn queries_are_local_when_disconnected_and_for_pods() {
    let mut h = harness();
    h.push(cloud_msg(
        op::UPDATE,
        "default/configmap/app",
        "3",
        configmap("3", "local"),
    ))
    .await;
    h.next("configmap ack").await;
    h.push(vector("pod-insert.json")).await;
    h.next("pod ack").await;
    assert_eq!(
        h.handle.query("default/configmap/app").await.unwrap(),
        vec![configmap("3", "local")]
    );
    assert!(
        h.handle
            .query("default/configmap/none")
            .await
            .unwrap()
            .is_empty()
    );
    h.link.send(up(1)).unwrap();
    // Pods are always local, and a list query returns every pod whatever the namespace.
    let pods = h.handle.query("other/pod").await.unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["metadata"]["name"], "nginx-demo");
    assert!(matches!(
        h.handle.query("nonsense").await,
        Err(MetaError::BadRequest { .. })
    ));
    h.stop().await;
}

#[tokio::test]
async fn outbox_is_drained_on_connect_coalesced_and_removed_on_answer() {
    let mut h = harness();
    let a1 = status_patch("default/podpatch/a", "{\"v\":1}");
    let n1 = status_patch("default/nodepatch/n", "{\"n\":1}");
    let a2 = status_patch("default/podpatch/a", "{\"v\":2}");
    for m in [&a1, &n1, &a2] {
        h.handle.submit_status(m.clone()).await.unwrap();
    }
    assert!(
        h.cloud.try_recv().is_err(),
        "nothing is sent while disconnected"
    );
    // The latest patch is also kept in meta, as KubeEdge does.
    assert_eq!(
        h.store.get("default/podpatch/a").await.unwrap().as_deref(),
        Some("{\"v\":2}")
    );
    let text = h.metrics.encode().unwrap();
    assert_eq!(
        sample(&text, "edgecore_metamanager_outbox_depth"),
        Some(2.0),
        "a2 replaced a1: two entries\n{text}"
    );

    h.link.send(up(1)).unwrap();
    let first = h.next("first drained").await.msg;
    let second = h.next("second drained").await.msg;
    assert_eq!(
        first.header.msg_id, a2.header.msg_id,
        "a2 replaced a1 in a1's place"
    );
    assert_eq!(second.header.msg_id, n1.header.msg_id);

    // The cloud answers a2 (an ObjectResp with a resourceversion, so it is acked).
    let answer = answer_to(
        &a2,
        "77",
        json!({"Object": {"metadata":{"name":"a"}}, "Err": null}),
    );
    h.push(answer.clone()).await;
    let ack = h.next("ack of the patch answer").await;
    assert_eq!(ack.msg.header.parent_msg_id, answer.header.msg_id);
    // The gauge is set in the commit that removed the entry, before the ack left.
    let text = h.metrics.encode().unwrap();
    assert_eq!(
        sample(&text, "edgecore_metamanager_outbox_depth"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "edgecore_edgehub_messages_received_total"),
        Some(1.0)
    );
    // The row still holds the patch that was sent, not the patched object the cloud returned.
    assert_eq!(
        h.store.get("default/podpatch/a").await.unwrap().as_deref(),
        Some("{\"v\":2}")
    );

    h.link.send(down()).unwrap();
    h.link.send(up(2)).unwrap();
    let resent = h.next("re-sent on session 2").await.msg;
    assert_eq!(resent.header.msg_id, n1.header.msg_id);
    let left = h.store.outbox().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].msg_id, n1.header.msg_id);
    h.stop().await;
}

#[tokio::test]
async fn status_submitted_while_connected_is_sent_once() {
    let mut h = harness();
    h.link.send(up(1)).unwrap();
    // A query round trip proves the connect (and its empty drain) was processed.
    let handle = h.handle.clone();
    let q = tokio::spawn(async move { handle.query("default/lease/n").await });
    let req = h.next("sync query").await.msg;
    h.push(answer_to(&req, "", json!({"Object": null, "Err": null})))
        .await;
    q.await.unwrap().unwrap();

    let p = status_patch("default/nodepatch/n", "{}");
    h.handle.submit_status(p.clone()).await.unwrap();
    assert_eq!(
        h.next("status patch").await.msg.header.msg_id,
        p.header.msg_id
    );
    h.handle
        .submit_status(status_patch("default/podpatch/z", "{}"))
        .await
        .unwrap();
    assert_eq!(
        h.next("second patch").await.msg.route.resource,
        "default/podpatch/z"
    );
    h.stop().await;
}

#[tokio::test]
async fn outbox_survives_a_restart() {
    let h = harness();
    let p = status_patch("default/nodepatch/n", "{\"s\":1}");
    h.handle.submit_status(p.clone()).await.unwrap();
    let (dir, _path) = h.stop().await;

    let mut h = start(dir, up(5));
    let sent = h.next("outbox entry after restart").await.msg;
    assert_eq!(sent, p);
    h.stop().await;
}

#[tokio::test]
async fn stops_on_cancel_and_handles_report_it() {
    let h = harness();
    let handle = h.handle.clone();
    h.stop().await;
    handle.closed().await;
    assert!(matches!(
        handle.query("default/pod/x").await,
        Err(MetaError::Stopped)
    ));
    assert!(matches!(
        handle
            .submit_status(status_patch("default/podpatch/x", "{}"))
            .await,
        Err(MetaError::Stopped)
    ));
}

#[tokio::test]
async fn ends_when_the_hub_closes_inbound() {
    let h = harness();
    let handle = h.handle.clone();
    drop(h.inbound);
    handle.closed().await;
    assert!(matches!(
        handle.query("default/pod/x").await,
        Err(MetaError::Stopped)
    ));
}

/// Waits for the next pod event, naming what was awaited.
async fn next_pod(rx: &mut mpsc::Receiver<PodEvent>, what: &str) -> PodEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("feed closed while waiting for {what}"))
}

#[tokio::test]
async fn a_committed_pod_insert_and_delete_reach_the_pod_feed() {
    let (tx, mut pods) = mpsc::channel(4);
    let mut h = start_with(
        tempfile::tempdir().unwrap(),
        down(),
        MetaSettings::default().with_pod_feed(tx),
    );
    let insert = vector("pod-insert.json");
    h.push(insert.clone()).await;
    assert!(h.next("ack of the pod insert").await.row_at_send.is_some());
    assert_eq!(
        next_pod(&mut pods, "the upsert").await,
        PodEvent::Upsert(insert.content.clone())
    );

    let delete = vector("pod-delete-orphan.json");
    h.push(delete).await;
    h.next("ack of the pod delete").await;
    assert_eq!(
        next_pod(&mut pods, "the delete").await,
        PodEvent::Delete {
            namespace: "default".into(),
            name: "nginx-demo".into(),
            uid: "8f0b7c2e-3d4a-4b9e-9a61-2f5c1e7d9a10".into(),
        }
    );
    h.stop().await;
}

#[tokio::test]
async fn stored_pods_are_fed_at_start_without_the_cloud() {
    let mut h = harness();
    let insert = vector("pod-insert.json");
    h.push(insert.clone()).await;
    h.next("ack of the pod insert").await;
    let (dir, _) = h.stop().await;

    let (tx, mut pods) = mpsc::channel(4);
    let h = start_with(dir, down(), MetaSettings::default().with_pod_feed(tx));
    match next_pod(&mut pods, "the stored pod").await {
        PodEvent::Upsert(pod) => {
            assert_eq!(pod["metadata"]["uid"], insert.content["metadata"]["uid"])
        }
        other => panic!("{other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn a_full_pod_feed_does_not_stop_acks() {
    let (tx, mut pods) = mpsc::channel(1);
    let mut h = start_with(
        tempfile::tempdir().unwrap(),
        down(),
        MetaSettings::default().with_pod_feed(tx),
    );
    let pod = |name: &str, rv: &str| {
        cloud_msg(
            op::INSERT,
            &format!("default/pod/{name}"),
            rv,
            json!({"metadata": {"name": name, "namespace": "default", "uid": name, "resourceVersion": rv}}),
        )
    };
    for (name, rv) in [("a", "1"), ("b", "1"), ("b", "2"), ("c", "1")] {
        h.push(pod(name, rv)).await;
        h.next("ack while edged is not reading").await;
    }
    let mut seen = Vec::new();
    for n in 0..3 {
        match next_pod(&mut pods, &format!("pod event {n}")).await {
            PodEvent::Upsert(p) => seen.push(format!(
                "{}@{}",
                p["metadata"]["name"].as_str().unwrap(),
                p["metadata"]["resourceVersion"].as_str().unwrap()
            )),
            other => panic!("{other:?}"),
        }
    }
    // a@1 filled the channel; b@2 replaced b@1 while it waited, in b's place.
    assert_eq!(seen, ["a@1", "b@2", "c@1"]);
    h.stop().await;
}

mod meta_client {
    use super::*;
    use crate::meta_client::EdgedMeta;
    use edged_shim::{MetaClient, MetaError as Shim};

    fn node() -> Value {
        json!({"metadata": {"name": "edge-1", "labels": {"node-role.kubernetes.io/edge": ""}}})
    }

    #[tokio::test]
    async fn register_node_is_an_insert_answered_by_the_cloud() {
        let mut h = start(tempfile::tempdir().unwrap(), up(1));
        let client = EdgedMeta::new(h.handle.clone(), h.store.clone());
        let c = client.clone();
        let call = tokio::spawn(async move { c.register_node(node()).await });
        let req = h.next("node insert").await.msg;
        assert_eq!(
            (
                req.route.source.as_str(),
                req.route.group.as_str(),
                req.route.operation.as_str(),
                req.route.resource.as_str()
            ),
            ("edged", "meta", "insert", "null/node/edge-1")
        );
        assert_eq!(req.content, node());
        h.push(answer_to(&req, "", json!({"Object": node(), "Err": null})))
            .await;
        call.await.unwrap().unwrap();

        // A second registration: the cloud says the Node exists.
        let c = client.clone();
        let call = tokio::spawn(async move { c.register_node(node()).await });
        let req = h.next("second node insert").await.msg;
        let mut err = cloud_msg(
            op::RESPONSE,
            &req.route.resource,
            "",
            json!({"ErrStatus": {"status": "Failure", "message": "nodes \"edge-1\" already exists",
                                 "reason": "AlreadyExists", "code": 409}}),
        );
        err.header.parent_msg_id = req.header.msg_id.clone();
        h.push(err).await;
        assert!(matches!(call.await.unwrap(), Err(Shim::AlreadyExists(_))));
        h.stop().await;
    }

    #[tokio::test]
    async fn register_node_offline_is_not_connected_and_sends_nothing() {
        let mut h = harness();
        let client = EdgedMeta::new(h.handle.clone(), h.store.clone());
        assert!(matches!(
            client.register_node(node()).await,
            Err(Shim::NotConnected(_))
        ));
        assert!(h.cloud.try_recv().is_err());
        h.stop().await;
    }

    fn lease(rv: &str) -> Value {
        json!({"metadata": {"name": "edge-1", "namespace": "kube-node-lease", "resourceVersion": rv},
               "spec": {"holderIdentity": "edge-1", "leaseDurationSeconds": 40}})
    }

    /// The Lease goes to the cloud as KubeEdge's edged sends it (query, insert, update on
    /// `kube-node-lease/lease/<node>`), and the cloud's answer is kept in that row.
    #[tokio::test]
    async fn the_node_lease_is_fetched_created_and_updated_through_the_cloud() {
        let mut h = start(tempfile::tempdir().unwrap(), up(1));
        let client = EdgedMeta::new(h.handle.clone(), h.store.clone());

        let c = client.clone();
        let get = tokio::spawn(async move { c.get_lease("kube-node-lease", "edge-1").await });
        let req = h.next("lease query").await.msg;
        assert_eq!(
            (req.route.operation.as_str(), req.route.resource.as_str()),
            ("query", "kube-node-lease/lease/edge-1")
        );
        let mut missing = cloud_msg(
            op::RESPONSE,
            &req.route.resource,
            "",
            json!({"Object": null, "Err": {"ErrStatus": {"reason": "NotFound", "code": 404,
                   "message": "leases.coordination.k8s.io \"edge-1\" not found"}}}),
        );
        missing.header.parent_msg_id = req.header.msg_id.clone();
        h.push(missing).await;
        assert_eq!(get.await.unwrap().unwrap(), None);

        for (create, operation, rv) in [(true, "insert", "10"), (false, "update", "11")] {
            let c = client.clone();
            let put = tokio::spawn(async move { c.put_lease(lease(""), create).await });
            let req = h.next("lease write").await.msg;
            assert_eq!(
                (req.route.source.as_str(), req.route.group.as_str()),
                ("edged", "meta")
            );
            assert_eq!(
                (req.route.operation.as_str(), req.route.resource.as_str()),
                (operation, "kube-node-lease/lease/edge-1")
            );
            h.push(answer_to(
                &req,
                "",
                json!({"Object": lease(rv), "Err": null}),
            ))
            .await;
            assert_eq!(put.await.unwrap().unwrap(), lease(rv));
            let row: Value = serde_json::from_str(
                &h.store
                    .get("kube-node-lease/lease/edge-1")
                    .await
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(row["metadata"]["resourceVersion"], rv);
        }
        h.stop().await;
    }

    #[tokio::test]
    async fn offline_the_lease_is_read_from_the_store_and_writes_fail_at_once() {
        let mut h = harness();
        let client = EdgedMeta::new(h.handle.clone(), h.store.clone());
        assert_eq!(
            client.get_lease("kube-node-lease", "edge-1").await.unwrap(),
            None
        );
        assert!(matches!(
            client.put_lease(lease("3"), false).await,
            Err(Shim::NotConnected(_))
        ));
        assert!(h.cloud.try_recv().is_err(), "nothing is sent offline");
        h.stop().await;
    }

    fn token_request(pod_uid: &str, seconds: u64) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": null, "expirationSeconds": seconds,
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": pod_uid}}})
    }

    fn issued(request: &Value, token: &str, expires: &str) -> Value {
        let mut t = request.clone();
        t["spec"]["audiences"] = json!(["https://kubernetes.default.svc.cluster.local"]);
        t["status"] = json!({"token": token, "expirationTimestamp": expires});
        t
    }

    /// A projected volume's token: asked from the cloud (a query carrying the TokenRequest),
    /// kept under KubeEdge's key, served from the store while fresh, and offline while it is
    /// still valid.
    #[tokio::test]
    async fn service_account_tokens_come_from_the_cloud_then_the_store() {
        let mut h = start(tempfile::tempdir().unwrap(), up(1));
        let client = EdgedMeta::new(h.handle.clone(), h.store.clone());
        let request = token_request("u1", 3607);
        let (c, r) = (client.clone(), request.clone());
        let call = tokio::spawn(async move { c.service_account_token("ns", "builder", r).await });
        let req = h.next("token query").await.msg;
        assert_eq!(
            (req.route.operation.as_str(), req.route.resource.as_str()),
            ("query", "ns/serviceaccounttoken/builder")
        );
        assert_eq!(req.content, request);
        let answer = issued(&request, "t1", "2099-01-01T00:00:00Z");
        h.push(answer_to(&req, "", answer.clone())).await;
        assert_eq!(call.await.unwrap().unwrap()["status"]["token"], "t1");
        let key = crate::metamanager::token_key::token_key("builder", "ns", &answer);
        assert!(
            h.store.get(&key).await.unwrap().is_some(),
            "stored under {key}"
        );

        // Fresh: the store answers, nothing goes to the cloud.
        let again = client
            .service_account_token("ns", "builder", request.clone())
            .await
            .unwrap();
        assert_eq!(again["status"]["token"], "t1");
        assert!(h.cloud.try_recv().is_err());

        // Offline: a stored token past 80 % of its lifetime but not expired still serves;
        // none at all is an error.
        h.link.send(down()).unwrap();
        let old = token_request("u2", 4_000_000_000);
        h.store
            .batch(vec![Op::PutObject {
                key: MetaKey::opaque("stale-key".into(), "serviceaccounttoken"),
                json: issued(&old, "t2", "2099-01-01T00:00:00Z").to_string(),
                rv: None,
            }])
            .await
            .unwrap();
        // (metamanager's loop takes a link change before a waiting command: it is offline now.)
        let stale = client.service_account_token("ns", "builder", old).await;
        assert_eq!(stale.unwrap()["status"]["token"], "t2");
        assert!(matches!(
            client
                .service_account_token("ns", "builder", token_request("u3", 3607))
                .await,
            Err(Shim::NotConnected(_))
        ));
        h.stop().await;
    }

    #[tokio::test]
    async fn status_patches_go_through_the_outbox() {
        let mut h = harness();
        let client = EdgedMeta::new(h.handle.clone(), h.store.clone());
        client
            .patch_node_status("edge-1", "{\"status\":{}}".into())
            .await
            .unwrap();
        client
            .patch_pod_status("ns", "p", "{\"status\":{\"phase\":\"Running\"}}".into())
            .await
            .unwrap();
        let outbox = h.store.outbox().await.unwrap();
        let keys: Vec<_> = outbox.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["null/nodepatch/edge-1", "ns/podpatch/p"]);

        h.link.send(up(1)).unwrap();
        let first = h.next("node patch").await.msg;
        assert_eq!(
            (first.route.operation.as_str(), first.route.source.as_str()),
            ("patch", "edged")
        );
        assert_eq!(first.content, json!("{\"status\":{}}"));
        let second = h.next("pod patch").await.msg;
        assert_eq!(second.route.resource, "ns/podpatch/p");
        h.stop().await;
    }

    #[tokio::test]
    async fn configmaps_are_read_locally_first_then_from_the_cloud() {
        let mut h = start(tempfile::tempdir().unwrap(), up(1));
        let client = EdgedMeta::new(h.handle.clone(), h.store.clone());
        h.push(cloud_msg(
            op::UPDATE,
            "default/configmap/app",
            "3",
            configmap("3", "local"),
        ))
        .await;
        h.next("ack of the configmap").await;
        let local = client.get_configmap("default", "app").await.unwrap();
        assert_eq!(local.unwrap()["data"]["k"], "local");
        assert!(h.cloud.try_recv().is_err(), "a stored row needs no query");

        let c = client.clone();
        let call = tokio::spawn(async move { c.get_secret("default", "s").await });
        let req = h.next("secret query").await.msg;
        assert_eq!(
            (req.route.operation.as_str(), req.route.resource.as_str()),
            ("query", "default/secret/s")
        );
        let secret = json!({"kind": "Secret", "metadata": {"name": "s", "namespace": "default"}});
        h.push(answer_to(
            &req,
            "9",
            json!({"Object": secret.clone(), "Err": null}),
        ))
        .await;
        h.next("ack of the query answer").await;
        assert_eq!(call.await.unwrap().unwrap(), Some(secret));

        let c = client.clone();
        let call = tokio::spawn(async move { c.get_configmap("default", "missing").await });
        let req = h.next("missing configmap query").await.msg;
        let mut nf = cloud_msg(
            op::RESPONSE,
            &req.route.resource,
            "",
            json!({"ErrStatus": {"message": "configmaps \"missing\" not found", "reason": "NotFound", "code": 404}}),
        );
        nf.header.parent_msg_id = req.header.msg_id.clone();
        h.push(nf).await;
        assert_eq!(call.await.unwrap().unwrap(), None);
        h.stop().await;
    }

    #[tokio::test]
    async fn delete_pod_sends_grace_zero_with_the_uid_precondition() {
        let mut h = start(tempfile::tempdir().unwrap(), up(1));
        let client = EdgedMeta::new(h.handle.clone(), h.store.clone());
        let c = client.clone();
        let call = tokio::spawn(async move { c.delete_pod("ns", "p", "uid-1").await });
        let req = h.next("pod delete").await.msg;
        assert_eq!(
            (req.route.operation.as_str(), req.route.resource.as_str()),
            ("delete", "ns/pod/p")
        );
        assert_eq!(
            req.content,
            json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "uid-1"}})
        );
        h.push(answer_to(&req, "", json!("OK"))).await;
        call.await.unwrap().unwrap();

        let c = client.clone();
        let call = tokio::spawn(async move { c.delete_pod("ns", "p", "uid-1").await });
        let req = h.next("second pod delete").await.msg;
        let mut err = cloud_msg(
            op::ERROR,
            &req.route.resource,
            "",
            json!("precondition failed"),
        );
        err.header.parent_msg_id = req.header.msg_id.clone();
        h.push(err).await;
        assert!(matches!(call.await.unwrap(), Err(Shim::Rejected(_))));
        h.stop().await;
    }
}

/// MetaServer's feed gets each applied write, in commit order, before its ack leaves; stale
/// writes and deletes of nothing are not changes.
#[tokio::test]
async fn committed_cloud_writes_reach_the_change_feed() {
    let changes = crate::metaserver::Changes::new();
    let mut h = start_with(
        tempfile::tempdir().unwrap(),
        down(),
        MetaSettings::default().with_changes(changes.clone()),
    );
    let mut feed = changes.subscribe_for_tests();
    let cm = "default/configmap/app";
    for msg in [
        cloud_msg(op::INSERT, cm, "5", configmap("5", "a")),
        cloud_msg(op::UPDATE, cm, "7", configmap("7", "b")),
        // Older than the stored version: acked, not applied, no change.
        cloud_msg(op::UPDATE, cm, "6", configmap("6", "stale")),
        cloud_msg(op::DELETE, cm, "8", Value::Null),
        // Nothing left to delete.
        cloud_msg(op::DELETE, cm, "9", Value::Null),
    ] {
        h.push(msg).await;
        h.next("ack").await;
    }
    let mut got = Vec::new();
    let mut previous = Vec::new();
    while let Ok(c) = feed.try_recv() {
        got.push((
            c.kind,
            c.stored_type.clone(),
            c.rv,
            c.object["metadata"]["name"].clone(),
        ));
        previous.push(c.previous.as_ref().map(|p| p["metadata"]["name"].clone()));
    }
    // The update carries what it replaced (read in its transaction), for watch selectors.
    assert_eq!(previous, [None, Some(json!("app")), None]);
    assert_eq!(
        got,
        [
            (
                crate::metaserver::ChangeKind::Added,
                "configmap".to_owned(),
                5,
                json!("app")
            ),
            (
                crate::metaserver::ChangeKind::Modified,
                "configmap".to_owned(),
                7,
                json!("app")
            ),
            (
                crate::metaserver::ChangeKind::Deleted,
                "configmap".to_owned(),
                7,
                json!("app")
            ),
        ]
    );
    h.stop().await;
}
