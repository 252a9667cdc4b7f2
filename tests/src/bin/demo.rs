//! The README's first command: an edge node syncing from a simulated HA CloudCore pair behind a
//! VIP, two failovers (a replica dies and the VIP moves with a reset; the VIP moves silently,
//! leaving a half-open link), the reconnections, and a printed timeline that ends in a
//! consistency check of the edge's SQLite store against the cloud.
//!
//! Everything runs on 127.0.0.1 in a temporary directory; nothing needs root.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloudsim::edge::{EdgeCore, EdgeOptions, diff, read_meta};
use cloudsim::{CloudSim, Cluster, Event, Mode, Pki, PkiOptions, SimConfig, VipProxy, feed};

const NODE: &str = "edge-node-1";
/// Objects written before the first failover.
const INITIAL: usize = 300;

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let t0 = Instant::now();
    let mut tl = Timeline::new(t0);

    println!("edgecore failover demo: two CloudHub replicas behind a VIP, one edge node\n");
    let pki = Pki::generate(&PkiOptions::new(NODE))?;
    let paths = pki.write(&dir.path().join("pki"))?;
    let state = dir.path().join("cluster.db");
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let cloud_a =
        CloudSim::start(SimConfig::new("cloud-a", any, state.clone(), pki.clone())).await?;
    let cloud_b =
        CloudSim::start(SimConfig::new("cloud-b", any, state.clone(), pki.clone())).await?;
    let vip = VipProxy::start(any, cloud_a.addr()).await?;
    tl.mark(&format!(
        "cloud up: cloud-a {} and cloud-b {} behind VIP {}",
        cloud_a.addr(),
        cloud_b.addr(),
        vip.addr()
    ));

    let cluster = Arc::clone(cloud_a.cluster());
    for i in 0..INITIAL {
        feed::write(&cluster, feed_kind(i), i, 0)?;
    }
    tl.mark(&format!(
        "{INITIAL} configmaps, secrets and pods in the cluster"
    ));

    // Product defaults for the link: 2 s pings, 5 s silence limit, 3 s backoff cap.
    let opts = EdgeOptions::new(
        NODE,
        &vip.addr().to_string(),
        paths,
        &dir.path().join("edge"),
    )
    .with_product_link_defaults();
    println!("  (starting edgecore; its log is kept in the temp dir)");
    let mut edge = EdgeCore::spawn(opts).await?;
    let mut events_a = cloud_a.events();
    events_a
        .wait_for(
            Duration::from_secs(120),
            "edgecore connects to cloud-a",
            |e| matches!(e, Event::Connected { .. }),
        )
        .await?;
    tl.mark("edgecore connected to cloud-a through the VIP");
    converge(&cluster, &edge.db_path(), Duration::from_secs(60)).await?;
    tl.mark(&format!(
        "edge store holds all {INITIAL} objects (every one acked)"
    ));

    // A continuous stream of updates through both failovers.
    let streaming = Arc::new(AtomicBool::new(true));
    let written = Arc::new(AtomicUsize::new(0));
    let streamer = tokio::spawn(stream_updates(
        Arc::clone(&cluster),
        Arc::clone(&streaming),
        Arc::clone(&written),
    ));

    // Failover 1: cloud-a dies; the VIP moves to cloud-b and the old connection is reset.
    println!("\nfailover 1: cloud-a dies, the VIP moves to cloud-b (the edge's link is reset)");
    let mut events_b = cloud_b.events();
    let log_mark = log_len(&edge);
    let brk = Instant::now();
    vip.move_to(cloud_b.addr(), Mode::Rst);
    cloud_a.stop().await;
    tl.mark("link lost (cloud-a killed, VIP on cloud-b)");
    let detected = wait_log(&edge, log_mark, "session lost", Duration::from_secs(30)).await?;
    tl.mark_since("edgecore detected the loss", brk, detected);
    events_b
        .wait_for(
            Duration::from_secs(30),
            "edgecore connects to cloud-b",
            |e| matches!(e, Event::Connected { .. }),
        )
        .await?;
    let reconnected = Instant::now();
    tl.mark_since("new session on cloud-b", brk, reconnected);
    converge(&cluster, &edge.db_path(), Duration::from_secs(60)).await?;
    tl.mark_since(
        "edge store equals the cloud again (resynced)",
        brk,
        Instant::now(),
    );
    let rst_reconnect = reconnected.duration_since(brk);

    // Failover 2: the VIP moves silently; the old link is half-open (no RST, no FIN).
    println!("\nfailover 2: the VIP moves to a fresh replica silently (half-open link, no reset)");
    let cloud_c =
        CloudSim::start(SimConfig::new("cloud-c", any, state.clone(), pki.clone())).await?;
    let mut events_c = cloud_c.events();
    let log_mark = log_len(&edge);
    let brk = Instant::now();
    vip.move_to(cloud_c.addr(), Mode::Silent);
    tl.mark("link silently black-holed (VIP now on cloud-c)");
    let detected = wait_log(&edge, log_mark, "session lost", Duration::from_secs(30)).await?;
    tl.mark_since(
        "edgecore detected the silence (ping timeout)",
        brk,
        detected,
    );
    events_c
        .wait_for(
            Duration::from_secs(30),
            "edgecore connects to cloud-c",
            |e| matches!(e, Event::Connected { .. }),
        )
        .await?;
    let reconnected = Instant::now();
    tl.mark_since("new session on cloud-c", brk, reconnected);
    let silent_detect = detected.duration_since(brk);

    streaming.store(false, Ordering::SeqCst);
    streamer.await.context("update stream")??;
    tl.mark(&format!(
        "update stream stopped after {} updates",
        written.load(Ordering::SeqCst)
    ));
    converge(&cluster, &edge.db_path(), Duration::from_secs(60)).await?;
    tl.mark("edge store equals the cloud again (resynced)");
    edge.check_running()?;

    let objects = cluster.objects()?;
    let meta = read_meta(&edge.db_path())?;
    let problems = diff(&objects, &meta);
    let stats = cluster.delivery_stats(NODE)?;
    println!("\ntimeline (seconds since start)");
    tl.print();
    println!("\nsummary");
    println!("  {:<44} {:>10}", "what", "result");
    println!("  {:<44} {:>10}", "-".repeat(44), "-".repeat(10));
    let row = |what: &str, value: String| println!("  {what:<44} {value:>10}");
    row(
        "reconnect after a replica died (VIP reset)",
        format!("{} ms", rst_reconnect.as_millis()),
    );
    row(
        "half-open link noticed (VIP moved silently)",
        format!("{} ms", silent_detect.as_millis()),
    );
    row(
        "object versions delivered to the edge",
        stats.delivered.to_string(),
    );
    row("acks the cloud received", stats.acks.to_string());
    row(
        "versions sent again after a failover",
        stats.duplicates.to_string(),
    );
    row("versions never acked", stats.unacked.to_string());
    println!(
        "\n  (a version sent again is one whose ack the failover cut off; the edge stores it once\n   and acks it again, so nothing is lost or applied twice)"
    );
    if problems.is_empty() {
        println!(
            "\n  consistency: OK, the edge's SQLite store holds exactly the cloud's {} live objects at their current resourceVersion",
            objects.iter().filter(|o| !o.deleted).count()
        );
    } else {
        println!("\n  consistency: FAILED");
        for p in problems.iter().take(20) {
            println!("    {p}");
        }
        bail!(
            "{} differences between the edge store and the cloud",
            problems.len()
        );
    }
    let _ = edge.terminate(Duration::from_secs(10)).await;
    cloud_b.stop().await;
    cloud_c.stop().await;
    vip.stop().await;
    Ok(())
}

