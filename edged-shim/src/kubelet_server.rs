//! The kubelet-style local server that EdgeStream relays the API server's requests to
//! (`docs/edgestream.md`): `GET /containerLogs/{namespace}/{pod}/{container}` from the CRI log
//! files, and `/exec`, `/attach`, `/portForward` through the runtime's streaming server
//! (`streaming.rs`). It listens on loopback by default.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::logs::{self, LogOptions};
use crate::runtime::Runtime;
use crate::streaming::{self, Refusal, Target};

/// Chunks of a followed log buffered for a slow client before the reader waits.
const CHUNKS: usize = 16;

pub(crate) type ServerBody = BoxBody<Bytes, Infallible>;

pub(crate) fn boxed<B>(body: B) -> ServerBody
where
    B: Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
{
    BoxBody::new(body)
}

/// The bound, not yet serving, server.
pub struct KubeletServer {
    listener: TcpListener,
    addr: SocketAddr,
    runtime: Option<Arc<dyn Runtime>>,
}

impl std::fmt::Debug for KubeletServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletServer")
            .field("addr", &self.addr)
            .field("streaming", &self.runtime.is_some())
            .finish()
    }
}

/// The server cannot listen.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the kubelet-style server: {source}")]
pub struct KubeletServerError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

impl KubeletServer {
    /// Binds `addr` (port 0 picks one).
    pub async fn bind(addr: SocketAddr) -> Result<Self, KubeletServerError> {
        let err = |source| KubeletServerError { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        Ok(Self {
            listener,
            addr,
            runtime: None,
        })
    }

    /// Serves exec, attach and port-forward through `runtime`'s streaming server; without
    /// it they are answered 404.
    #[must_use]
    pub fn with_runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves logs from `pod_logs_dir` (`podLogsDir`) until `cancel`.
    pub fn spawn(self, pod_logs_dir: PathBuf, cancel: CancellationToken, tracker: &TaskTracker) {
        let dir = Arc::new(pod_logs_dir);
        let runtime = self.runtime;
        let conns = tracker.clone();
        tracker.spawn(
            async move {
                tracing::info!(
                    addr = %self.addr,
                    streaming = runtime.is_some(),
                    "kubelet-style server listening (containerLogs, exec, attach, portForward)"
                );
                loop {
                    let accepted = tokio::select! {
                        biased;
                        () = cancel.cancelled() => break,
                        a = self.listener.accept() => a,
                    };
                    let stream = match accepted {
                        Ok((s, _)) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "accept failed");
                            continue;
                        }
                    };
                    let dir = Arc::clone(&dir);
                    let runtime = runtime.clone();
                    let cancel = cancel.clone();
                    let upgraded = conns.clone();
                    conns.spawn(async move {
                        let stop = cancel.clone();
                        let service = service_fn(move |req: Request<Incoming>| {
                            let dir = Arc::clone(&dir);
                            let runtime = runtime.clone();
                            let (stop, upgraded) = (stop.clone(), upgraded.clone());
                            async move {
                                Ok::<_, Infallible>(
                                    answer(&dir, runtime, req, &stop, &upgraded).await,
                                )
                            }
                        });
                        let conn = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades();
                        tokio::select! {
                            _ = conn => {}
                            () = cancel.cancelled() => {}
                        }
                    });
                }
            }
            .instrument(tracing::info_span!("kubelet_server")),
        );
    }
}

fn text(code: StatusCode, body: String) -> Response<ServerBody> {
    let mut resp = Response::new(boxed(Full::new(Bytes::from(body))));
    *resp.status_mut() = code;
    resp
}

