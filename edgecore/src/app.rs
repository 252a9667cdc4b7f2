//! Wiring: store → hub → metamanager, then wait for a signal and shut down in order.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edgehub::{
    CertError, CertSettings, DisconnectReason, HubSettings, LinkState, Message,
    ensure_certificates, spawn_rotation,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::health::{HealthServer, ReadyState, follow_link, follow_runtime};
use crate::link::CloudLink;
use crate::meta_client::EdgedMeta;
use crate::metamanager::{MetaSettings, spawn_metamanager};
use crate::metaserver::{Changes, MetaServer};
use crate::metrics::{MeteredLink, Metrics, sample_store_size};
use crate::store::Store;

/// Capacity of the channel from the hub to metamanager (KubeEdge's viaduct FIFO holds 100).
const INBOUND_CAPACITY: usize = 128;
/// How long tasks get to finish after cancellation before edgecore exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the size of the database files is sampled for `edgecore_store_size_bytes`.
const STORE_SIZE_EVERY: Duration = Duration::from_secs(30);

/// Runs edgecore with a validated configuration until `shutdown` resolves, then cancels every
/// task, waits for them under a grace timeout and closes the store. Should metamanager stop on
/// its own (its store or link failed), edgecore shuts down the same way and returns an error,
/// so that the service manager restarts it.
///
/// `config_file` is edgecore.yaml, whose bootstrap token is blanked after a certificate
/// bootstrap (`None` leaves it alone).
pub async fn run(
    config: config::EdgeCoreConfig,
    config_file: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let metrics = Metrics::new();
    let (ready_tx, ready_rx) = watch::channel(ReadyState::Starting);
    // Bound before anything else runs, so a taken port fails start-up at once.
    let health = if config.modules.health.enable {
        let address = config.modules.health.socket_addr().with_context(|| {
            format!(
                "modules.health.address {:?} is not ip:port",
                config.modules.health.address
            )
        })?;
        Some(
            HealthServer::bind(address)
                .await
                .context("starting the health endpoint (modules.health)")?,
        )
    } else {
        None
    };
    let meta_server = &config.modules.meta_manager.meta_server;
    let meta_server = if config.modules.meta_manager.enable && meta_server.enable {
        let address: std::net::SocketAddr = meta_server.server.parse().with_context(|| {
            format!(
                "modules.metaManager.metaServer.server {:?} is not ip:port",
                meta_server.server
            )
        })?;
        Some(
            MetaServer::bind(address)
                .await
                .context("starting MetaServer (modules.metaManager.metaServer)")?,
        )
    } else {
        None
    };
    let store = Store::open(&config.database.data_source)
        .with_context(|| format!("opening {}", config.database.data_source.display()))?;
    let cancel = CancellationToken::new();
    let hub_cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (runtime_tx, runtime_rx) = watch::channel(None);
    if let Some(health) = health {
        health.spawn(
            metrics.clone(),
            ready_rx,
            runtime_rx,
            cancel.child_token(),
            &tracker,
        );
    }
    tracker.spawn(
        sample_store_size(
            config.database.data_source.clone(),
            metrics.store(),
            STORE_SIZE_EVERY,
            cancel.child_token(),
        )
        .instrument(tracing::info_span!("store_size")),
    );
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
    let mut settings = MetaSettings::from_config(&config.modules.meta_manager);
    let pods_rx = if config.modules.edged.enable {
        let (pods_tx, pods_rx) = mpsc::channel(edged_shim::POD_EVENT_CAPACITY);
        settings = settings.with_pod_feed(pods_tx);
        Some(pods_rx)
    } else {
        None
    };
    let meta_server = match meta_server {
        Some(server) => {
            let changes = Changes::new();
            settings = settings.with_changes(changes.clone());
            Some((server, changes))
        }
        None => None,
    };
    let node_name = config.modules.edged.hostname_override.clone();

    // The hub's link state (MetaServer re-registers its cloud watches on each session, the
    // start-up trim waits for the first); offline it never changes.
    let (_offline_link, mut meta_link) = watch::channel(LinkState::Disconnected {
        reason: DisconnectReason::Closed,
    });
    let mut offline_inbound = None;
    let mut offline_ready = None;
    let meta = if config.modules.edge_hub.enable {
        let certs = CertSettings {
            config_file,
            ..CertSettings::new(&node_name, &config.modules.edge_hub)
        };
        // With a usable pair on disk this returns at once, without the network; a bootstrap
        // retries until it works or a signal arrives.
        let info = tokio::select! {
            biased;
            () = &mut shutdown => {
                cancel.cancel();
                Err(CertError::Cancelled)
            }
            info = ensure_certificates(&certs, &cancel) => info,
        };
        let info = match info {
            Ok(info) => info,
            Err(CertError::Cancelled) => {
                tracing::info!("shut down while waiting for the edge certificate");
                tracker.close();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await;
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, store.shutdown()).await;
                return Ok(());
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context("getting the edge certificate"));
            }
        };
        metrics.cert().set_expiry(info.not_after);
        let hub = edgehub::spawn(
            HubSettings {
                node_name: node_name.clone(),
                hub: config.modules.edge_hub.clone(),
            },
            inbound_tx,
            // The hub stops last: metamanager's final acks go out before its close frame.
            hub_cancel.clone(),
            &tracker,
        )
        .context("starting the cloud link (modules.edgeHub)")?;
        let rotated = hub.clone();
        let cert_metrics = metrics.cert();
        spawn_rotation(
            certs,
            info,
            move |info| {
                rotated.certificates_rotated();
                cert_metrics.set_expiry(info.not_after);
            },
            cancel.child_token(),
            &tracker,
        );
        meta_link = hub.link();
        let stats = hub.clone();
        tracker.spawn(
            follow_link(
                hub.link(),
                move || stats.stats(),
                metrics.hub(),
                ready_tx,
                cancel.child_token(),
            )
            .instrument(tracing::info_span!("readiness")),
        );
        spawn_metamanager(
            settings,
            store.clone(),
            MeteredLink::new(hub, &metrics),
            &metrics,
            inbound_rx,
            cancel.child_token(),
            &tracker,
        )
    } else {
        tracing::warn!("modules.edgeHub is disabled: running offline from the local store");
        // Nothing sends on it, but it stays open: metamanager treats a closed inbound as the
        // end of the hub.
        offline_inbound = Some(inbound_tx);
        ready_tx.send_replace(ReadyState::Offline);
        offline_ready = Some(ready_tx);
        spawn_metamanager(
            settings,
            store.clone(),
            OfflineLink::new(),
            &metrics,
            inbound_rx,
            cancel.child_token(),
            &tracker,
        )
    };
    if let Some((server, changes)) = meta_server {
        // Writes and reads of what the store lacks go to the cloud through metamanager.
        let mut server = server.with_cloud(meta.clone(), &node_name, meta_link.clone());
        if config.feature_gates.get("requireAuthorization") == Some(&true) {
            let ms = &config.modules.meta_manager.meta_server;
            if ms
                .service_account_key_files
                .as_ref()
                .is_none_or(Vec::is_empty)
            {
                tracing::warn!(
                    "requireAuthorization without modules.metaManager.metaServer.serviceAccountKeyFiles: every bearer token is refused, only anonymous requests are authorized"
                );
            }
            let dummy_server = match ms.dummy_server.trim() {
                "" => None,
                d => Some(d.parse().with_context(|| {
                    format!("modules.metaManager.metaServer.dummyServer {d:?} is not ip:port")
                })?),
            };
            server = server
                .with_authorization(crate::Authorization {
                    service_account_key_files: ms
                        .service_account_key_files
                        .clone()
                        .unwrap_or_default(),
                    service_account_issuers: ms.service_account_issuers.clone().unwrap_or_default(),
                    api_audiences: ms.api_audiences.clone().unwrap_or_default(),
                    dummy_server,
                    certificates_dir: ms.certificates_dir.clone().into(),
                })
                .context("starting MetaServer with requireAuthorization")?;
        }
        server
            .spawn(store.clone(), changes, cancel.child_token(), &tracker)
            .await
            .context("starting MetaServer (modules.metaManager.metaServer)")?;
    }
    let mut streaming: Option<Arc<dyn edged_shim::Runtime>> = None;
    if let Some(pods_rx) = pods_rx {
        let runtime = cri_runtime(&config)?;
        streaming = Some(Arc::new(runtime.clone()));
        let edged = start_edged(&config, &meta, &store, pods_rx, runtime, &cancel, &tracker);
        tracker.spawn(
            follow_runtime(
                edged.runtime_state(),
                runtime_tx,
                metrics.edged(),
                cancel.child_token(),
            )
            .instrument(tracing::info_span!("runtime_readiness")),
        );
    }
    if config.modules.edge_stream.enable {
        start_edge_stream(&config, streaming, &cancel, &tracker).await?;
    }
    tracker.spawn(
        crate::trim::after_startup(
            config.modules.edge_hub.enable.then(|| meta_link.clone()),
            cancel.child_token(),
        )
        .instrument(tracing::info_span!("trim")),
    );
    tracing::info!(node = %node_name, "edgecore started");

    let failed = tokio::select! {
        () = &mut shutdown => false,
        () = meta.closed() => true,
    };
    tracing::info!("shutting down");
    if let Some(ready) = &offline_ready {
        ready.send_replace(ReadyState::Stopping);
    }
    // Shutdown in order: metamanager stops taking cloud messages, finishes the transaction it
    // is committing and queues its acks; then the hub writes what is queued and its close frame.
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, meta.closed())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "metamanager did not stop in time; closing the cloud link anyway");
    }
    hub_cancel.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "tasks did not stop in time; exiting anyway");
    }
    drop(meta);
    drop(offline_inbound);
    if tokio::time::timeout(SHUTDOWN_GRACE, store.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "store did not close in time; sqlite recovers the WAL on next start");
    }
    tracing::info!("edgecore stopped");
    if failed {
        anyhow::bail!(
            "metamanager stopped unexpectedly: its store or cloud link failed (see the log above)"
        );
    }
    Ok(())
}

