//! The local health endpoint: `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1.
//!
//! It listens on `modules.health.address` (loopback by default) and is small on purpose:
//! GET or HEAD only, no request body, headers bounded, a header-read timeout, a lifetime per
//! connection and a cap on concurrent connections. On cancellation it stops accepting and lets
//! open connections finish their response.
//!
//! Readiness is an input: the wiring publishes a [`ReadyState`] on a `watch` (see
//! [`follow_link`]), and `/readyz` answers 200 only when the store is open and a cloud session
//! is up, or when edgecore runs in offline autonomy on purpose (`modules.edgeHub` disabled).

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edged_shim::RuntimeState;
use edgehub::{HubStats, LinkState};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::metrics::{self, EdgedMetrics, HubMetrics, Metrics};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// Bytes of request line plus headers.
const MAX_HEADER_BYTES: usize = 4096;
/// Number of request headers.
const MAX_HEADERS: usize = 32;
/// hyper's read buffer (its minimum).
const MAX_BUF_BYTES: usize = 8192;
/// Time for a client to send a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a keep-alive connection is kept; the client reconnects after.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Time a connection gets to finish its response after shutdown or its lifetime.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often [`follow_link`] copies the hub's counters between link transitions.
const STATS_REFRESH: Duration = Duration::from_secs(1);

/// The health endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The listen address cannot be bound (in use, not local, no permission).
    #[error("cannot listen on {address} (modules.health.address)")]
    Bind {
        /// The address from `modules.health.address`.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What `/readyz` reports. The wiring publishes it on a `watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyState {
    /// The store is not open yet.
    Starting,
    /// The store is open; ready when the cloud link is connected.
    Running(LinkState),
    /// The store is open and edgecore runs from it without a cloud link on purpose
    /// (`modules.edgeHub.enable: false`).
    Offline,
    /// Shutting down.
    Stopping,
}

impl ReadyState {
    /// True when `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        match self {
            Self::Running(link) => link.is_connected(),
            Self::Offline => true,
            Self::Starting | Self::Stopping => false,
        }
    }
}

impl fmt::Display for ReadyState {
    /// One line: why edgecore is or is not ready.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Starting => f.write_str("starting: the store is not open yet"),
            Self::Running(LinkState::Connected { endpoint, .. }) => {
                write!(f, "cloud session with {}", one_line(endpoint))
            }
            Self::Running(LinkState::Connecting { endpoint, attempt }) => write!(
                f,
                "no cloud session: connecting to {} (attempt {attempt})",
                one_line(endpoint)
            ),
            Self::Running(LinkState::Disconnected { reason }) => {
                write!(f, "no cloud session: link down ({})", reason.as_str())
            }
            Self::Offline => f.write_str("offline autonomy: modules.edgeHub is disabled"),
            Self::Stopping => f.write_str("shutting down"),
        }
    }
}

/// Control characters would break the one-line answer; endpoints come from config and have
/// none, but the answer must not depend on that.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Mirrors the cloud link into readiness and the hub metrics until `cancel`: every link
/// transition updates the session-state gauge, the endpoint and `ready` (metrics first, so a
/// reader woken by `ready` sees them); the hub's counters (`stats`, e.g. `|| hub.stats()`) are
/// copied on every transition and every second.
///
/// Run it as a task after the store is open; it publishes [`ReadyState::Running`] at once.
pub async fn follow_link(
    mut link: watch::Receiver<LinkState>,
    stats: impl Fn() -> HubStats,
    metrics: HubMetrics,
    ready: watch::Sender<ReadyState>,
    cancel: CancellationToken,
) {
    let mut refresh = tokio::time::interval(STATS_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let publish = |link: LinkState| {
        metrics.observe_link(&link);
        metrics.observe_stats(&stats());
        ready.send_replace(ReadyState::Running(link));
    };
    publish(link.borrow_and_update().clone());
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            changed = link.changed() => {
                if changed.is_err() {
                    // The hub is gone (shutdown): no session any more.
                    tracing::debug!("link watch closed");
                    break;
                }
                publish(link.borrow_and_update().clone());
            }
            _ = refresh.tick() => metrics.observe_stats(&stats()),
        }
    }
    ready.send_replace(ReadyState::Stopping);
}

