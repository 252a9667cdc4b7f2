//! Renewing the edge certificate at a random 70–90 % of its lifetime and telling the hub.
//!
//! The renewal presents the current pair as the TLS client certificate (no token), writes the
//! new pair atomically, and only then calls `on_rotated` (wire it to
//! `HubHandle::certificates_rotated`, which reloads the files and re-dials) and publishes the new
//! [`CertInfo`] on a `watch` ([`CertUpdates`], e.g. for an expiry metric).

use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, error, info, info_span};

use crate::cert_bootstrap::{CertSettings, issue, unix, with_retry};
use crate::cert_error::{CertError, Chain};
use crate::cert_files::{CertInfo, load_ca, load_pair, replace_files};
use crate::cert_http::{CertServer, Credential};

/// The longest single sleep before the wall clock is looked at again (suspend, clock steps).
const MAX_NAP: Duration = Duration::from_secs(60);

/// Where the hub learns about renewed certificates. Cloneable; every clone sees every change.
#[derive(Debug, Clone)]
pub struct CertUpdates {
    rx: watch::Receiver<CertInfo>,
}

impl CertUpdates {
    /// A source that never changes (rotation off, or for tests of the hub).
    pub fn fixed(current: CertInfo) -> Self {
        let (tx, rx) = watch::channel(current);
        drop(tx);
        Self { rx }
    }

    /// The certificate now on disk.
    pub fn current(&self) -> CertInfo {
        self.rx.borrow().clone()
    }

    /// Waits until a renewed pair is on disk and returns it. Never returns when rotation is off
    /// or has stopped. Cancel-safe: usable as a `select!` arm.
    pub async fn rotated(&mut self) -> CertInfo {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.rx.borrow_and_update().clone()
    }
}

/// Starts the rotation task (when `settings.rotate`) for the pair described by `current`.
/// `on_rotated` runs after each renewed pair is on disk, typically
/// `move |_| hub.certificates_rotated()`.
pub fn spawn_rotation(
    settings: CertSettings,
    current: CertInfo,
    on_rotated: impl Fn(&CertInfo) + Send + 'static,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> CertUpdates {
    if !settings.rotate {
        info!("edge certificate rotation is off (rotateCertificates: false)");
        return CertUpdates::fixed(current);
    }
    let server = match CertServer::parse(&settings.http_server, &settings.tls_server_name) {
        Ok(server) => server,
        Err(e) => {
            error!(error = %Chain(&e), "edge certificate rotation cannot start");
            return CertUpdates::fixed(current);
        }
    };
    let (tx, rx) = watch::channel(current.clone());
    let span = info_span!("cert_rotation", node = %settings.node_name);
    tracker
        .spawn(rotation_loop(settings, server, current, on_rotated, tx, cancel).instrument(span));
    CertUpdates { rx }
}

async fn rotation_loop(
    settings: CertSettings,
    server: CertServer,
    mut current: CertInfo,
    on_rotated: impl Fn(&CertInfo),
    tx: watch::Sender<CertInfo>,
    cancel: CancellationToken,
) {
    loop {
        let fraction = rand::random_range(0.7..0.9);
        let deadline = rotation_deadline(&current, fraction);
        info!(
            at = unix(deadline),
            not_after = unix(current.not_after),
            "edge certificate rotation scheduled"
        );
        loop {
            let remaining = deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            if remaining.is_zero() {
                break;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(remaining.min(MAX_NAP)) => {}
            }
        }
        let result = with_retry(&settings.retry, &cancel, "rotation", || {
            rotate_once(&settings, &server)
        })
        .await;
        match result {
            Ok(info) => {
                info!(
                    serial = %info.serial,
                    not_after = unix(info.not_after),
                    "edge certificate rotated"
                );
                on_rotated(&info);
                current = info.clone();
                tx.send_replace(info);
            }
            Err(CertError::Cancelled) => return,
            Err(e) => {
                error!(error = %Chain(&e), "edge certificate rotation stopped");
                return;
            }
        }
    }
}

/// One renewal: apply with the current pair, then replace both files.
async fn rotate_once(settings: &CertSettings, server: &CertServer) -> Result<CertInfo, CertError> {
    let pair = load_pair(
        &settings.cert_file,
        &settings.key_file,
        &settings.node_name,
        SystemTime::now(),
    )
    .await?;
    let ca = load_ca(&settings.ca_file).await?;
    let issued = issue(
        settings,
        server,
        &ca,
        Credential::ClientCert {
            chain: pair.chain,
            key: pair.key,
        },
    )
    .await?;
    replace_files(issued.files(settings).into()).await?;
    Ok(issued.info)
}

/// `NotBefore + fraction × (NotAfter − NotBefore)`.
fn rotation_deadline(info: &CertInfo, fraction: f64) -> SystemTime {
    let lifetime = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or(Duration::ZERO);
    info.not_before
        .checked_add(lifetime.mul_f64(fraction.clamp(0.0, 1.0)))
        .unwrap_or(info.not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(not_before: u64, not_after: u64) -> CertInfo {
        CertInfo {
            not_before: SystemTime::UNIX_EPOCH + Duration::from_secs(not_before),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(not_after),
            serial: "01".to_owned(),
        }
    }

    #[test]
    fn deadline_is_the_fraction_of_the_lifetime() {
        let i = info(1_000, 2_000);
        assert_eq!(unix(rotation_deadline(&i, 0.7)), 1_700);
        assert_eq!(unix(rotation_deadline(&i, 0.9)), 1_900);
        // A certificate whose dates are upside down renews at once.
        assert_eq!(unix(rotation_deadline(&info(2_000, 1_000), 0.8)), 2_000);
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_updates_never_fire() {
        let mut updates = CertUpdates::fixed(info(1, 2));
        assert_eq!(updates.current(), info(1, 2));
        let waited = tokio::time::timeout(Duration::from_millis(20), updates.rotated()).await;
        assert!(waited.is_err());
    }

    #[tokio::test]
    async fn rotation_off_spawns_nothing() {
        let hub = config::EdgeHub {
            rotate_certificates: false,
            ..Default::default()
        };
        let tracker = TaskTracker::new();
        let updates = spawn_rotation(
            CertSettings::new("n", &hub),
            info(1, 2),
            |_| {},
            CancellationToken::new(),
            &tracker,
        );
        assert!(tracker.is_empty());
        assert_eq!(updates.current(), info(1, 2));
    }
}