/// The local kubelet-style server's address (KubeEdge's constant; no key).
const KUBELET_SERVER: &str = "127.0.0.1:10350";

/// EdgeStream: the local kubelet-style server (container logs; exec, attach and port-forward
/// through `runtime`'s streaming server) and the tunnel cloudStream relays the API server's
/// requests over (`docs/edgestream.md`).
async fn start_edge_stream(
    config: &config::EdgeCoreConfig,
    runtime: Option<Arc<dyn edged_shim::Runtime>>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    if !config.modules.edge_hub.enable {
        tracing::warn!("modules.edgeStream needs modules.edgeHub (its certificate); not started");
        return Ok(());
    }
    let addr: std::net::SocketAddr = KUBELET_SERVER.parse()?;
    let mut server = edged_shim::KubeletServer::bind(addr)
        .await
        .context("starting EdgeStream's local server (modules.edgeStream)")?;
    match runtime {
        Some(runtime) => server = server.with_runtime(runtime),
        None => tracing::warn!(
            "modules.edged is off: edgeStream serves container logs only (no exec, attach or port-forward)"
        ),
    }
    let logs = match config
        .modules
        .edged
        .tailored_kubelet_config
        .pod_logs_dir
        .trim()
    {
        "" => "/var/log/pods".to_owned(),
        d => d.to_owned(),
    };
    let local = server.local_addr();
    server.spawn(logs.into(), cancel.child_token(), tracker);
    edgehub::spawn_tunnel(
        edgehub::TunnelSettings {
            node: config.modules.edged.hostname_override.clone(),
            node_ip: config.modules.edged.node_ip.clone(),
            stream: config.modules.edge_stream.clone(),
            hub: config.modules.edge_hub.clone(),
            local,
        },
        cancel.child_token(),
        tracker,
    )
    .context("starting the EdgeStream tunnel (modules.edgeStream.server)")?;
    Ok(())
}

