//! CloudHub behaviour of the simulator, driven by a scripted edge (no edgecore needed).

use std::time::Duration;

use anyhow::Result;
use cloudsim::testedge::TestEdge;
use cloudsim::{CloudSim, DisconnectReason, Event, Mode, VipProxy, eventually};
use edgehub::{Message, Route};
use serde_json::{Value, json};

use super::common::{Lab, NODE};

const T: Duration = Duration::from_secs(10);

async fn sim_with(lab: &Lab, f: impl FnOnce(&mut cloudsim::SimConfig)) -> Result<CloudSim> {
    let mut cfg = lab.sim_config("cloud1");
    f(&mut cfg);
    CloudSim::start(cfg).await
}

async fn connect(sim: &CloudSim, lab: &Lab) -> Result<TestEdge> {
    let mut events = sim.events();
    let edge = TestEdge::connect(sim.addr(), &lab.pki, NODE, Some("msg")).await?;
    events
        .wait_for(T, "the session to start", |e| {
            matches!(e, Event::Connected { .. })
        })
        .await?;
    Ok(edge)
}

fn cm(lab: &Lab, name: &str, v: &str) -> Result<(String, u64)> {
    lab.cluster
        .upsert("configmap", "default", name, json!({"data": {"v": v}}))
}

#[tokio::test]
async fn messages_go_one_at_a_time_and_acks_record_object_syncs() -> Result<()> {
    let lab = Lab::new()?;
    let sim = sim_with(&lab, |c| {
        c.resend_interval = Duration::from_secs(60);
        // Only the change log delivers here (the first resync runs at connect, before the writes).
        c.resync_interval = Duration::from_secs(600);
    })
    .await?;
    let mut edge = connect(&sim, &lab).await?;
    let mut events = sim.events();
    let mut want = Vec::new();
    for name in ["a", "b", "c"] {
        want.push(cm(&lab, name, "1")?);
    }
    for (uid, rv) in &want {
        let m = edge.recv(T, "the next configmap").await?;
        assert_eq!(m.route.operation, "insert");
        assert_eq!(m.route.source, "edgecontroller");
        assert_eq!(m.route.group, "resource");
        assert_eq!(m.header.resourceversion, rv.to_string());
        assert_eq!(m.content["metadata"]["uid"], json!(uid));
        assert_eq!(m.content["kind"], json!("ConfigMap"));
        assert!(m.route.resource.starts_with("default/configmap/"));
        edge.send(&Message::ack_of(&m)).await?;
    }
    // Strictly one in flight: each send follows the previous ack.
    let mut order = Vec::new();
    while order.len() < 6 {
        match events.next_event(T, "sent and acked events").await? {
            Event::Sent { .. } => order.push("sent"),
            Event::Acked { .. } => order.push("acked"),
            _ => {}
        }
    }
    assert_eq!(order, ["sent", "acked", "sent", "acked", "sent", "acked"]);
    let syncs = lab.cluster.object_syncs(NODE)?;
    for (uid, rv) in &want {
        assert_eq!(syncs.get(uid), Some(rv));
    }
    let c = sim.counters();
    assert_eq!((c.sent, c.resent, c.acked), (3, 0, 3), "{c:?}");
    Ok(())
}

#[tokio::test]
async fn unacked_message_is_resent_with_the_same_msg_id_then_requeued() -> Result<()> {
    let lab = Lab::new()?;
    let sim = sim_with(&lab, |c| {
        c.resend_interval = Duration::from_millis(100);
        c.keepalive_timeout = Duration::from_secs(60);
    })
    .await?;
    let mut edge = connect(&sim, &lab).await?;
    cm(&lab, "a", "1")?;
    let first = edge.recv(T, "the configmap").await?;
    // An error answer is not an ack.
    edge.send(&Message::error_to(&first, "disk full")).await?;
    for attempt in 2..=5 {
        let m = edge.recv(T, &format!("resend {attempt}")).await?;
        assert_eq!(
            m.header.msg_id, first.header.msg_id,
            "resend {attempt} keeps the msg_id"
        );
    }
    // After 5 sends the message goes back to the queue and comes again.
    let again = edge.recv(T, "the re-queued message").await?;
    assert_eq!(again.route.resource, first.route.resource);
    edge.send(&Message::ack_of(&again)).await?;
    eventually("the object sync", T, || async {
        let s = lab.cluster.object_syncs(NODE)?;
        anyhow::ensure!(s.len() == 1, "{s:?}");
        Ok(())
    })
    .await?;
    let c = sim.counters();
    assert!(c.gave_up >= 1, "{c:?}");
    assert!(c.resent >= 4, "{c:?}");
    Ok(())
}

