//! Chaos runs against the real `edgecore` during a write storm, shared by `bench chaos-vip`,
//! `bench chaos-kill` and the reduced CI test:
//!
//! * [`vip`]: the VIP moves between two replicas, by reset or silently, in a seeded random
//!   order, at random moments.
//! * [`kill`]: `kill -9` of edgecore at random moments, then a restart on the same data.
//!
//! After each step: `PRAGMA integrity_check` of the edge database and "every version the
//! cloud recorded as acked is stored" ([`acked_stored`]). At the end: the storm stops and the
//! edge store must equal the cluster with every current version acked. Invariant violations
//! go into [`ChaosReport::problems`]; an `Err` means the harness itself failed.

mod check;
mod storm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub use check::{acked_stored, integrity};
pub use storm::{Storm, StormStats};

use crate::cluster::{Cluster, DeliveryStats};
use crate::edge::{self, EdgeCore, EdgeOptions};
use crate::events::{Event, EventStream};
use crate::pki::{Pki, PkiOptions, PkiPaths};
use crate::proxy::{Mode, VipProxy};
use crate::sim::{CloudSim, SimConfig};

/// The node the chaos edge runs as.
pub const NODE: &str = "chaos-node";

/// A small seeded generator (splitmix64): the same seed gives the same storm, modes and
/// moments.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed from the clock, for runs that print the seed they used.
    pub fn clock_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo)))
    }
}

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// VIP moves, or kills.
    pub steps: usize,
    /// Seed of the storm, the modes and the moments.
    pub seed: u64,
    /// One storm write every this long.
    pub write_period: Duration,
    /// Names the storm writes (configmap, secret, pod in turn).
    pub pool: usize,
    /// Random pause before each step, in milliseconds: `lo..hi`.
    pub pause_ms: (u64, u64),
    /// synccontroller period of the replicas.
    pub resync_interval: Duration,
    /// Bound on the final convergence once the storm stops.
    pub converge_within: Duration,
    /// `EDGE_BIN`-independent settings of the edge: `messageQPS`.
    pub message_qps: i32,
}

impl ChaosOptions {
    /// `steps` steps with `seed`: 200 writes/s over 300 names, pauses of 50–1500 ms, CloudHub's
    /// 5 s resync, 3 min to converge.
    pub fn new(steps: usize, seed: u64) -> Self {
        Self {
            steps,
            seed,
            write_period: Duration::from_millis(5),
            pool: 300,
            pause_ms: (50, 1500),
            resync_interval: Duration::from_secs(5),
            converge_within: Duration::from_secs(180),
            message_qps: 30,
        }
    }
}

/// One VIP move.
#[derive(Debug, Clone, Copy)]
pub struct MoveTiming {
    /// How the VIP moved.
    pub mode: Mode,
    /// Move → edgecore's `session lost` log line.
    pub detected: Duration,
    /// Move → the new replica's `Connected` event.
    pub connected: Duration,
}

/// The outcome of a chaos run.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// The seed used.
    pub seed: u64,
    /// Steps done.
    pub steps: usize,
    /// Writes of the storm.
    pub storm: StormStats,
    /// Per-move timings (VIP runs).
    pub moves: Vec<MoveTiming>,
    /// Sessions the replicas saw start.
    pub sessions: u64,
    /// Integrity and acked-version checks done.
    pub checks: usize,
    /// Objects live at the end.
    pub objects: usize,
    /// Delivery bookkeeping of the node at the end.
    pub deliveries: DeliveryStats,
    /// Start to converged.
    pub duration: Duration,
    /// Storm stop to converged.
    pub converged_after: Duration,
    /// Invariant violations; empty = PASS.
    pub problems: Vec<String>,
}

impl ChaosReport {
    /// No invariant was violated.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Progress lines for long runs.
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// A temp dir with certificates and a cluster state file.
struct Lab {
    dir: tempfile::TempDir,
    pki: Pki,
    paths: PkiPaths,
    state: PathBuf,
    cluster: Arc<Cluster>,
    resync: Duration,
}

impl Lab {
    fn new(resync: Duration) -> Result<Self> {
        let dir = tempfile::tempdir().context("temporary directory")?;
        let pki = Pki::generate(&PkiOptions::new(NODE))?;
        let paths = pki.write(&dir.path().join("pki"))?;
        let state = dir.path().join("cluster.db");
        let cluster = Arc::new(Cluster::open(&state)?);
        Ok(Self {
            dir,
            pki,
            paths,
            state,
            cluster,
            resync,
        })
    }

