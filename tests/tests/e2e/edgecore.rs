//! The real `edgecore` binary against one simulator replica.

use std::time::Duration;

use anyhow::Result;
use cloudsim::feed::{self, FeedKind};
use cloudsim::{Event, WsFrame};
use edgehub::{Message, Route};
use serde_json::json;

use super::common::{CONVERGE, Lab, NODE, SERIAL, connected, converged};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgecore_stores_a_thousand_mixed_objects_and_acks_each() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let lab = Lab::new()?;
    let sim = lab.replica("cloud1").await?;
    let mut events = sim.events();
    let mut edge = lab.edge(sim.addr()).await?;
    connected(&mut events, Duration::from_secs(30)).await?;
    lab.with_cluster(|c| {
        for i in 0..1000 {
            feed::write(c, FeedKind::Mixed.kind_of(i), i, 0)?;
        }
        Ok(())
    })
    .await?;
    converged(&lab, &mut edge, CONVERGE).await?;
    let stats = lab.cluster.delivery_stats(NODE)?;
    assert!(stats.delivered >= 1000, "{stats:?}");
    assert_eq!(stats.unacked, 0, "{stats:?}");
    let c = sim.counters();
    assert!(c.acked >= 1000, "{c:?}");
    assert_eq!(c.connections, 1, "one session from start to end: {c:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgecore_applies_updates_and_deletes() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let lab = Lab::new()?;
    let sim = lab.replica("cloud1").await?;
    let mut events = sim.events();
    let mut edge = lab.edge(sim.addr()).await?;
    connected(&mut events, Duration::from_secs(30)).await?;
    lab.with_cluster(|c| {
        for i in 0..150 {
            feed::write(c, FeedKind::Mixed.kind_of(i), i, 0)?;
        }
        Ok(())
    })
    .await?;
    converged(&lab, &mut edge, CONVERGE).await?;
    lab.with_cluster(|c| {
        for version in 1..=2 {
            for i in 0..150 {
                feed::write(c, FeedKind::Mixed.kind_of(i), i, version)?;
            }
        }
        for i in (0..150).step_by(3) {
            let kind = FeedKind::Mixed.kind_of(i);
            c.delete(kind, feed::NAMESPACE, &feed::name_of(kind, i))?;
        }
        Ok(())
    })
    .await?;
    converged(&lab, &mut edge, CONVERGE).await?;
    assert_eq!(lab.cluster.objects()?.len(), 100);
    assert_eq!(sim.counters().connections, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgecore_skips_malformed_frames_and_unknown_operations() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let lab = Lab::new()?;
    let sim = lab.replica("cloud1").await?;
    let mut events = sim.events();
    let mut edge = lab.edge(sim.addr()).await?;
    connected(&mut events, Duration::from_secs(30)).await?;
    assert!(sim.inject_frame(NODE, WsFrame::Text("{\"header\":{\"msg_id\":".into())));
    assert!(sim.inject_frame(NODE, WsFrame::Text("this is not json".into())));
    assert!(sim.inject_frame(NODE, WsFrame::Binary(vec![0xff, 0x00, 0x13, 0x37])));
    assert!(sim.inject_frame(NODE, WsFrame::Text("[1,2,3]".into())));
    let unknown = Message::new(
        Route::new(
            "edgecontroller",
            "resource",
            "frobnicate",
            "default/configmap/weird",
        ),
        json!({"metadata": {"name": "weird"}}),
    );
    assert!(sim.inject_message(NODE, unknown));
    lab.cluster.upsert(
        "configmap",
        "default",
        "after-garbage",
        json!({"data": {"ok": "yes"}}),
    )?;
    converged(&lab, &mut edge, CONVERGE).await?;
    let c = sim.counters();
    assert_eq!(c.connections, 1, "the session survived the garbage: {c:?}");
    assert_eq!(c.disconnections, 0, "{c:?}");
    // The edge keeps its keepalives going on the same session.
    events
        .wait_for(
            Duration::from_secs(30),
            "a keepalive after the garbage",
            |e| matches!(e, Event::Upstream { msg, .. } if msg.route.operation == "keepalive"),
        )
        .await?;
    Ok(())
}

/// SIGTERM while the cloud streams objects: metamanager finishes the transaction it is writing,
/// its acks go out before the close frame, and so every version the edge committed is one the
/// cloud has an ack for. What arrived too late to commit is resent on the next session, and the
/// edge converges with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_a_write_storm_leaves_every_committed_version_acked() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let lab = Lab::new()?;
    let sim = lab.replica("cloud1").await?;
    let mut events = sim.events();
    let edge = lab.edge(sim.addr()).await?;
    connected(&mut events, Duration::from_secs(30)).await?;
    lab.with_cluster(|c| {
        for i in 0..400 {
            feed::write(c, FeedKind::Mixed.kind_of(i), i, 0)?;
        }
        Ok(())
    })
    .await?;
    // Well inside the stream: some objects committed, more on the way.
    let mut acked = 0;
    while acked < 60 {
        if let Event::Acked { .. } = events.next_event(CONVERGE, "acks of the stream").await? {
            acked += 1;
        }
    }
    let db = edge.db_path();
    let status = edge.terminate(Duration::from_secs(20)).await?;
    assert!(
        status.is_some_and(|s| s.success()),
        "edgecore stops cleanly on SIGTERM: {status:?}"
    );

    let stored = cloudsim::edge::read_meta(&db)?;
    let state = lab.cluster.acked(NODE)?;
    let mut committed = 0;
    for (key, row) in &stored {
        let Ok(object) = serde_json::from_str::<serde_json::Value>(&row.value) else {
            continue;
        };
        let (Some(uid), Some(rv)) = (
            object.pointer("/metadata/uid").and_then(|v| v.as_str()),
            object
                .pointer("/metadata/resourceVersion")
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        committed += 1;
        let acked_rv = state.objects.iter().find(|o| o.uid == uid).map(|o| o.rv);
        assert!(
            acked_rv.is_some_and(|a| a >= rv),
            "{key} committed at rv {rv}, the cloud's ack says {acked_rv:?}: an ack was lost at shutdown"
        );
    }
    assert!(committed >= 60, "only {committed} objects stored");

    let mut edge = lab.edge(sim.addr()).await?;
    converged(&lab, &mut edge, CONVERGE).await?;
    let stats = lab.cluster.delivery_stats(NODE)?;
    assert!(
        stats.duplicates <= 1,
        "at most the one message in flight at shutdown is sent again: {stats:?}"
    );
    Ok(())
}
