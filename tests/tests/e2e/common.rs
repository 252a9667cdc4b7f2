//! Shared fixtures: a temp lab with PKI and a state file, replicas, edges, convergence checks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use cloudsim::edge::{self, EdgeCore, EdgeOptions};
use cloudsim::{CloudSim, Cluster, Event, EventStream, Pki, PkiOptions, PkiPaths, SimConfig};

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
