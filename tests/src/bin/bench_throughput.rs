//! Benchmark: acked messages per second for N configmaps (default 1,000) pushed by one simulator
//! replica to a real edgecore, which commits each object durably before it acks.
//!
//! `EDGECORE_BIN=target/release/edgecore cargo run --release -p edgecore-tests --bin bench_throughput -- [COUNT] [QPS]`
//! (without `EDGECORE_BIN` it builds the debug binary with cargo). QPS is the edge's
//! `messageQPS`, which in KubeEdge also paces acks: default 30, 0 = unlimited.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloudsim::edge::{EdgeCore, EdgeOptions};
use cloudsim::feed::{self, FeedKind};
use cloudsim::{CloudSim, Cluster, Event, Pki, PkiOptions, SimConfig};

const NODE: &str = "bench-node";

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let count: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().context("COUNT must be a number")?,
        None => 1000,
    };
    let qps: i32 = match std::env::args().nth(2) {
        Some(a) => a.parse().context("QPS must be a number")?,
        None => 30,
    };
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(&PkiOptions::new(NODE))?;
    let paths = pki.write(&dir.path().join("pki"))?;
    let state = dir.path().join("state.db");
    let cfg = SimConfig::new("cloud1", "127.0.0.1:0".parse()?, state.clone(), pki);
    let sim = CloudSim::start(cfg).await?;
    let mut events = sim.events();
    let mut opts = EdgeOptions::new(
        NODE,
        &sim.addr().to_string(),
        paths,
        &dir.path().join("edge"),
    );
    opts.message_qps = qps;
    let mut edge = EdgeCore::spawn(opts).await?;
    events
        .wait_for(Duration::from_secs(60), "the edge's session", |e| {
            matches!(e, Event::Connected { .. })
        })
        .await?;

    let cluster = Cluster::open(&state)?;
    let started = Instant::now();
    let writer = tokio::task::spawn_blocking(move || -> Result<()> {
        for i in 0..count {
            feed::write(&cluster, FeedKind::ConfigMap.kind_of(i), i, 0)?;
        }
        Ok(())
    });
    let mut acked = 0usize;
    while acked < count {
        match events
            .next_event(Duration::from_secs(120), "the next ack")
            .await?
        {
            Event::Acked { .. } => acked += 1,
            Event::Disconnected { reason, .. } => bail!("session ended: {}", reason.as_str()),
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    writer.await??;
    edge.check_running()?;
    let c = sim.counters();
    println!(
        "messageQPS {qps}: acked {acked} configmaps in {:.3} s: {:.0} acked messages/s (sent {}, resent {})",
        elapsed.as_secs_f64(),
        acked as f64 / elapsed.as_secs_f64(),
        c.sent,
        c.resent
    );
    edge.terminate(Duration::from_secs(10)).await?;
    sim.stop().await;
    Ok(())
}