/// Mirrors edged's container-runtime state into `/readyz` (its second line) and
/// `edgecore_edged_runtime_up` until `cancel` or until edged is gone.
pub(crate) async fn follow_runtime(
    mut from: watch::Receiver<RuntimeState>,
    to: watch::Sender<Option<RuntimeState>>,
    metrics: EdgedMetrics,
    cancel: CancellationToken,
) {
    loop {
        let state = from.borrow_and_update().clone();
        metrics.set_runtime_up(matches!(state, RuntimeState::Up { .. }));
        to.send_replace(Some(state));
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            changed = from.changed() => if changed.is_err() { break },
        }
    }
}

/// The bound, not yet serving, health endpoint. Binding first lets startup fail on a taken
/// port before anything else runs.
#[derive(Debug)]
pub struct HealthServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl HealthServer {
    /// Binds `address` (`modules.health.address`; port 0 picks a free port).
    pub async fn bind(address: SocketAddr) -> Result<Self, HealthError> {
        let bind_err = |source| HealthError::Bind { address, source };
        let listener = TcpListener::bind(address).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel`, on a task of `tracker` (and one per connection).
    pub fn spawn(
        self,
        metrics: Metrics,
        ready: watch::Receiver<ReadyState>,
        runtime: watch::Receiver<Option<RuntimeState>>,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) {
        let span = tracing::info_span!("health", addr = %self.local_addr);
        let shared = Arc::new(Shared {
            metrics,
            ready,
            runtime,
        });
        tracing::info!(addr = %self.local_addr, "health endpoint listening");
        let serving = cancel.clone();
        tracker.spawn(
            crate::accept::accept_loop(
                self.listener,
                MAX_CONNECTIONS,
                "health",
                cancel,
                tracker.clone(),
                move |stream, permit| {
                    serve_connection(stream, Arc::clone(&shared), serving.clone(), permit)
                },
            )
            .instrument(span),
        );
    }
}

struct Shared {
    metrics: Metrics,
    ready: watch::Receiver<ReadyState>,
    /// The container runtime's state; `None` without edged.
    runtime: watch::Receiver<Option<RuntimeState>>,
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let response = respond(&shared, &req);
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_BYTES)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
    let result = tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        () = lifetime => None,
        result = conn.as_mut() => Some(result),
    };
    let result = match result {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN_TIMEOUT, conn).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!("connection did not finish in time; closed");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        // Client errors (bad request, timeouts, resets) are the client's business.
        tracing::debug!(error = %e, "health connection ended with an error");
    }
}

/// The whole request handling: synchronous, no body read, never panics.
fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
        resp.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return close(resp);
    }
    // Nothing here takes a body; refuse one rather than read it.
    if req.body().size_hint().upper() != Some(0) {
        return close(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body not accepted\n".into(),
        ));
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let state = shared.ready.borrow().clone();
            let runtime = match &*shared.runtime.borrow() {
                None => String::new(),
                Some(RuntimeState::Up { version }) => {
                    format!("container runtime up ({})\n", one_line(version))
                }
                Some(RuntimeState::Unknown) => "container runtime not probed yet\n".to_owned(),
                Some(RuntimeState::Down { reason }) => {
                    format!("container runtime down: {}\n", one_line(reason))
                }
            };
            // The status follows the cloud link (a node without a runtime still syncs and
            // keeps its store); the runtime's state is the second line.
            if state.is_ready() {
                text(StatusCode::OK, format!("ok: {state}\n{runtime}"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{state}\n{runtime}"),
                )
            }
        }
        "/metrics" => match shared.metrics.encode() {
            Ok(body) => {
                let mut resp = text(StatusCode::OK, body);
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(metrics::CONTENT_TYPE),
                );
                resp
            }
            Err(e) => {
                tracing::warn!(error = %e, "encoding metrics failed");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding metrics failed\n".into(),
                )
            }
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Asks hyper to close the connection after this response.
fn close(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    resp.headers_mut()
        .insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgehub::DisconnectReason;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bound on every wait in these tests.
    const WAIT: Duration = Duration::from_secs(10);

    struct Running {
        addr: SocketAddr,
        metrics: Metrics,
        ready: watch::Sender<ReadyState>,
        runtime: watch::Sender<Option<RuntimeState>>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    }

    async fn start(initial: ReadyState) -> Running {
        let metrics = Metrics::new();
        let (ready, ready_rx) = watch::channel(initial);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let server = HealthServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let (runtime, runtime_rx) = watch::channel(None);
        server.spawn(
            metrics.clone(),
            ready_rx,
            runtime_rx,
            cancel.child_token(),
            &tracker,
        );
        Running {
            addr,
            metrics,
            ready,
            runtime,
            cancel,
            tracker,
        }
    }

    /// Sends `raw` on a fresh connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
            .await
            .expect("the server answers and closes")
            .unwrap();
        parse(&buf)
    }

    fn parse(buf: &[u8]) -> (u16, String) {
        let text = String::from_utf8_lossy(buf);
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code");
        (status, body.to_owned())
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        exchange(addr, req.as_bytes()).await
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }

    fn connecting() -> LinkState {
        LinkState::Connecting {
            endpoint: "10.0.0.1:10000".into(),
            attempt: 3,
        }
    }

    fn connected() -> LinkState {
        LinkState::Connected {
            session: 1,
            endpoint: "10.0.0.1:10000".into(),
        }
    }

    #[tokio::test]
    async fn healthz_is_ok_and_unknown_paths_are_404() {
        let s = start(ReadyState::Starting).await;
        assert_eq!(get(s.addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(s.addr, "/healthz?verbose=1").await.0, 200);
        let head = b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert_eq!(exchange(s.addr, head).await, (200, String::new()));
        for path in ["/", "/metricsx", "/readyz/", "/debug/pprof", "/%00"] {
            assert_eq!(get(s.addr, path).await.0, 404, "{path}");
        }
    }

    #[tokio::test]
    async fn readyz_flips_with_the_readiness_input() {
        let s = start(ReadyState::Starting).await;
        let (status, body) = get(s.addr, "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(body, "starting: the store is not open yet\n");

        s.ready.send_replace(ReadyState::Running(connecting()));
        let (status, body) = get(s.addr, "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(
            body,
            "no cloud session: connecting to 10.0.0.1:10000 (attempt 3)\n"
        );

        s.ready.send_replace(ReadyState::Running(connected()));
        assert_eq!(
            get(s.addr, "/readyz").await,
            (200, "ok: cloud session with 10.0.0.1:10000\n".into())
        );

        s.ready
            .send_replace(ReadyState::Running(LinkState::Disconnected {
                reason: DisconnectReason::Silent,
            }));
        assert_eq!(
            get(s.addr, "/readyz").await,
            (503, "no cloud session: link down (silent)\n".into())
        );

        s.ready.send_replace(ReadyState::Offline);
        assert_eq!(get(s.addr, "/readyz").await.0, 200);
        s.ready.send_replace(ReadyState::Stopping);
        assert_eq!(get(s.addr, "/readyz").await.0, 503);
    }

    /// The container runtime's state is reported next to the link, and in the metrics; the
    /// status still follows the link.
    #[tokio::test]
    async fn readyz_and_metrics_carry_the_container_runtime() {
        let s = start(ReadyState::Running(connected())).await;
        let (edged_tx, edged_rx) = watch::channel(RuntimeState::Unknown);
        let cancel = CancellationToken::new();
        let follow = tokio::spawn(follow_runtime(
            edged_rx,
            s.runtime.clone(),
            s.metrics.edged(),
            cancel.clone(),
        ));
        let mut seen = s.runtime.subscribe();
        edged_tx.send_replace(RuntimeState::Down {
            reason: "container runtime at unix:///run/c.sock is unavailable".into(),
        });
        seen.wait_for(|r| matches!(r, Some(RuntimeState::Down { .. })))
            .await
            .unwrap();
        assert_eq!(
            get(s.addr, "/readyz").await,
            (
                200,
                "ok: cloud session with 10.0.0.1:10000\n\
                 container runtime down: container runtime at unix:///run/c.sock is unavailable\n"
                    .into()
            )
        );
        assert!(
            get(s.addr, "/metrics")
                .await
                .1
                .contains("edgecore_edged_runtime_up 0")
        );
        edged_tx.send_replace(RuntimeState::Up {
            version: "containerd://1.6.20".into(),
        });
        seen.wait_for(|r| matches!(r, Some(RuntimeState::Up { .. })))
            .await
            .unwrap();
        let (_, body) = get(s.addr, "/readyz").await;
        assert!(
            body.ends_with("container runtime up (containerd://1.6.20)\n"),
            "{body}"
        );
        assert!(
            get(s.addr, "/metrics")
                .await
                .1
                .contains("edgecore_edged_runtime_up 1")
        );
        cancel.cancel();
        follow.await.unwrap();
    }

    #[tokio::test]
    async fn metrics_scraped_over_tcp_move_after_updates() {
        let s = start(ReadyState::Offline).await;
        let (status, before) = get(s.addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            sample(&before, "edgecore_metamanager_outbox_depth"),
            Some(0.0)
        );
        assert_eq!(
            sample(&before, "edgecore_edgehub_messages_received_total"),
            Some(0.0)
        );

        let hub = s.metrics.hub();
        hub.observe_link(&connected());
        hub.observe_reconnects([(DisconnectReason::Silent, 2)]);
        hub.message_received();
        s.metrics.meta().set_outbox_depth(42);
        s.metrics.meta().ack_sent();
        s.metrics.store().set_size_bytes(4096);

        let (status, after) = get(s.addr, "/metrics").await;
        assert_eq!(status, 200);
        for (series, value) in [
            ("edgecore_metamanager_outbox_depth", 42.0),
            ("edgecore_metamanager_acks_sent_total", 1.0),
            ("edgecore_store_size_bytes", 4096.0),
            ("edgecore_edgehub_messages_received_total", 1.0),
            ("edgecore_edgehub_reconnects_total{reason=\"silent\"}", 2.0),
            ("edgecore_edgehub_session_state{state=\"connected\"}", 1.0),
            (
                "edgecore_edgehub_session_state{state=\"disconnected\"}",
                0.0,
            ),
        ] {
            assert_eq!(sample(&after, series), Some(value), "{series} in\n{after}");
        }
    }

    #[tokio::test]
    async fn metrics_carry_the_openmetrics_content_type() {
        let s = start(ReadyState::Offline).await;
        let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        stream.write_all(req).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf).to_lowercase();
        assert!(
            text.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn oversized_request_heads_are_refused() {
        let s = start(ReadyState::Offline).await;
        // Over MAX_HEADER_BYTES but within one read, so the server has read it all and
        // closes cleanly after answering.
        let big = "a".repeat(MAX_HEADER_BYTES + 500);
        let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        assert_eq!(exchange(s.addr, req.as_bytes()).await.0, 431);
        // The server is still fine.
        assert_eq!(get(s.addr, "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn bodies_and_other_methods_are_refused() {
        let s = start(ReadyState::Offline).await;
        let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(exchange(s.addr, req).await.0, 413);
        let req = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(exchange(s.addr, req).await.0, 405);
        let req = b"DELETE /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(exchange(s.addr, req).await.0, 405);
    }

    #[tokio::test]
    async fn garbage_gets_400_not_a_crash() {
        let s = start(ReadyState::Offline).await;
        assert_eq!(
            exchange(s.addr, b"\x00\x01\x02 nonsense\r\n\r\n").await.0,
            400
        );
        assert_eq!(get(s.addr, "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn cancel_stops_listening_and_closes_kept_alive_connections() {
        let s = start(ReadyState::Offline).await;
        let mut kept = TcpStream::connect(s.addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Read the complete keep-alive response (its length is fixed: "ok\n").
        let mut buf = Vec::new();
        while !String::from_utf8_lossy(&buf).ends_with("\r\n\r\nok\n") {
            let mut chunk = [0u8; 512];
            let n = tokio::time::timeout(WAIT, kept.read(&mut chunk))
                .await
                .expect("a response")
                .unwrap();
            assert_ne!(n, 0, "closed early: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }

        s.cancel.cancel();
        s.tracker.close();
        tokio::time::timeout(WAIT, s.tracker.wait())
            .await
            .expect("every health task stops after cancel");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, kept.read_to_end(&mut rest))
            .await
            .expect("the kept-alive connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(TcpStream::connect(s.addr).await.is_err(), "still listening");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_is_disconnected() {
        let s = start(ReadyState::Offline).await;
        let mut silent = TcpStream::connect(s.addr).await.unwrap();
        let mut buf = Vec::new();
        // With the clock paused this completes as soon as the header-read timeout fires.
        let read = tokio::time::timeout(HEADER_READ_TIMEOUT * 4, silent.read_to_end(&mut buf))
            .await
            .expect("the server hangs up on a silent client");
        assert!(read.is_ok(), "{read:?}");
        assert!(buf.is_empty(), "no answer to a request never sent");
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_with_the_config_key() {
        let first = HealthServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let err = HealthServer::bind(first.local_addr()).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&first.local_addr().to_string()), "{text}");
        assert!(text.contains("modules.health.address"), "{text}");
    }

    #[tokio::test]
    async fn follow_link_feeds_readiness_and_hub_metrics() {
        let metrics = Metrics::new();
        let (link_tx, link_rx) = watch::channel(connecting());
        let (ready_tx, mut ready_rx) = watch::channel(ReadyState::Starting);
        let stats = || HubStats {
            sessions: 1,
            last_failover_ms: Some(900),
            ..HubStats::default()
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(follow_link(
            link_rx,
            stats,
            metrics.hub(),
            ready_tx,
            cancel.child_token(),
        ));

        let state = tokio::time::timeout(
            WAIT,
            ready_rx.wait_for(|s| matches!(s, ReadyState::Running(_))),
        )
        .await
        .expect("running published at start")
        .unwrap()
        .clone();
        assert!(!state.is_ready());

        link_tx.send_replace(connected());
        tokio::time::timeout(WAIT, ready_rx.wait_for(ReadyState::is_ready))
            .await
            .expect("ready once connected")
            .unwrap();
        let text = metrics.encode().unwrap();
        assert_eq!(
            sample(&text, "edgecore_edgehub_session_state{state=\"connected\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "edgecore_edgehub_sessions_total"), Some(1.0));
        assert_eq!(
            sample(&text, "edgecore_edgehub_last_failover_duration_seconds"),
            Some(0.9)
        );

        // The hub going away ends the task and readiness with it.
        drop(link_tx);
        tokio::time::timeout(WAIT, ready_rx.wait_for(|s| *s == ReadyState::Stopping))
            .await
            .expect("stopping once the link is gone")
            .unwrap();
        tracker.close();
        tokio::time::timeout(WAIT, tracker.wait()).await.unwrap();
    }
}
