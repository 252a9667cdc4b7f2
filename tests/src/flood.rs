//! A downstream flood (issue #8 item 4): `n` configmap `update`s written straight into the
//! node's WebSocket as fast as the session takes them, with no one-in-flight pacing (the way
//! CloudHub's no-ack loop sends), while edgecore's memory is sampled from `/proc/<pid>/status`.
//! Only TCP backpressure from the edge's bounded queues holds the cloud back. The objects do
//! not go through the cluster state, so the replica's own queue and resync leave them alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgehub::{Message, Route, op};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

use crate::edge::{EdgeCore, EdgeOptions};
use crate::events::Event;
use crate::pki::{Pki, PkiOptions};
use crate::sim::{CloudSim, SimConfig};

/// The node the flooded edge runs as.
pub const NODE: &str = "flood-node";
/// Name prefix of the flooded configmaps.
const PREFIX: &str = "flood-";

/// Memory of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Mem {
    /// VmRSS.
    pub rss_kib: u64,
    /// RssAnon: heap and stacks.
    pub anon_kib: u64,
    /// VmHWM: the kernel's own peak of VmRSS.
    pub hwm_kib: u64,
}

impl Mem {
    /// Field-wise maximum.
    pub fn max(self, o: Mem) -> Mem {
        Mem {
            rss_kib: self.rss_kib.max(o.rss_kib),
            anon_kib: self.anon_kib.max(o.anon_kib),
            hwm_kib: self.hwm_kib.max(o.hwm_kib),
        }
    }

    /// Reads `/proc/<pid>/status`.
    pub fn read(pid: u32) -> Result<Mem> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        let field = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Mem {
            rss_kib: field("VmRSS:")?,
            anon_kib: field("RssAnon:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }
}

impl std::fmt::Display for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {}, RssAnon {}, VmHWM {}",
            kib(self.rss_kib),
            kib(self.anon_kib),
            kib(self.hwm_kib)
        )
    }
}

/// `12104 kB (11.82 MiB)`.
pub fn kib(k: u64) -> String {
    format!("{k} kB ({:.2} MiB)", k as f64 / 1024.0)
}

/// The outcome of a flood.
#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    /// Messages sent.
    pub messages: u64,
    /// Connected, before the first message.
    pub idle: Mem,
    /// Peak over the samples (every 100 ms) from the first message to the last ack.
    pub peak: Mem,
    /// After the last ack.
    pub after: Mem,
    /// Samples taken.
    pub samples: usize,
    /// First message to the last one handed to the session.
    pub sent_in: Duration,
    /// First message to the last ack.
    pub acked_in: Duration,
    /// Acks the replica received for the flooded messages.
    pub acks: u64,
    /// Flooded configmaps in the edge's store at their rv.
    pub stored: u64,
    /// Sessions the replica saw (1 = the flood never broke the link).
    pub sessions: u64,
}

/// The `i`th flooded message: configmap `flood-<i>` at rv `i + 1`, ack required.
fn message(i: u64) -> Message {
    let name = format!("{PREFIX}{i:06}");
    let rv = (i + 1).to_string();
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "resourceVersion": rv,
        },
        "data": {"index": i.to_string(), "payload": "x".repeat(200)},
    });
    Message::new(
        Route::new(
            "edgecontroller",
            "resource",
            op::UPDATE,
            &format!("default/configmap/{name}"),
        ),
        body,
    )
    .with_resource_version(rv)
}

/// Flooded configmaps the edge stores at their own rv.
fn stored(db: &Path) -> Result<u64> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM meta WHERE type='configmap' AND key LIKE 'default/configmap/flood-%'
         AND json_extract(value, '$.metadata.resourceVersion') =
             CAST(CAST(substr(key, 25) AS INTEGER) + 1 AS TEXT)",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Floods a fresh edge (product link defaults, `messageQPS` 30) with `n` messages; fails if a
/// message is not acked within `within` after the last one went out.
pub async fn run(
    n: u64,
    within: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<FloodReport> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let pki = Pki::generate(&PkiOptions::new(NODE))?;
    let paths = pki.write(&dir.path().join("pki"))?;
    let state: PathBuf = dir.path().join("cluster.db");
    let sim = CloudSim::start(SimConfig::new(
        "cloud-a",
        "127.0.0.1:0".parse()?,
        state,
        pki,
    ))
    .await?;
    let opts = EdgeOptions::new(
        NODE,
        &sim.addr().to_string(),
        paths,
        &dir.path().join("edge"),
    )
    .with_product_link_defaults();
    let db = opts.db_path();
    let mut events = sim.events();
    let mut edge = EdgeCore::spawn(opts).await?;
    events
        .wait_for(Duration::from_secs(60), "the edge's session", |e| {
            matches!(e, Event::Connected { .. })
        })
        .await?;
    let pid = edge.pid().context("edgecore pid")?;
    let mut report = FloodReport {
        messages: n,
        idle: Mem::read(pid)?,
        ..FloodReport::default()
    };
    let base = sim.counters().stale_acks;
    let sampler = Arc::new(std::sync::Mutex::new((Mem::default(), 0usize)));
    let stop = tokio_util::sync::CancellationToken::new();
    let sampling = {
        let (sampler, stop) = (Arc::clone(&sampler), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let (Ok(m), Ok(mut s)) = (Mem::read(pid), sampler.lock()) {
                    s.0 = s.0.max(m);
                    s.1 += 1;
                }
            }
        })
    };
    let t0 = Instant::now();
    let mut i = 0u64;
    let mut last_note = Instant::now();
    while i < n {
        if sim.inject_message(NODE, message(i)) {
            i += 1;
            continue;
        }
        // The session's queue is full (the edge is not reading) or the session is gone.
        edge.check_running()?;
        if sim.connected_nodes().iter().all(|x| x != NODE) {
            bail!("the edge's session ended during the flood after {i} messages");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            progress(&format!(
                "  {i} sent, {} acked, {:.0} s",
                sim.counters().stale_acks - base,
                t0.elapsed().as_secs_f64()
            ));
        }
    }
    report.sent_in = t0.elapsed();
    progress(&format!(
        "  all {n} handed to the session in {:.1} s",
        report.sent_in.as_secs_f64()
    ));
    let acked = crate::wait::eventually("an ack for every flooded message", within, || {
        let got = sim.counters().stale_acks - base;
        let running = edge.check_running();
        async move {
            running?;
            anyhow::ensure!(got >= n, "{got} of {n} acked");
            Ok(got)
        }
    })
    .await;
    report.acks = match acked {
        Ok(got) => got,
        Err(e) => {
            stop.cancel();
            return Err(e.context(format!("log tail:\n{}", edge.log_tail(20))));
        }
    };
    report.acked_in = t0.elapsed();
    stop.cancel();
    let _ = sampling.await;
    report.after = Mem::read(pid)?;
    if let Ok(s) = sampler.lock() {
        report.peak = s.0.max(report.after);
        report.samples = s.1;
    }
    report.stored = tokio::task::spawn_blocking(move || stored(&db))
        .await
        .context("count task")??;
    report.sessions = sim.counters().connections;
    let _ = edge.terminate(Duration::from_secs(10)).await;
    sim.stop().await;
    Ok(report)
}