    async fn replica(&self, name: &str) -> Result<CloudSim> {
        let mut cfg = SimConfig::new(
            name,
            "127.0.0.1:0".parse()?,
            self.state.clone(),
            self.pki.clone(),
        );
        cfg.resync_interval = self.resync;
        CloudSim::start(cfg).await
    }

    /// Test link timings ([`EdgeOptions::new`]: pings every 500 ms, 2 s silence limit, 1 s
    /// backoff cap).
    fn edge_options(&self, server: SocketAddr, qps: i32) -> EdgeOptions {
        let mut o = EdgeOptions::new(
            NODE,
            &server.to_string(),
            self.paths.clone(),
            &self.dir.path().join("edge"),
        );
        o.message_qps = qps;
        o
    }

    /// Runs both checks on the edge database; findings go to `problems` under `when`.
    async fn check(&self, db: PathBuf, when: &str, problems: &mut Vec<String>) -> Result<()> {
        let cluster = Arc::clone(&self.cluster);
        let (bad, lost) = tokio::task::spawn_blocking(move || -> Result<_> {
            Ok((integrity(&db)?, acked_stored(&cluster, NODE, &db)?))
        })
        .await
        .context("check task")??;
        if let Some(bad) = bad {
            problems.push(format!("{when}: integrity_check: {bad}"));
        }
        problems.extend(lost.into_iter().map(|p| format!("{when}: {p}")));
        Ok(())
    }

