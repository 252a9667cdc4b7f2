//! The kubelet-style local server that EdgeStream relays the API server's requests to
//! (`docs/edgestream.md`): `GET /containerLogs/{namespace}/{pod}/{container}` from the CRI log
//! files. It listens on loopback by default; exec, attach and port-forward are not served yet.

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

/// Chunks of a followed log buffered for a slow client before the reader waits.
const CHUNKS: usize = 16;

type ServerBody = BoxBody<Bytes, Infallible>;

/// The bound, not yet serving, server.
#[derive(Debug)]
pub struct KubeletServer {
    listener: TcpListener,
    addr: SocketAddr,
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
        Ok(Self { listener, addr })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves logs from `pod_logs_dir` (`podLogsDir`) until `cancel`.
    pub fn spawn(self, pod_logs_dir: PathBuf, cancel: CancellationToken, tracker: &TaskTracker) {
        let dir = Arc::new(pod_logs_dir);
        let conns = tracker.clone();
        tracker.spawn(
            async move {
                tracing::info!(addr = %self.addr, "kubelet-style server listening (containerLogs)");
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
                    let cancel = cancel.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let dir = Arc::clone(&dir);
                            async move { Ok::<_, Infallible>(answer(&dir, &req).await) }
                        });
                        let conn =
                            http1::Builder::new().serve_connection(TokioIo::new(stream), service);
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
    let mut resp = Response::new(BoxBody::new(Full::new(Bytes::from(body))));
    *resp.status_mut() = code;
    resp
}

async fn answer<B>(dir: &std::path::Path, req: &Request<B>) -> Response<ServerBody> {
    let parts: Vec<&str> = req
        .uri()
        .path()
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
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
    let mut resp = Response::new(BoxBody::new(Chunks(rx)));
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
}
