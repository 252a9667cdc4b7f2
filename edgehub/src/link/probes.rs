//! What the connection loop asks of endpoints besides a session: does a preferred one answer
//! again (TCP + TLS), does a refusing one accept TCP again, and do renewed certificate files load.

use std::time::Duration;

use tracing::{debug, error, info};

use crate::dial::Target;
use crate::endpoints::Endpoints;
use crate::tls::ClientTls;

/// Targets from the TLS files as they are now on disk; `None` (logged) when they do not load.
pub(super) fn rebuild_targets(
    hub: &config::EdgeHub,
    endpoints: &Endpoints,
    node: &str,
) -> Option<Vec<Target>> {
    let rebuilt = ClientTls::load(hub).and_then(|tls| {
        endpoints
            .iter()
            .map(|ep| Target::new(ep.clone(), &tls, node, hub))
            .collect::<Result<Vec<_>, _>>()
    });
    match rebuilt {
        Ok(targets) => {
            info!("client certificate reloaded");
            Some(targets)
        }
        Err(e) => {
            error!(error = %e, "reloading the client certificate failed, keeping the old one");
            None
        }
    }
}

/// The first of `preferred` that completes a TCP + TLS handshake.
pub(super) async fn probe_first(targets: &[Target], preferred: Vec<usize>) -> Option<usize> {
    for index in preferred {
        let target = targets.get(index)?;
        match target.probe().await {
            Ok(()) => return Some(index),
            Err(e) => {
                debug!(endpoint = %target.endpoint(), error = %e, "preferred endpoint still down")
            }
        }
    }
    None
}

/// How often, and how long at most, a refusing endpoint is checked for TCP during a backoff.
const REACHABILITY_POLL: Duration = Duration::from_millis(200);

/// The first of `candidates` to accept a TCP connection; never resolves without candidates.
pub(super) async fn first_accepting(targets: &[Target], candidates: Vec<usize>) -> usize {
    if candidates.is_empty() {
        return std::future::pending().await;
    }
    loop {
        for &index in &candidates {
            if let Some(target) = targets.get(index)
                && target.accepts_tcp(REACHABILITY_POLL).await
            {
                return index;
            }
        }
        tokio::time::sleep(REACHABILITY_POLL).await;
    }
}