/// Starts edged-shim on metamanager's pod feed. A container runtime that is not there yet does
/// not stop edgecore: edged-shim reports it as down and retries.
fn start_edged(
    config: &config::EdgeCoreConfig,
    meta: &crate::metamanager::MetaHandle,
    store: &Store,
    pods: mpsc::Receiver<edged_shim::PodEvent>,
    runtime: edged_shim::CriRuntime,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> edged_shim::EdgedHandle {
    edged_shim::spawn(
        edged_shim::EdgedSettings::from_config(&config.modules.edged),
        EdgedMeta::new(meta.clone(), store.clone()),
        pods,
        Box::new(runtime),
        cancel.child_token(),
        tracker,
    )
}

/// The CRI client edged-shim and EdgeStream's exec share (`containerRuntimeEndpoint`,
/// `imageServiceEndpoint`); it dials on first use.
fn cri_runtime(config: &config::EdgeCoreConfig) -> anyhow::Result<edged_shim::CriRuntime> {
    let settings = edged_shim::EdgedSettings::from_config(&config.modules.edged);
    let endpoint = &config
        .modules
        .edged
        .tailored_kubelet_config
        .container_runtime_endpoint;
    let images = image_endpoint(&config.modules.edged.tailored_kubelet_config);
    let runtime = edged_shim::CriRuntime::new(endpoint, settings.runtime_request_timeout)
        .with_context(|| {
            format!(
                "modules.edged.tailoredKubeletConfig.containerRuntimeEndpoint {endpoint:?} is not usable"
            )
        })?
        .with_image_endpoint(images)
        .with_context(|| {
            format!(
                "modules.edged.tailoredKubeletConfig.imageServiceEndpoint {images:?} is not usable"
            )
        })?;
    Ok(runtime)
}

/// Where image calls go: `imageServiceEndpoint`, except that an empty one, or KubeEdge's
/// default left in place while `containerRuntimeEndpoint` was changed (a CRI-O node, a private
/// containerd), means the runtime's own socket, as the kubelet takes an empty one.
fn image_endpoint(k: &config::TailoredKubeletConfig) -> &str {
    let default = config::TailoredKubeletConfig::default();
    let left_default = k.image_service_endpoint == default.image_service_endpoint
        && k.container_runtime_endpoint != default.container_runtime_endpoint;
    if k.image_service_endpoint.is_empty() || left_default {
        &k.container_runtime_endpoint
    } else {
        &k.image_service_endpoint
    }
}

/// A future that resolves on SIGTERM or SIGINT. The handlers are installed by this call (so a
/// signal during startup is not lost), which must therefore run inside the Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
                },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot watch SIGTERM/SIGINT; edgecore stops only when killed");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot watch Ctrl-C; edgecore stops only when killed");
            std::future::pending::<()>().await;
        }
    }
}