    /// Stops the storm and waits until the edge store equals the cluster with every current
    /// version acked; a timeout becomes a problem.
    async fn finish(
        &self,
        storm: Storm,
        edge: &mut EdgeCore,
        opts: &ChaosOptions,
        report: &mut ChaosReport,
    ) -> Result<()> {
        report.storm = storm.stop().await?;
        let stopped = Instant::now();
        if let Err(e) = edge::converged(&self.cluster, NODE, edge, opts.converge_within).await {
            report.problems.push(format!("final convergence: {e:#}"));
        }
        report.converged_after = stopped.elapsed();
        self.check(edge.db_path(), "end", &mut report.problems)
            .await?;
        report.checks += 1;
        let cluster = Arc::clone(&self.cluster);
        let (objects, deliveries) = tokio::task::spawn_blocking(move || -> Result<_> {
            Ok((cluster.objects()?.len(), cluster.delivery_stats(NODE)?))
        })
        .await
        .context("stats task")??;
        report.objects = objects;
        report.deliveries = deliveries;
        Ok(())
    }
}

async fn session_up(events: &mut EventStream, what: &str) -> Result<()> {
    events
        .wait_for(
            Duration::from_secs(60),
            what,
            |e| matches!(e, Event::Connected { node, .. } if node == NODE),
        )
        .await
        .map(|_| ())
}

/// `opts.steps` VIP moves between two replicas during the storm; see the module docs.
pub async fn vip(opts: &ChaosOptions, progress: Progress<'_>) -> Result<ChaosReport> {
    let t0 = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let lab = Lab::new(opts.resync_interval)?;
    let replicas = [lab.replica("cloud-a").await?, lab.replica("cloud-b").await?];
    let vip = VipProxy::start("127.0.0.1:0".parse()?, replicas[0].addr()).await?;
    let mut events = replicas[0].events();
    let mut edge = EdgeCore::spawn(lab.edge_options(vip.addr(), opts.message_qps)).await?;
    session_up(&mut events, "the first session").await?;
    let storm = Storm::start(
        Arc::clone(&lab.cluster),
        rng.next_u64(),
        opts.write_period,
        opts.pool,
    );
    let mut report = ChaosReport {
        seed: opts.seed,
        ..ChaosReport::default()
    };
    let mut at = 0usize;
    for n in 0..opts.steps {
        tokio::time::sleep(rng.millis(opts.pause_ms.0, opts.pause_ms.1)).await;
        anyhow::ensure!(!storm.is_finished(), "the storm stopped early");
        let mode = if rng.below(2) == 0 {
            Mode::Rst
        } else {
            Mode::Silent
        };
        at = 1 - at;
        let target = replicas.get(at).context("two replicas")?;
        let mut events = target.events();
        let mark = edge.log_len();
        let moved = Instant::now();
        vip.move_to(target.addr(), mode);
        let lost = edge
            .wait_log(mark, "session lost", Duration::from_secs(30))
            .await;
        session_up(&mut events, "the session on the new replica").await?;
        let connected = moved.elapsed();
        let detected = match lost {
            Ok(t) => t.saturating_duration_since(moved),
            Err(e) => {
                report.problems.push(format!("move {}: {e:#}", n + 1));
                connected
            }
        };
        edge.check_running()?;
        report.moves.push(MoveTiming {
            mode,
            detected,
            connected,
        });
        lab.check(
            edge.db_path(),
            &format!("after move {}", n + 1),
            &mut report.problems,
        )
        .await?;
        report.checks += 1;
        report.steps += 1;
        progress(&format!(
            "move {:>3} {:<6} detected {:>7.1} ms, connected {:>7.1} ms",
            n + 1,
            mode_name(mode),
            ms(detected),
            ms(connected)
        ));
    }
    lab.finish(storm, &mut edge, opts, &mut report).await?;
    report.sessions = replicas.iter().map(|r| r.counters().connections).sum();
    report.duration = t0.elapsed();
    let _ = edge.terminate(Duration::from_secs(10)).await;
    for r in replicas {
        r.stop().await;
    }
    vip.stop().await;
    Ok(report)
}

/// `opts.steps` rounds of `kill -9` at a random moment after the start, checks on the dead
/// edge's database, and a restart; see the module docs.
pub async fn kill(opts: &ChaosOptions, progress: Progress<'_>) -> Result<ChaosReport> {
    let t0 = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let lab = Lab::new(opts.resync_interval)?;
    let sim = lab.replica("cloud-a").await?;
    let edge_opts = lab.edge_options(sim.addr(), opts.message_qps);
    let mut events = sim.events();
    let mut edge = EdgeCore::spawn(edge_opts.clone()).await?;
    session_up(&mut events, "the first session").await?;
    let storm = Storm::start(
        Arc::clone(&lab.cluster),
        rng.next_u64(),
        opts.write_period,
        opts.pool,
    );
    let mut report = ChaosReport {
        seed: opts.seed,
        ..ChaosReport::default()
    };
    for n in 0..opts.steps {
        let pause = rng.millis(opts.pause_ms.0, opts.pause_ms.1);
        tokio::time::sleep(pause).await;
        anyhow::ensure!(!storm.is_finished(), "the storm stopped early");
        // A crash is a finding in itself; the kill below then only reaps it.
        if let Err(e) = edge.check_running() {
            report
                .problems
                .push(format!("before kill {}: {e:#}", n + 1));
        }
        let opts_again = edge.kill().await?;
        let acked = sim.counters().acked;
        lab.check(
            edge_opts.db_path(),
            &format!("after kill {}", n + 1),
            &mut report.problems,
        )
        .await?;
        report.checks += 1;
        report.steps += 1;
        progress(&format!(
            "kill {:>3} after {:>5} ms: checked ({} acks so far, {} problems)",
            n + 1,
            pause.as_millis(),
            acked,
            report.problems.len()
        ));
        edge = EdgeCore::spawn(opts_again).await?;
    }
    let mut events = sim.events();
    if sim.connected_nodes().iter().all(|n| n != NODE) {
        session_up(&mut events, "the session after the last restart").await?;
    }
    lab.finish(storm, &mut edge, opts, &mut report).await?;
    report.sessions = sim.counters().connections;
    report.duration = t0.elapsed();
    let _ = edge.terminate(Duration::from_secs(10)).await;
    sim.stop().await;
    Ok(report)
}

/// `reset` or `silent`.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Rst => "reset",
        Mode::Silent => "silent",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
