//! `cloudsim`: the cloud simulator's command line, for the demo, the benchmarks and the netns
//! VIP lab. This is the CLI module: it prints results on stdout; logs go to stderr.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cloudsim::feed::{self, FeedKind};
use cloudsim::{CloudSim, Cluster, Pki, PkiOptions, SimConfig, edge};

#[derive(Debug, Parser)]
#[command(name = "cloudsim", about = "CloudHub simulator for edgecore tests")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Writes DIR/ca.crt ca.key server.crt server.key edge.crt edge.key (PEM).
    Pki {
        #[arg(long)]
        dir: PathBuf,
        /// Node name of the edge certificate (CN system:node:NAME).
        #[arg(long)]
        node: String,
        /// Server SAN, an IP address or DNS name; repeatable. Default: 127.0.0.1 and localhost.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Also put an empty DNS SAN in the server certificate (CloudCore's default).
        #[arg(long)]
        empty_dns_san: bool,
        /// Another edge to certify with the same CA: writes DIR/edge-NAME.crt and .key. Repeatable.
        #[arg(long = "extra-node")]
        extra_nodes: Vec<String>,
    },
    /// Runs one CloudHub replica until SIGTERM/SIGINT.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        /// Shared cluster state (SQLite).
        #[arg(long)]
        state: PathBuf,
        /// Directory written by `cloudsim pki`.
        #[arg(long)]
        pki: PathBuf,
        #[arg(long, default_value = "cloud1")]
        name: String,
        /// Seconds without keepalive before a session is closed.
        #[arg(long, default_value_t = 30)]
        keepalive_timeout: u64,
        /// Resend period of an unacked message, milliseconds.
        #[arg(long, default_value_t = 5000)]
        resend_ms: u64,
        /// Resync period, milliseconds.
        #[arg(long, default_value_t = 5000)]
        resync_ms: u64,
    },
    /// Writes objects into the shared state.
    Feed {
        #[arg(long)]
        state: PathBuf,
        /// Objects to create.
        #[arg(long)]
        count: usize,
        /// configmap | secret | pod | mixed
        #[arg(long, default_value = "configmap")]
        kind: String,
        /// Writes per second (creates and updates); unlimited when absent.
        #[arg(long)]
        rate: Option<f64>,
        /// Updates of each object after all are created.
        #[arg(long, default_value_t = 0)]
        updates_per_object: usize,
    },
    /// Exits 0 iff the edge's meta table holds exactly the cluster's live objects at their RVs.
    Check {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        edge_db: PathBuf,
        #[arg(long)]
        node: String,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cloudsim: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Pki {
            dir,
            node,
            sans,
            empty_dns_san,
            extra_nodes,
        } => {
            let mut opts = PkiOptions::new(&node);
            if !sans.is_empty() {
                opts.sans = sans;
            }
            opts.empty_dns_san = empty_dns_san;
            let (pki, extras) = Pki::generate_with_extra_edges(&opts, &extra_nodes)?;
            let paths = pki.write(&dir)?;
            for e in extras {
                std::fs::write(dir.join(format!("edge-{}.crt", e.node)), e.crt)?;
                std::fs::write(dir.join(format!("edge-{}.key", e.node)), e.key)?;
            }
            println!("{}", paths.ca_crt.parent().unwrap_or(&dir).display());
            Ok(0)
        }
        Cmd::Serve {
            listen,
            state,
            pki,
            name,
            keepalive_timeout,
            resend_ms,
            resync_ms,
        } => {
            let mut cfg = SimConfig::new(&name, listen, state, Pki::read(&pki)?);
            cfg.keepalive_timeout = Duration::from_secs(keepalive_timeout);
            cfg.resend_interval = Duration::from_millis(resend_ms);
            cfg.resync_interval = Duration::from_millis(resync_ms);
            runtime()?.block_on(serve(cfg))?;
            Ok(0)
        }
        Cmd::Feed {
            state,
            count,
            kind,
            rate,
            updates_per_object,
        } => {
            let kind = FeedKind::parse(&kind)
                .with_context(|| format!("unknown kind {kind}: configmap|secret|pod|mixed"))?;
            runtime()?.block_on(feed_objects(state, count, kind, rate, updates_per_object))?;
            Ok(0)
        }
        Cmd::Check {
            state,
            edge_db,
            node,
        } => {
            let cluster = Cluster::open(&state)?;
            let objects = cluster.objects()?;
            let meta = edge::read_meta(&edge_db)?;
            let diffs = edge::diff(&objects, &meta);
            let stats = cluster.delivery_stats(&node)?;
            if diffs.is_empty() {
                println!(
                    "ok: {} objects match; node {node}: {} delivered, {} duplicates, {} acks",
                    objects.len(),
                    stats.delivered,
                    stats.duplicates,
                    stats.acks
                );
                Ok(0)
            } else {
                for d in &diffs {
                    println!("{d}");
                }
                println!("{} differences over {} objects", diffs.len(), objects.len());
                Ok(1)
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

async fn serve(cfg: SimConfig) -> Result<()> {
    let sim = CloudSim::start(cfg).await?;
    println!("listening {}", sim.addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    sim.stop().await;
    Ok(())
}

async fn feed_objects(
    state: PathBuf,
    count: usize,
    kind: FeedKind,
    rate: Option<f64>,
    updates: usize,
) -> Result<()> {
    let cluster = std::sync::Arc::new(Cluster::open(&state)?);
    let mut tick = rate
        .filter(|r| *r > 0.0)
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r)));
    let mut last_rv = 0;
    for version in 0..=updates {
        for i in 0..count {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            let c = cluster.clone();
            let k = kind.kind_of(i);
            let (_, rv) =
                tokio::task::spawn_blocking(move || feed::write(&c, k, i, version)).await??;
            last_rv = rv;
        }
    }
    println!("fed {} writes; last rv {last_rv}", count * (updates + 1));
    Ok(())
}