/// The link when `modules.edgeHub` is disabled: never connected, so nothing is ever sent.
#[derive(Clone)]
struct OfflineLink {
    state: Arc<watch::Sender<LinkState>>,
}

impl OfflineLink {
    fn new() -> Self {
        let (tx, _) = watch::channel(LinkState::Disconnected {
            reason: DisconnectReason::Closed,
        });
        Self {
            state: Arc::new(tx),
        }
    }
}

impl CloudLink for OfflineLink {
    async fn send(&self, msg: Message) -> Result<(), Message> {
        // Unreachable in practice: with no hub there are no cloud messages to answer and the
        // link never connects. Returning the message makes metamanager stop rather than drop it.
        Err(msg)
    }

    fn link(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_offline_and_stops_on_the_injected_signal() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config::minimal_config("edge-test");
        config.database.data_source = dir.path().join("sub/edgecore.db");
        config.modules.health.address = "127.0.0.1:0".to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(run(config, None, async {
            let _ = stopped.await;
        }));
        stop.send(()).unwrap();
        run.await.unwrap().unwrap();
        assert!(dir.path().join("sub/edgecore.db").exists());
    }

    #[test]
    fn images_go_to_the_runtime_unless_another_image_endpoint_is_set() {
        let mut k = config::TailoredKubeletConfig::default();
        assert_eq!(image_endpoint(&k), "unix:///run/containerd/containerd.sock");
        k.container_runtime_endpoint = "unix:///var/run/crio/crio.sock".into();
        assert_eq!(
            image_endpoint(&k),
            "unix:///var/run/crio/crio.sock",
            "default left in place"
        );
        k.image_service_endpoint = String::new();
        assert_eq!(
            image_endpoint(&k),
            "unix:///var/run/crio/crio.sock",
            "empty"
        );
        k.image_service_endpoint = "unix:///run/images.sock".into();
        assert_eq!(
            image_endpoint(&k),
            "unix:///run/images.sock",
            "set on purpose"
        );
    }

    #[tokio::test]
    async fn an_unusable_database_path_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let mut config = config::minimal_config("edge-test");
        config.database.data_source = file.join("edgecore.db");
        config.modules.health.address = "127.0.0.1:0".to_owned();
        let err = run(config, None, std::future::ready(())).await.unwrap_err();
        assert!(format!("{err:#}").contains("opening"), "{err:#}");
    }

    #[tokio::test]
    async fn a_taken_health_port_fails_start_up_naming_the_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = config::minimal_config("edge-test");
        config.database.data_source = dir.path().join("edgecore.db");
        config.modules.health.address = taken.local_addr().unwrap().to_string();
        let err = run(config, None, std::future::pending()).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("modules.health"), "{text}");
        assert!(
            !dir.path().join("edgecore.db").exists(),
            "nothing starts before the port is bound"
        );
    }
}
