//! Shared fixtures: a temp lab with PKI and a state file, replicas, edges, convergence checks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use cloudsim::edge::{self, EdgeCore, EdgeOptions};
use cloudsim::{
    CloudSim, Cluster, Event, EventStream, Pki, PkiOptions, PkiPaths, SimConfig, eventually,
};

/// Heavy tests (real edgecore, hundreds of objects) run one at a time: 2 cores are shared.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) const NODE: &str = "edge-node-1";

/// Generous bound for anything that involves the real edgecore.
pub(crate) const CONVERGE: Duration = Duration::from_secs(120);

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub(crate) struct Lab {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) pki: Pki,
    pub(crate) paths: PkiPaths,
    pub(crate) state: PathBuf,
    pub(crate) cluster: Arc<Cluster>,
}

impl Lab {
    pub(crate) fn new() -> Result<Self> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let pki = Pki::generate(&PkiOptions::new(NODE))?;
        let paths = pki.write(&dir.path().join("pki"))?;
        let state = dir.path().join("state.db");
        let cluster = Arc::new(Cluster::open(&state)?);
        Ok(Self {
            dir,
            pki,
            paths,
            state,
            cluster,
        })
    }

    /// Test timings: CloudHub's 5 s resend and 30 s keepalive, a 1 s resync.
    pub(crate) fn sim_config(&self, name: &str) -> SimConfig {
        let mut cfg = SimConfig::new(
            name,
            "127.0.0.1:0".parse().expect("literal address"),
            self.state.clone(),
            self.pki.clone(),
        );
        cfg.resync_interval = Duration::from_secs(1);
        cfg
    }

    pub(crate) async fn replica(&self, name: &str) -> Result<CloudSim> {
        CloudSim::start(self.sim_config(name)).await
    }

    pub(crate) async fn edge(&self, server: std::net::SocketAddr) -> Result<EdgeCore> {
        let opts = EdgeOptions::new(
            NODE,
            &server.to_string(),
            self.paths.clone(),
            &self.dir.path().join("edge"),
        );
        EdgeCore::spawn(opts).await
    }

    /// Runs a blocking cluster call off the runtime.
    pub(crate) async fn with_cluster<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Cluster) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let c = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(&c)).await?
    }
}

pub(crate) async fn connected(events: &mut EventStream, within: Duration) -> Result<String> {
    match events
        .wait_for(within, "the edge's session", |e| {
            matches!(e, Event::Connected { .. })
        })
        .await?
    {
        Event::Connected { replica, .. } => Ok(replica),
        _ => bail!("unreachable: filtered for Connected"),
    }
}

/// Waits until the edge's meta table equals the live objects and every current version sent
/// to the node was acked.
pub(crate) async fn converged(lab: &Lab, edge: &mut EdgeCore, within: Duration) -> Result<()> {
    edge::converged(&lab.cluster, NODE, edge, within).await
}

/// The edge's log tail with an error, so a failed wait shows what edgecore said.
pub(crate) fn with_log<T>(res: Result<T>, edge: &EdgeCore) -> Result<T> {
    res.map_err(|e| anyhow::anyhow!("{e:#}\nedgecore log tail:\n{}", edge.log_tail(40)))
}

/// Distinct `renewTime`s of the node Lease, in the order they were seen.
#[derive(Clone, Default)]
pub(crate) struct Renewals(Arc<Mutex<Vec<i64>>>);

impl Renewals {
    /// Polls the cluster's Lease until `more` renewals beyond those already seen have arrived.
    pub(crate) async fn await_more(
        &self,
        lab: &Lab,
        edge: &EdgeCore,
        more: usize,
    ) -> Result<Vec<i64>> {
        let target = self.snapshot()?.len() + more;
        let wait = eventually("node lease renewals", Duration::from_secs(30), || {
            let seen = self.0.clone();
            async move {
                let lease = lab
                    .with_cluster(|c| c.object("lease", "kube-node-lease", NODE))
                    .await?
                    .context("no Lease in kube-node-lease yet")?
                    .body;
                let at = lease["spec"]["renewTime"].as_str().unwrap_or_default();
                let at = parse_micro_time(at).with_context(|| format!("renewTime of {lease}"))?;
                let mut seen = seen.lock().map_err(|_| anyhow!("poisoned"))?;
                if seen.last() != Some(&at) {
                    seen.push(at);
                }
                ensure!(seen.len() >= target, "renewals so far: {seen:?}");
                Ok(())
            }
        })
        .await;
        with_log(wait, edge)?;
        self.snapshot()
    }

    fn snapshot(&self) -> Result<Vec<i64>> {
        Ok(self.0.lock().map_err(|_| anyhow!("poisoned"))?.clone())
    }
}

/// Seconds since the epoch of a Kubernetes MicroTime (`2026-12-04T21:03:05.123456Z`).
pub(crate) fn parse_micro_time(s: &str) -> Result<i64> {
    let (date, time) = s.split_once('T').context("no T")?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = match (d.next(), d.next(), d.next()) {
        (Some(Ok(y)), Some(Ok(m)), Some(Ok(day))) => (y, m, day),
        _ => anyhow::bail!("bad date {date:?}"),
    };
    let hms: Vec<i64> = time
        .trim_end_matches('Z')
        .split(['.', ':'])
        .take(3)
        .map(str::parse::<i64>)
        .collect::<Result<_, _>>()?;
    ensure!(hms.len() == 3, "bad time {time:?}");
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hms[0] * 3_600 + hms[1] * 60 + hms[2])
}

#[test]
fn micro_time_parses() -> Result<()> {
    assert_eq!(parse_micro_time("1970-01-01T00:00:00Z")?, 0);
    assert_eq!(
        parse_micro_time("2026-12-04T21:03:05.123456Z")?,
        1_796_418_185
    );
    assert!(parse_micro_time("yesterday").is_err());
    Ok(())
}
