//! MetaServer: the Kubernetes API of the node (`modules.metaManager.metaServer`), served from
//! the edge's store so it keeps answering while the cloud is away. Edge pods, EdgeMesh and
//! kubectl use it as their API server.
//!
//! It answers reads from the store: discovery (`/api`, `/apis`, their versions), `/version`,
//! `/healthz`, and get, list and watch of the kinds metamanager stores, with label and field
//! selectors, list `resourceVersion`s, watches from a resourceVersion (a bounded ring of
//! committed changes; `410 Gone` before it), bookmarks, and kubectl's table output. Watches
//! are fed by metamanager's commits ([`Changes`]), never by polling. Writes, and reads and
//! watches of what the store lacks, go to CloudCore's dynamicController as applications
//! (`cloud`, `remote_watch`). With `requireAuthorization`: HTTPS, service-account tokens and
//! RBAC at the edge (`serving`, `auth`, `rbac`, `guard`; `docs/metaserver.md`).

mod api;
mod application;
mod auth;
mod body;
mod changes;
mod cloud;
mod guard;
mod head;
mod rbac;
mod remote_watch;
mod resources;
mod route;
mod selector;
mod serving;
mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use changes::{ChangeKind, Changes};

use crate::store::Store;

/// Connections served at once (each watch holds one); more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// Time for a client to send a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a watch that asked for them gets a bookmark.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

/// MetaServer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MetaServerError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {address} (modules.metaManager.metaServer.server)")]
    Bind {
        /// The address from `metaServer.server`.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `requireAuthorization` is on and a service-account key file cannot be used.
    #[error("{0}")]
    KeyFile(String),
    /// `requireAuthorization` needs the way to the cloud (the serving certificate comes from
    /// it), and MetaServer has none.
    #[error(
        "requireAuthorization needs modules.edgeHub: the serving certificate comes from the cloud"
    )]
    NoCloud,
    /// The store could not be read for the starting resourceVersion.
    #[error("reading the edge store for MetaServer failed")]
    Store(#[source] crate::StoreError),
}

/// The bound, not yet serving, MetaServer.
#[derive(Debug)]
pub struct MetaServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    bookmark_every: Duration,
    cloud: Option<(
        cloud::Cloud,
        tokio::sync::watch::Receiver<edgehub::LinkState>,
    )>,
    secure: Option<Secure>,
}

/// What `requireAuthorization` needs (KubeEdge's `metaServer` keys of the same names).
#[derive(Debug, Clone, Default)]
pub struct Authorization {
    /// `serviceAccountKeyFiles`: PEM public keys bearer tokens are checked with.
    pub service_account_key_files: Vec<String>,
    /// `serviceAccountIssuers`: accepted `iss` (empty: any).
    pub service_account_issuers: Vec<String>,
    /// `apiAudiences`: accepted `aud` (empty: any).
    pub api_audiences: Vec<String>,
    /// `dummyServer`: the second address served (pods reach it on the dummy interface); served
    /// when that address is on this host.
    pub dummy_server: Option<SocketAddr>,
    /// Where the serving certificate is kept.
    pub certificates_dir: std::path::PathBuf,
}

#[derive(Debug)]
struct Secure {
    guard: guard::Guard,
    dummy: Option<SocketAddr>,
    certificates_dir: std::path::PathBuf,
}

impl MetaServer {
    /// Binds `address` (`metaServer.server`; port 0 picks a free port).
    pub async fn bind(address: SocketAddr) -> Result<Self, MetaServerError> {
        let bind_err = |source| MetaServerError::Bind { address, source };
        let listener = TcpListener::bind(address).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            listener,
            local_addr,
            bookmark_every: BOOKMARK_EVERY,
            cloud: None,
            secure: None,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Bookmarks this often instead of every 30 s (tests).
    pub fn with_bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_every = every;
        self
    }

    /// Carries writes, and reads of what the store lacks, to the cloud through metamanager
    /// (`node` is this node's name, which the cloud checks the request against). Without
    /// this, MetaServer answers reads only.
    /// `link` is the hub's link state: after each new session the watches registered with the
    /// cloud are registered again.
    pub fn with_cloud(
        mut self,
        meta: crate::MetaHandle,
        node: &str,
        link: tokio::sync::watch::Receiver<edgehub::LinkState>,
    ) -> Self {
        self.cloud = Some((
            cloud::Cloud {
                meta,
                node: node.to_owned(),
                watches: Arc::default(),
            },
            link,
        ));
        self
    }

