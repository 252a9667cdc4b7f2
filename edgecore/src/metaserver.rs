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
//! (`cloud`, `remote_watch`). Not yet: HTTPS and authorization (`docs/metaserver.md`).

mod api;
mod application;
mod body;
mod changes;
mod cloud;
mod head;
mod remote_watch;
mod resources;
mod route;
mod selector;
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
use tokio::net::{TcpListener, TcpStream};
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
        let api = Arc::new(api::Api {
            store,
            changes,
            bookmark_every: self.bookmark_every,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
            cloud,
        });
        let span = tracing::info_span!("metaserver", addr = %self.local_addr);
        tracing::info!(addr = %self.local_addr, revision = newest, through_cloud, "metaserver listening");
        let serving = cancel.clone();
        tracker.spawn(
            crate::accept::accept_loop(
                self.listener,
                MAX_CONNECTIONS,
                "metaserver",
                cancel,
                tracker.clone(),
                move |stream, permit| serve(stream, Arc::clone(&api), serving.clone(), permit),
            )
            .instrument(span),
        );
        Ok(())
    }
}

async fn serve(
    stream: TcpStream,
    api: Arc<api::Api>,
    cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let api = Arc::clone(&api);
        async move {
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