fn feed_kind(i: usize) -> &'static str {
    ["configmap", "secret", "pod"][i % 3]
}

/// Updates existing objects (and adds a few) about every 20 ms until told to stop.
async fn stream_updates(
    cluster: Arc<Cluster>,
    running: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
) -> Result<()> {
    let mut n = 0usize;
    while running.load(Ordering::SeqCst) {
        let i = n % INITIAL;
        let c = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || feed::write(&c, feed_kind(i), i, n / INITIAL + 1))
            .await??;
        n += 1;
        written.store(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until the edge store equals the cluster's live objects.
async fn converge(cluster: &Cluster, db: &Path, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let objects = cluster.objects()?;
        if let Ok(meta) = read_meta(db) {
            last = diff(&objects, &meta);
            if last.is_empty() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "edge store did not converge within {within:?}; {} differences, first: {:?}",
        last.len(),
        last.first()
    )
}

/// Waits until the edgecore log, past byte `from`, contains `needle`; returns when it was seen.
async fn wait_log(edge: &EdgeCore, from: u64, needle: &str, within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if log_since(edge, from).contains(needle) {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("edgecore did not log {needle:?} within {within:?}")
}

struct Timeline {
    t0: Instant,
    rows: Vec<(Duration, String)>,
}

impl Timeline {
    fn new(t0: Instant) -> Self {
        Self {
            t0,
            rows: Vec::new(),
        }
    }

    fn mark(&mut self, what: &str) {
        let at = self.t0.elapsed();
        println!("  {:>7.3}s  {what}", at.as_secs_f64());
        self.rows.push((at, what.to_owned()));
    }

    fn mark_since(&mut self, what: &str, since: Instant, at: Instant) {
        let text = format!("{what} (+{} ms)", at.duration_since(since).as_millis());
        let at = at.duration_since(self.t0);
        println!("  {:>7.3}s  {text}", at.as_secs_f64());
        self.rows.push((at, text));
    }

    fn print(&self) {
        for (at, what) in &self.rows {
            println!("  {:>7.3}  {what}", at.as_secs_f64());
        }
    }
}

fn log_path(edge: &EdgeCore) -> PathBuf {
    edge.options().dir.join("edgecore.log")
}

fn log_len(edge: &EdgeCore) -> u64 {
    std::fs::metadata(log_path(edge))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The log text after byte `from` (empty if unreadable).
fn log_since(edge: &EdgeCore, from: u64) -> String {
    let bytes = std::fs::read(log_path(edge)).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
}