    /// `requireAuthorization`: HTTPS with a serving certificate requested from the cloud,
    /// bearer-token authentication and RBAC at the edge, on `server` and on `dummyServer`.
    pub fn with_authorization(mut self, a: Authorization) -> Result<Self, MetaServerError> {
        let authenticator = auth::Authenticator::new(
            &a.service_account_key_files,
            &a.service_account_issuers,
            &a.api_audiences,
        )
        .map_err(|e| MetaServerError::KeyFile(e.to_string()))?;
        self.secure = Some(Secure {
            guard: guard::Guard {
                authenticator,
                rules: rbac::RuleCache::default(),
            },
            dummy: a.dummy_server,
            certificates_dir: a.certificates_dir,
        });
        Ok(self)
    }

    /// Serves until `cancel`, on tasks of `tracker`. `changes` must be the feed metamanager
    /// publishes to; the store's newest resourceVersion is where watches can resume from.
    pub async fn spawn(
        self,
        store: Store,
        changes: Changes,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(), MetaServerError> {
        let mut newest = 0;
        for r in resources::RESOURCES {
            for text in store
                .list_type(r.stored)
                .await
                .map_err(MetaServerError::Store)?
            {
                if let Some(head) = head::Head::parse(&text) {
                    newest = newest.max(head.resource_version().unwrap_or(0));
                }
            }
        }
        changes.start_at(newest);
        let through_cloud = self.cloud.is_some();
        let cloud = self.cloud.map(|(cloud, link)| {
            tracker.spawn(
                remote_watch::sync_loop(cloud.clone(), link, cancel.clone())
                    .instrument(tracing::info_span!("metaserver_watch_sync")),
            );
            cloud
        });
        let (guard, secure) = match self.secure {
            Some(s) => (Some(Arc::new(s.guard)), Some((s.dummy, s.certificates_dir))),
            None => (None, None),
        };
        if secure.is_some() && cloud.is_none() {
            return Err(MetaServerError::NoCloud);
        }
        let api = Arc::new(api::Api {
            store,
            changes,
            bookmark_every: self.bookmark_every,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
            cloud,
            guard,
        });
        let addr = self.local_addr;
        let Some((dummy, dir)) = secure else {
            tracing::info!(%addr, revision = newest, through_cloud, "metaserver listening");
            spawn_accept(self.listener, None, api, cancel, tracker);
            return Ok(());
        };
        // HTTPS: bind the dummy address now; serve both once the certificate is there.
        let dummy_listener = match dummy {
            Some(d) => match TcpListener::bind(d).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(addr = %d, error = %e, "metaserver dummyServer address is not on this host; serving on server only");
                    None
                }
            },
            None => None,
        };
        let mut ips = vec![addr.ip()];
        ips.extend(dummy.map(|d| d.ip()));
        let tasks = tracker.clone();
        let listener = self.listener;
        tracker.spawn(
            async move {
                let Some(cloud) = api.cloud.clone() else {
                    return;
                };
                let config =
                    match serving::serving_config(&cloud.meta, &cloud.node, &ips, &dir, &cancel)
                        .await
                    {
                        Ok(c) => c,
                        Err(serving::ServingError::Cancelled) => return,
                        Err(e) => {
                            tracing::error!(error = %e, "metaserver has no serving certificate; not serving");
                            return;
                        }
                    };
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                tracing::info!(%addr, revision = newest, through_cloud, "metaserver listening (HTTPS, requireAuthorization)");
                if let Some(l) = dummy_listener {
                    spawn_accept(
                        l,
                        Some(acceptor.clone()),
                        Arc::clone(&api),
                        cancel.clone(),
                        &tasks,
                    );
                }
                spawn_accept(listener, Some(acceptor), api, cancel, &tasks);
            }
            .instrument(tracing::info_span!("metaserver_tls")),
        );
        Ok(())
    }
}

fn spawn_accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    api: Arc<api::Api>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let span = tracing::info_span!("metaserver", addr);
    let serving = cancel.clone();
    tracker.spawn(
        crate::accept::accept_loop(
            listener,
            MAX_CONNECTIONS,
            "metaserver",
            cancel,
            tracker.clone(),
            move |stream, permit| {
                let api = Arc::clone(&api);
                let cancel = serving.clone();
                let tls = tls.clone();
                async move {
                    match tls {
                        None => serve(stream, api, cancel, permit).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => serve(stream, api, cancel, permit).await,
                            Err(error) => {
                                tracing::debug!(%error, "metaserver TLS handshake failed");
                            }
                        },
                    }
                }
            },
        )
        .instrument(span),
    );
}

async fn serve<S>(
    stream: S,
    api: Arc<api::Api>,
    cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let api = Arc::clone(&api);
        async move {
            if let Some(guard) = &api.guard
                && let Err(refused) = guard::check(&api, guard, &req).await
            {
                return Ok::<_, Infallible>(refused);
            }
            let answer = match (&api.cloud, req.method()) {
                (Some(cloud), m) if m != Method::GET => cloud::write(cloud, req).await,
                _ => api::answer(&api, &req).await,
            };
            Ok::<_, Infallible>(answer)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "metaserver connection ended");
            }
        }
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

#[cfg(test)]
mod tests;