#[tokio::test]
async fn connection_without_connection_use_msg_is_never_read() -> Result<()> {
    let lab = Lab::new()?;
    let sim = sim_with(&lab, |_| {}).await?;
    let mut events = sim.events();
    let mut edge = TestEdge::connect(sim.addr(), &lab.pki, NODE, None).await?;
    edge.keepalive().await?;
    let ev = events.next_event(T, "the connection to be parked").await?;
    assert!(
        matches!(ev, Event::Ignored { ref node, .. } if node == NODE),
        "{ev:?}"
    );
    assert!(sim.connected_nodes().is_empty());
    assert_eq!(sim.counters().upstream, 0);
    Ok(())
}

#[tokio::test]
async fn last_connection_wins() -> Result<()> {
    let lab = Lab::new()?;
    let sim = sim_with(&lab, |_| {}).await?;
    let mut old = connect(&sim, &lab).await?;
    let mut events = sim.events();
    let _new = TestEdge::connect(sim.addr(), &lab.pki, NODE, Some("msg")).await?;
    events
        .wait_for(T, "the old session to be replaced", |e| {
            matches!(
                e,
                Event::Disconnected {
                    reason: DisconnectReason::Replaced,
                    ..
                }
            )
        })
        .await?;
    old.closed(T, "the old connection to close").await?;
    assert_eq!(sim.connected_nodes(), vec![NODE.to_owned()]);
    Ok(())
}

#[tokio::test]
async fn only_keepalive_resets_the_keepalive_timer() -> Result<()> {
    let lab = Lab::new()?;
    let sim = sim_with(&lab, |c| c.keepalive_timeout = Duration::from_millis(600)).await?;
    let mut events = sim.events();
    let mut edge = connect(&sim, &lab).await?;
    // Traffic other than keepalive does not count.
    let patch = Message::new(
        Route::new(
            "edged",
            "meta",
            "patch",
            &format!("default/nodepatch/{NODE}"),
        ),
        Value::String("{}".into()),
    );
    edge.send(&patch).await?;
    let ev = events
        .wait_for(T, "the keepalive timeout", |e| {
            matches!(e, Event::Disconnected { .. })
        })
        .await?;
    assert!(
        matches!(
            ev,
            Event::Disconnected {
                reason: DisconnectReason::KeepaliveTimeout,
                ..
            }
        ),
        "{ev:?}"
    );
    edge.closed(T, "the connection to close").await?;
    Ok(())
}