/// Answers one request; an upgraded exec, attach or port-forward connection goes on in a task
/// of `upgraded` until either side ends it or `stop`.
async fn answer(
    dir: &std::path::Path,
    runtime: Option<Arc<dyn Runtime>>,
    req: Request<Incoming>,
    stop: &CancellationToken,
    upgraded: &TaskTracker,
) -> Response<ServerBody> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if let Some(target) = Target::parse(&parts) {
        let Some(runtime) = runtime else {
            return text(
                StatusCode::NOT_FOUND,
                format!("{path} is not served here: no container runtime\n"),
            );
        };
        return match streaming::serve(runtime, target, req, stop, upgraded).await {
            Ok(resp) => resp,
            Err(Refusal(code, why)) => {
                tracing::info!(path, %code, why, "streaming request refused");
                text(code, format!("{why}\n"))
            }
        };
    }
    let ["containerLogs", namespace, pod, container] = parts.as_slice() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{} is not served here\n", req.uri().path()),
        );
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned());
    }
    let options = match LogOptions::from_query(
        req.uri().query().unwrap_or(""),
        std::time::SystemTime::now(),
    ) {
        Ok(o) => o,
        Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let Some(path) = logs::log_file(dir, namespace, pod, container, options.previous) else {
        let which = if options.previous { "previous " } else { "" };
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no {which}log of container {container:?} in pod {namespace}/{pod} on this node\n"
            ),
        );
    };
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS);
    let what = format!("{namespace}/{pod}/{container}");
    tokio::spawn(async move {
        let sent = logs::stream(&path, &options, |chunk| {
            let tx = tx.clone();
            async move { tx.send(Bytes::from(chunk)).await.is_ok() }
        })
        .await;
        if let Err(e) = sent {
            tracing::info!(container = %what, error = %e, "container log could not be read");
        }
    });
    let mut resp = Response::new(boxed(Chunks(rx)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// A body fed by the log reader, ending when it stops.
struct Chunks(mpsc::Receiver<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header("host", "kubelet")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn container_logs_are_served_as_the_kubelet_serves_them() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("shop_web_u1").join("app");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(
            c.join("0.log"),
            "2026-12-05T10:00:00Z stdout F before the restart\n",
        )
        .unwrap();
        std::fs::write(
            c.join("1.log"),
            "2026-12-05T10:01:00Z stdout F one\n2026-12-05T10:01:01Z stderr F two\n",
        )
        .unwrap();
        let server = KubeletServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        server.spawn(dir.path().to_owned(), cancel.clone(), &tracker);

        assert_eq!(
            get(addr, "/containerLogs/shop/web/app").await,
            (200, "one\ntwo\n".to_owned())
        );
        assert_eq!(
            get(
                addr,
                "/containerLogs/shop/web/app?tailLines=1&timestamps=true"
            )
            .await,
            (200, "2026-12-05T10:01:01Z two\n".to_owned())
        );
        assert_eq!(
            get(addr, "/containerLogs/shop/web/app?previous=true").await,
            (200, "before the restart\n".to_owned())
        );
        let (code, why) = get(addr, "/containerLogs/shop/web/db").await;
        assert_eq!(code, 404);
        assert!(why.contains("\"db\""), "{why}");
        assert_eq!(
            get(addr, "/containerLogs/shop/web/app?tailLines=x").await.0,
            400
        );
        assert_eq!(get(addr, "/exec/shop/web/app").await.0, 404);
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// A runtime streaming server: answers one upgrade with 101 and then echoes upper-cased;
    /// hands back the request head it got.
    async fn streaming_server() -> (SocketAddr, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 64];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
            }
            String::from_utf8(head).unwrap()
        });
        (addr, task)
    }

    /// Sends a raw upgrade request; returns the answer's head and the connection.
    async fn upgrade(addr: SocketAddr, path: &str) -> (String, tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:10350\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        (String::from_utf8(head).unwrap(), s)
    }

    #[tokio::test]
    async fn exec_is_proxied_to_the_runtimes_streaming_server() {
        use crate::fake_runtime::FakeRuntime;
        use crate::runtime::{StreamIo, StreamRequest};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (upstream, upstream_done) = streaming_server().await;
        let runtime = FakeRuntime::with_images(&["busybox"]);
        runtime.state().stream_base = Some(format!("http://{upstream}"));
        let (sandbox, container) = crate::testutil::running_pair("web", "app", "busybox", 0);
        let sb = runtime.run_sandbox(&sandbox).await.unwrap();
        let id = runtime
            .create_container(&sb, &sandbox, &container)
            .await
            .unwrap();
        runtime.start_container(&id).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let server = KubeletServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .with_runtime(Arc::new(runtime.clone()));
        let addr = server.local_addr();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        server.spawn(dir.path().to_owned(), cancel.clone(), &tracker);

        // Refusals name what was wrong.
        let (code, why) = get(addr, "/exec/default/web/app?stdout=1").await;
        assert_eq!(code, 400);
        assert!(why.contains("command"), "{why}");
        let (code, why) = get(addr, "/exec/default/nope/app?command=ls&stdout=1").await;
        assert_eq!(code, 404);
        assert!(why.contains("default/nope"), "{why}");
        let (code, why) = get(addr, "/attach/default/web/db?stdout=1").await;
        assert_eq!(code, 404);
        assert!(why.contains("\"db\""), "{why}");

        let (head, mut conn) = upgrade(
            addr,
            "/exec/default/web/app?command=sh&command=-c&command=echo+hi&stdin=1&stdout=1&stderr=1",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-stream-protocol-version: v4.channel.k8s.io"),
            "{head}"
        );
        conn.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        conn.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"PING");
        drop(conn);
        let seen = upstream_done.await.unwrap();
        assert!(seen.starts_with("POST /exec/token1 HTTP/1.1\r\n"), "{seen}");
        let lower = seen.to_ascii_lowercase();
        assert!(lower.contains("upgrade: spdy/3.1"), "{seen}");
        assert_eq!(
            lower.matches("x-stream-protocol-version").count(),
            2,
            "{seen}"
        );
        assert_eq!(
            runtime.state().stream_requests,
            [StreamRequest::Exec {
                container_id: id,
                cmd: vec!["sh".into(), "-c".into(), "echo hi".into()],
                io: StreamIo {
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    tty: false
                },
            }]
        );
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
