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

/// A cloud message of hundreds of MB is refused at its frame header (32 MiB cap, as CloudHub's),
/// with a log line that says so: the session ends, the edge reconnects and keeps syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_cloud_frame_is_refused_and_the_edge_carries_on() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let lab = Lab::new()?;
    let sim = lab.replica("cloud1").await?;
    let mut events = sim.events();
    let mut edge = lab.edge(sim.addr()).await?;
    connected(&mut events, Duration::from_secs(30)).await?;
    // 300 MB announced in the frame header; the edge never buffers it.
    assert!(sim.inject_frame(NODE, WsFrame::Binary(vec![b' '; 300 << 20])));
    connected(&mut events, Duration::from_secs(30)).await?;
    lab.cluster.upsert(
        "configmap",
        "default",
        "after-the-big-one",
        json!({"data": {"ok": "yes"}}),
    )?;
    converged(&lab, &mut edge, CONVERGE).await?;
    let log = std::fs::read_to_string(edge.options().dir.join("edgecore.log"))?;
    assert!(
        log.contains("cloud message over the size limit refused"),
        "{}",
        edge.options().dir.display()
    );
    edge.check_running()?;
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

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()?
            .success();
        anyhow::ensure!(ok, "mount -t tmpfs at {} failed (needs root)", at.display());
        Ok(Self(at.to_owned()))
    }

    fn resize(&self, size: &str) -> Result<()> {
        self.remount(&format!("size={size}"))
    }

    fn remount(&self, options: &str) -> Result<()> {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()?
            .success();
        anyhow::ensure!(ok, "remount of {} with {options} failed", self.0.display());
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The disk fills up during a write storm: SQLite says FULL, the edge acks nothing it could not
/// store, says so in one error line and the write-failure metric, keeps running, and catches up
/// by itself once space returns. Needs root for the tmpfs: tests/run.sh runs it with the
/// `--ignored root_` tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a small tmpfs; tests/run.sh runs it"]
async fn root_a_full_disk_acks_nothing_it_cannot_store_and_recovers() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let lab = Lab::new()?;
    let sim = lab.replica("cloud1").await?;
    let mut events = sim.events();
    let disk = Tmpfs::mount(&lab.dir.path().join("small"), "1m")?;
    let mut opts = cloudsim::edge::EdgeOptions::new(
        NODE,
        &sim.addr().to_string(),
        lab.paths.clone(),
        &lab.dir.path().join("edge"),
    );
    opts.data_source = Some(disk.0.join("edgecore.db"));
    let mut edge = cloudsim::edge::EdgeCore::spawn(opts.clone()).await?;
    connected(&mut events, Duration::from_secs(30)).await?;
    // About 3 MB of configmaps for a 1 MB disk.
    lab.with_cluster(|c| {
        for i in 0..150 {
            c.upsert(
                "configmap",
                feed::NAMESPACE,
                &format!("big-{i:03}"),
                json!({"data": {"blob": "x".repeat(20_000)}}),
            )?;
        }
        Ok(())
    })
    .await?;
    let log = edge.options().dir.join("edgecore.log");
    cloudsim::eventually("a disk_full store failure in the log", CONVERGE, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log)?;
            anyhow::ensure!(text.contains("failure=\"disk_full\""), "not yet");
            Ok(())
        }
    })
    .await?;
    edge.check_running()?;
    // Nothing the cloud holds an ack for is missing at the edge.
    let acked = lab.cluster.acked(NODE)?;
    let stored = cloudsim::edge::read_meta(&edge.db_path())?;
    for o in acked.objects.iter().filter(|o| !o.deleted) {
        let row = stored.get(&o.resource);
        assert!(
            row.is_some(),
            "{} acked at rv {} but not stored",
            o.resource,
            o.rv
        );
    }
    assert!(
        acked.objects.len() < 150,
        "the disk did not fill: {} acked",
        acked.objects.len()
    );
    let metrics = edge_metrics(&edge).await?;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("edgecore_store_write_failures_total{failure=\"disk_full\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    // Space returns: the cloud's resends are stored and acked, nothing lost.
    disk.resize("64m")?;
    converged(&lab, &mut edge, CONVERGE).await?;
    edge.check_running()?;

    // A read-only file system at start: a clear error naming the file and the cause, no start,
    // and the file untouched; writable again, the edge starts and serves from it.
    edge.terminate(Duration::from_secs(20)).await?;
    let before = std::fs::read(opts.db_path())?;
    disk.remount("ro")?;
    let mut refused = cloudsim::edge::EdgeCore::spawn(opts.clone()).await?;
    let exited = cloudsim::eventually(
        "edgecore to refuse the read-only database",
        CONVERGE,
        || {
            let done = refused.check_running().is_err();
            async move {
                anyhow::ensure!(done, "still running");
                Ok(())
            }
        },
    )
    .await;
    exited?;
    let text = std::fs::read_to_string(&log)?;
    assert!(
        text.contains("read-only") && text.contains(&opts.db_path().display().to_string()),
        "{}",
        text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    disk.remount("rw")?;
    assert_eq!(
        std::fs::read(opts.db_path())?,
        before,
        "the file was left as it was"
    );
    let mut edge = cloudsim::edge::EdgeCore::spawn(opts).await?;
    converged(&lab, &mut edge, CONVERGE).await?;
    Ok(())
}

/// The edge's /metrics text.
async fn edge_metrics(edge: &cloudsim::edge::EdgeCore) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = edge
        .health_addr()
        .ok_or_else(|| anyhow::anyhow!("no health address logged"))?;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