#[tokio::test]
async fn resync_sends_updates_and_metadata_only_deletes_after_a_reconnect() -> Result<()> {
    let lab = Lab::new()?;
    let sim = sim_with(&lab, |c| c.resync_interval = Duration::from_millis(200)).await?;
    let mut edge = connect(&sim, &lab).await?;
    let (ua, _) = cm(&lab, "a", "1")?;
    let (ub, _) = cm(&lab, "b", "1")?;
    for _ in 0..2 {
        let m = edge.recv(T, "an initial configmap").await?;
        edge.send(&Message::ack_of(&m)).await?;
    }
    eventually("both object syncs", T, || async {
        anyhow::ensure!(lab.cluster.object_syncs(NODE)?.len() == 2);
        Ok(())
    })
    .await?;
    drop(edge);
    eventually("the session to end", T, || async {
        anyhow::ensure!(sim.connected_nodes().is_empty());
        Ok(())
    })
    .await?;
    let (_, rv_a2) = cm(&lab, "a", "2")?;
    let (_, rv_del) = lab
        .cluster
        .delete("configmap", "default", "b")?
        .expect("b exists");
    // Let the change log pass first, so that only resync can carry the changes.
    eventually(
        "the replica to pass the delete in its change log",
        T,
        || async {
            anyhow::ensure!(sim.log_position() >= rv_del, "at {}", sim.log_position());
            Ok(())
        },
    )
    .await?;
    let mut edge = connect(&sim, &lab).await?;
    let mut seen_update = false;
    let mut seen_delete = false;
    while !(seen_update && seen_delete) {
        let m = edge.recv(T, "resync messages").await?;
        match m.route.operation.as_str() {
            "update" => {
                assert_eq!(m.content["metadata"]["uid"], json!(ua));
                assert_eq!(m.header.resourceversion, rv_a2.to_string());
                seen_update = true;
            }
            "delete" => {
                assert_eq!(m.route.resource, "default/configmap/b");
                assert_eq!(
                    m.content,
                    json!({"metadata": {"name": "b", "namespace": "default", "uid": ub}})
                );
                seen_delete = true;
            }
            other => panic!("unexpected {other}"),
        }
        edge.send(&Message::ack_of(&m)).await?;
    }
    eventually("the deleted object's sync to go", T, || async {
        let s = lab.cluster.object_syncs(NODE)?;
        anyhow::ensure!(s.len() == 1 && s.get(&ua) == Some(&rv_a2), "{s:?}");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn edge_requests_are_answered_like_edgecontroller() -> Result<()> {
    let lab = Lab::new()?;
    let sim = sim_with(&lab, |c| c.resend_interval = Duration::from_millis(200)).await?;
    let mut edge = connect(&sim, &lab).await?;
    // Let the change-log copy of the object go first.
    let (uid, rv) = cm(&lab, "app-config", "1")?;
    let m = edge.recv(T, "the configmap insert").await?;
    edge.send(&Message::ack_of(&m)).await?;

    let query = Message::new(
        Route::new("edged", "meta", "query", "default/configmap/app-config"),
        Value::Null,
    );
    edge.send(&query).await?;
    let resp = edge.recv(T, "the query response").await?;
    assert_eq!(resp.header.parent_msg_id, query.header.msg_id);
    assert_eq!(resp.route.operation, "response");
    assert_eq!(resp.header.resourceversion, rv.to_string());
    assert_eq!(resp.content["metadata"]["uid"], json!(uid));
    // The answer needs an ack: it comes again with the same id.
    let again = edge.recv(T, "the resent query response").await?;
    assert_eq!(again.header.msg_id, resp.header.msg_id);
    edge.send(&Message::ack_of(&again)).await?;

    let missing = Message::new(
        Route::new("edged", "meta", "query", "default/secret/nope"),
        Value::Null,
    );
    edge.send(&missing).await?;
    let nf = edge.recv(T, "the not-found answer").await?;
    assert_eq!(nf.header.parent_msg_id, missing.header.msg_id);
    assert_eq!(nf.content["ErrStatus"]["code"], json!(404));

    let patch = Message::new(
        Route::new(
            "edged",
            "meta",
            "patch",
            &format!("default/nodepatch/{NODE}"),
        ),
        Value::String("{\"status\":{}}".into()),
    );
    edge.send(&patch).await?;
    let pr = edge.recv(T, "the nodepatch answer").await?;
    assert_eq!(pr.header.parent_msg_id, patch.header.msg_id);
    assert_eq!(pr.content["Err"], Value::Null);
    assert_eq!(pr.content["Object"]["metadata"]["name"], json!(NODE));

    let ping = Message::new(
        Route::new("websocket", "resource", "ping", "node"),
        Value::Null,
    );
    edge.send(&ping).await?;
    let pong = edge.recv(T, "the viaduct control answer").await?;
    assert_eq!(pong.header.parent_msg_id, ping.header.msg_id);
    assert_eq!(pong.content, json!("ack"));

    // Garbage from the edge is skipped; the session stays.
    let mut events = sim.events();
    edge.send_raw_text("{not json").await?;
    edge.keepalive().await?;
    events
        .wait_for(
            T,
            "the keepalive after garbage",
            |e| matches!(e, Event::Upstream { msg, .. } if msg.route.operation == "keepalive"),
        )
        .await?;
    let c = sim.counters();
    assert_eq!(c.bad_frames, 1, "{c:?}");
    assert_eq!(c.disconnections, 0, "{c:?}");
    Ok(())
}

/// `kubectl delete pod`: the API server marks the pod (an `update` with deletionTimestamp); the
/// node stops it and asks for the final delete with a uid precondition; edgecontroller deletes
/// it, answers "OK", and the pod's `delete` follows.
#[tokio::test]
async fn a_graceful_pod_delete_ends_with_the_edges_delete_request() -> Result<()> {
    let lab = Lab::new()?;
    let sim = sim_with(&lab, |c| c.resend_interval = Duration::from_millis(200)).await?;
    let mut edge = connect(&sim, &lab).await?;
    let (uid, _) = lab.cluster.upsert(
        "pod",
        "default",
        "web",
        json!({"spec": {"nodeName": NODE, "containers": []}}),
    )?;
    let m = edge.recv(T, "the pod insert").await?;
    edge.send(&Message::ack_of(&m)).await?;

    let (_, marked) = lab
        .cluster
        .delete_gracefully("pod", "default", "web", Duration::from_secs(30))?
        .expect("the pod is there");
    let m = edge.recv(T, "the deletionTimestamp update").await?;
    assert_eq!(m.route.operation, "update");
    assert_eq!(m.header.resourceversion, marked.to_string());
    assert!(
        m.content["metadata"]["deletionTimestamp"].is_string(),
        "{m:?}"
    );
    edge.send(&Message::ack_of(&m)).await?;

    let delete = |uid: &str| {
        Message::new(
            Route::new("edged", "meta", "delete", "default/pod/web"),
            json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}),
        )
    };
    // Another pod by that name by now: left alone, and still "OK".
    let stale = delete("not-this-one");
    edge.send(&stale).await?;
    let ok = edge.recv(T, "the answer to a stale delete").await?;
    assert_eq!(ok.header.parent_msg_id, stale.header.msg_id);
    assert_eq!(ok.content, json!("OK"));
    assert!(lab.cluster.object("pod", "default", "web")?.is_some());

    let del = delete(&uid);
    edge.send(&del).await?;
    let ok = edge.recv(T, "the answer to the delete").await?;
    assert_eq!(ok.header.parent_msg_id, del.header.msg_id);
    assert_eq!(ok.content, json!("OK"));
    assert!(lab.cluster.object("pod", "default", "web")?.is_none());
    let gone = edge.recv(T, "the pod delete").await?;
    assert_eq!(gone.route.operation, "delete");
    assert_eq!(gone.route.resource, "default/pod/web");
    assert_eq!(gone.content["metadata"]["uid"], json!(uid));
    edge.send(&Message::ack_of(&gone)).await?;
    eventually("the delete acked", T, || async {
        anyhow::ensure!(!lab.cluster.object_syncs(NODE)?.contains_key(&uid));
        Ok(())
    })
    .await?;

    // An old edge sends the bare uid.
    let (uid2, _) = lab
        .cluster
        .upsert("pod", "default", "old", json!({"spec": {}}))?;
    let m = edge.recv(T, "the second pod insert").await?;
    edge.send(&Message::ack_of(&m)).await?;
    let bare = Message::new(
        Route::new("edged", "meta", "delete", "default/pod/old"),
        Value::String(uid2),
    );
    edge.send(&bare).await?;
    let ok = edge.recv(T, "the answer to the bare-uid delete").await?;
    assert_eq!(ok.header.parent_msg_id, bare.header.msg_id);
    assert!(lab.cluster.object("pod", "default", "old")?.is_none());
    Ok(())
}

#[tokio::test]
async fn vip_proxy_resets_or_black_holes_on_a_move() -> Result<()> {
    let lab = Lab::new()?;
    let a = sim_with(&lab, |c| c.name = "cloud1".into()).await?;
    let b = sim_with(&lab, |c| c.name = "cloud2".into()).await?;
    let vip = VipProxy::start("127.0.0.1:0".parse()?, a.addr()).await?;

    let mut ev_a = a.events();
    let mut edge = TestEdge::connect(vip.addr(), &lab.pki, NODE, Some("msg")).await?;
    ev_a.wait_for(T, "session on cloud1", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await?;
    vip.move_to(b.addr(), Mode::Rst);
    edge.closed(T, "the reset").await?;

    let mut ev_b = b.events();
    let mut edge = TestEdge::connect(vip.addr(), &lab.pki, NODE, Some("msg")).await?;
    ev_b.wait_for(T, "session on cloud2", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await?;
    vip.move_to(a.addr(), Mode::Silent);
    // New connections reach cloud1, the old one stays open on both ends.
    let mut ev_a = a.events();
    let _edge2 = TestEdge::connect(vip.addr(), &lab.pki, NODE, Some("msg")).await?;
    ev_a.wait_for(T, "session on cloud1 after the move", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await?;
    assert_eq!(
        b.connected_nodes(),
        vec![NODE.to_owned()],
        "the half-open session is still up on cloud2"
    );
    edge.keepalive().await?;
    assert_eq!(
        b.counters().upstream,
        0,
        "nothing crosses a black-holed link"
    );
    Ok(())
}
