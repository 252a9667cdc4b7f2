//! EdgeStream's tunnel to CloudCore's cloudStream (`docs/edgestream.md`): a second kind of link
//! with the hub's TLS, dial and backoff. cloudStream relays the API server's kubelet requests
//! over it as frames `uvarint(connectID) uvarint(type) data`; each `LOGS_CONNECT` or
//! `METRIC_CONNECT` is replayed as an HTTP GET against the local kubelet-style server and its
//! answer streamed back as `DATA` frames, then `REMOVE_CONNECT`. Exec, attach and port-forward
//! are refused with `REMOVE_CONNECT` for now. A bad frame is logged and dropped; it never stops
//! the tunnel or another stream.
//!
//! cloudStream sends its frames as WebSocket *text* messages with binary bytes, which a
//! conforming client refuses once they are not UTF-8, so the tunnel reads frames itself
//! ([`crate::raw_ws`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::ReconnectBackoff;
use crate::dial::Target;
use crate::endpoints::Endpoint;
use crate::error::HubError;
use crate::raw_ws;
use crate::tls::ClientTls;

const LOGS_CONNECT: u64 = 0;
const EXEC_CONNECT: u64 = 1;
const METRIC_CONNECT: u64 = 2;
const DATA: u64 = 3;
const REMOVE_CONNECT: u64 = 4;
const CLOSE_CONNECT: u64 = 5;
const ATTACH_CONNECT: u64 = 6;

/// How often the tunnel is pinged (KubeEdge: every 5 s).
const PING_EVERY: Duration = Duration::from_secs(5);
/// How often the certificate files are looked at while a tunnel is up.
const CERT_CHECK: Duration = Duration::from_secs(5);
/// How long a tunnel cloudStream has not started serving may stay silent. cloudStream serves
/// a tunnel only once it has set the Node's kubelet port, trying every 20 s for 2 minutes
/// (`DefaultRetrySleepTime`, `DefaultNodeStatusUpdateTimeout`), and then sends `CLOSE_CONNECT`;
/// silence past that means the socket is dead.
const UNSERVED_LIMIT: Duration = Duration::from_secs(150);
/// Frames waiting for the socket.
const OUTBOUND: usize = 256;
/// Largest WebSocket message taken from cloudStream (as the hub's).
const MAX_FRAME: usize = crate::dial::MAX_MESSAGE_BYTES;
/// Largest piece of a local answer in one `DATA` frame.
const CHUNK: usize = 32 * 1024;
/// `DATA` frames from cloudStream waiting for one exec or attach stream's local connection;
/// a stream that falls this far behind is closed rather than stalling the tunnel.
const INBOUND: usize = 128;

/// What the tunnel needs.
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    /// `hostnameOverride`: the session's name in cloudStream.
    pub node: String,
    /// The node's address, sent as `SessionInternalIP`.
    pub node_ip: String,
    /// `modules.edgeStream`.
    pub stream: config::EdgeStream,
    /// `modules.edgeHub` (its failover backoff is used for re-dialling).
    pub hub: config::EdgeHub,
    /// The local kubelet-style server the requests are replayed against.
    pub local: SocketAddr,
}

/// Dials the tunnel and serves it until `cancel`, re-dialling with the hub's backoff.
pub fn spawn_tunnel(
    settings: TunnelSettings,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), HubError> {
    let mut files = settings.hub.clone();
    files
        .tls_ca_file
        .clone_from(&settings.stream.tls_tunnel_ca_file.clone().into());
    files
        .tls_cert_file
        .clone_from(&settings.stream.tls_tunnel_cert_file.clone().into());
    files
        .tls_private_key_file
        .clone_from(&settings.stream.tls_tunnel_private_key_file.clone().into());
    let endpoint = Endpoint::try_new("modules.edgeStream.server", &settings.stream.server)?;
    let limit = Duration::from_secs(u64::from(settings.stream.handshake_timeout.max(1)));
    let read_deadline =
        Duration::from_secs(u64::from(settings.stream.read_deadline.max(1))).max(PING_EVERY * 2);
    let node = settings.node.clone();
    let tasks = tracker.clone();
    tracker.spawn(
        async move {
            let mut backoff = ReconnectBackoff::new(&settings.hub.failover);
            loop {
                // The files are read again for every dial: a rotated certificate is used.
                let target = ClientTls::load(&files).and_then(|tls| {
                    Target::tunnel(endpoint.clone(), &tls, &settings.node, &settings.node_ip, limit)
                        .map(|t| (t, tls.fingerprint()))
                });
                let stamp = files_stamp(&files).await;
                match target {
                    Ok((target, cert)) => match target.dial_tls().await {
                        Ok((mut tls, request)) => match raw_ws::handshake(&mut tls, request).await {
                            Ok(leftover) => {
                                tracing::info!(endpoint = %endpoint, cert, "edgestream tunnel up");
                                backoff.reset();
                                let renewed = certificate_changed(&files, stamp, CERT_CHECK);
                                let why = serve(tls, leftover, read_deadline, settings.local, renewed, &cancel, &tasks).await;
                                tracing::info!(endpoint = %endpoint, why, "edgestream tunnel down");
                            }
                            Err(e) => tracing::warn!(endpoint = %endpoint, error = %e, "edgestream tunnel upgrade failed"),
                        },
                        Err(e) => tracing::warn!(endpoint = %endpoint, error = %e, "edgestream tunnel dial failed"),
                    },
                    Err(e) => tracing::warn!(error = %e, "edgestream tunnel certificate files not usable"),
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        .instrument(tracing::info_span!("edgestream", node = %node)),
    );
    Ok(())
}

/// When the certificate and key files were last written, as far as `stat` tells.
type Stamp = Option<(std::time::SystemTime, u64, std::time::SystemTime, u64)>;

async fn files_stamp(files: &config::EdgeHub) -> Stamp {
    let cert = tokio::fs::metadata(&files.tls_cert_file).await.ok()?;
    let key = tokio::fs::metadata(&files.tls_private_key_file)
        .await
        .ok()?;
    Some((
        cert.modified().ok()?,
        cert.len(),
        key.modified().ok()?,
        key.len(),
    ))
}

/// Ends when the certificate or key file differs from `stamp` (renewed by our rotation, or
/// replaced by an operator): the tunnel is then dialled again with the new pair (kubeedge#5788
/// is the tunnel that kept the old one).
async fn certificate_changed(files: &config::EdgeHub, stamp: Stamp, every: Duration) -> String {
    let mut check = tokio::time::interval(every);
    check.tick().await;
    loop {
        check.tick().await;
        let now = files_stamp(files).await;
        if now.is_some() && now != stamp {
            return "the certificate files changed; dialling again with the new pair".to_owned();
        }
    }
}

/// One frame of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) id: u64,
    pub(crate) kind: u64,
    pub(crate) data: Vec<u8>,
}

impl Frame {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 20);
        put_uvarint(&mut out, self.id);
        put_uvarint(&mut out, self.kind);
        out.extend_from_slice(&self.data);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (id, n) = uvarint(bytes)?;
        let (kind, m) = uvarint(bytes.get(n..)?)?;
        Some(Self {
            id,
            kind,
            data: bytes.get(n + m..)?.to_vec(),
        })
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// A connect frame's request: Go's `url.URL` and `http.Header` as JSON.
#[derive(Debug, Deserialize)]
struct Connect {
    url: GoUrl,
    #[serde(default)]
    header: HashMap<String, Vec<String>>,
    /// Exec and attach carry the API server's method (`POST` or `GET`).
    #[serde(default)]
    method: String,
}

impl Connect {
    fn path(&self) -> String {
        if self.url.raw_query.is_empty() {
            self.url.path.clone()
        } else {
            format!("{}?{}", self.url.path, self.url.raw_query)
        }
    }

    /// The request as KubeEdge's edge writes it to the local server for an upgrade: the API
    /// server's method, path and headers (`Connection`, `Upgrade`, the stream protocol
    /// versions), with `Host` set to the local server. `None` when a header is not writable.
    fn upgrade_head(&self, local: SocketAddr) -> Option<Vec<u8>> {
        let method = match self.method.as_str() {
            "" => "GET",
            m if m.bytes().all(|b| b.is_ascii_uppercase()) => m,
            _ => return None,
        };
        let path = self.path();
        if !path.starts_with('/')
            || path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return None;
        }
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {local}\r\n");
        let mut headers: Vec<_> = self.header.iter().collect();
        headers.sort_by_key(|(name, _)| *name);
        for (name, values) in headers {
            if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return None;
            }
            for value in values {
                if value.bytes().any(|b| b == b'\r' || b == b'\n') {
                    return None;
                }
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str("\r\n");
        Some(head.into_bytes())
    }
}

/// One relayed stream of the tunnel.
struct Stream {
    stop: CancellationToken,
    /// Where cloudStream's `DATA` for an exec or attach goes; `None` for logs and metrics.
    input: Option<mpsc::Sender<Vec<u8>>>,
}

#[derive(Debug, Deserialize)]
struct GoUrl {
    #[serde(rename = "Path", default)]
    path: String,
    #[serde(rename = "RawQuery", default)]
    raw_query: String,
}

async fn serve<S>(
    stream: S,
    leftover: Vec<u8>,
    read_deadline: Duration,
    local: SocketAddr,
    renewed: impl std::future::Future<Output = String>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::pin!(renewed);
    use tokio::io::AsyncReadExt;
    let (mut read, mut write) = tokio::io::split(stream);
    let mut reader = raw_ws::Reader::new(leftover, MAX_FRAME);
    let (tx, mut rx) = mpsc::channel::<Frame>(OUTBOUND);
    let session = cancel.child_token();
    let mut streams: HashMap<u64, Stream> = HashMap::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    // cloudStream reads the tunnel (and so answers pings) only once it serves the session,
    // after it has set the Node's kubelet port; until then the socket is silent by design and
    // only UNSERVED_LIMIT applies. From its first frame on, readDeadline does.
    let mut last_heard = tokio::time::Instant::now();
    let mut served = false;
    let why = 'session: loop {
        // Every whole message already received.
        loop {
            let msg = match reader.next() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => break 'session format!("unreadable WebSocket frame: {e}"),
            };
            let bytes = match msg {
                raw_ws::Incoming::Data(b) => b,
                raw_ws::Incoming::Ping(p) => {
                    if let Err(e) = send(&mut write, raw_ws::pong(p)).await {
                        break 'session format!("write failed: {e}");
                    }
                    continue;
                }
                raw_ws::Incoming::Close => break 'session "closed by cloudStream".to_owned(),
            };
            let Some(frame) = Frame::decode(&bytes) else {
                tracing::info!(len = bytes.len(), "edgestream frame not readable; dropped");
                continue;
            };
            tracing::debug!(
                id = frame.id,
                kind = frame.kind,
                len = frame.data.len(),
                "edgestream frame"
            );
            match frame.kind {
                LOGS_CONNECT | METRIC_CONNECT => {
                    let stop = session.child_token();
                    let stream = Stream {
                        stop: stop.clone(),
                        input: None,
                    };
                    if let Some(old) = streams.insert(frame.id, stream) {
                        old.stop.cancel();
                    }
                    tracker.spawn(relay(frame, local, tx.clone(), stop));
                }
                EXEC_CONNECT | ATTACH_CONNECT => {
                    let stop = session.child_token();
                    let (input, from_cloud) = mpsc::channel(INBOUND);
                    let stream = Stream {
                        stop: stop.clone(),
                        input: Some(input),
                    };
                    if let Some(old) = streams.insert(frame.id, stream) {
                        old.stop.cancel();
                    }
                    tracker.spawn(relay_upgrade(frame, local, tx.clone(), from_cloud, stop));
                }
                REMOVE_CONNECT => {
                    if let Some(stream) = streams.remove(&frame.id) {
                        stream.stop.cancel();
                    }
                }
                DATA => {
                    let Some(stream) = streams.get(&frame.id) else {
                        tracing::debug!(id = frame.id, "edgestream data for no stream; dropped");
                        continue;
                    };
                    let Some(input) = &stream.input else { continue };
                    if let Err(mpsc::error::TrySendError::Full(_)) = input.try_send(frame.data) {
                        tracing::info!(
                            id = frame.id,
                            "edgestream stream's local connection fell {INBOUND} frames behind; closed"
                        );
                        // Its task sends REMOVE_CONNECT; later data for it is dropped quietly.
                        if let Some(stream) = streams.remove(&frame.id) {
                            stream.stop.cancel();
                        }
                    }
                }
                CLOSE_CONNECT => {
                    break 'session format!(
                        "cloudStream closed the tunnel: {}",
                        String::from_utf8_lossy(&frame.data)
                    );
                }
                other => tracing::info!(
                    id = frame.id,
                    kind = other,
                    "edgestream frame of unknown type; dropped"
                ),
            }
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => break "shutting down".to_owned(),
            why = &mut renewed => break why,
            Some(frame) = rx.recv() => {
                if frame.kind == REMOVE_CONNECT {
                    streams.remove(&frame.id);
                }
                if let Err(e) = send(&mut write, raw_ws::text_bytes(frame.encode())).await {
                    break format!("write failed: {e}");
                }
            }
            _ = ping.tick() => {
                if served && last_heard.elapsed() > read_deadline {
                    break format!("nothing from cloudStream for {read_deadline:?} (readDeadline)");
                }
                if !served && last_heard.elapsed() > UNSERVED_LIMIT {
                    break format!("cloudStream did not start serving the tunnel in {UNSERVED_LIMIT:?}");
                }
                if let Err(e) = send(&mut write, raw_ws::ping(b"ping you".to_vec())).await {
                    break format!("ping failed: {e}");
                }
            }
            got = read.read_buf(reader.buffer()) => match got {
                Ok(0) => break "closed by cloudStream".to_owned(),
                Ok(_) => {
                    if !served {
                        tracing::info!("edgestream tunnel served by cloudStream");
                    }
                    served = true;
                    last_heard = tokio::time::Instant::now();
                }
                Err(e) => break format!("read failed: {e}"),
            },
        }
    };
    session.cancel();
    why
}

/// Writes one WebSocket frame and flushes it through TLS.
async fn send<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, frame: Vec<u8>) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    w.write_all(&frame).await?;
    w.flush().await
}

/// Replays one connect frame against the local server and streams the answer back.
async fn relay(frame: Frame, local: SocketAddr, tx: mpsc::Sender<Frame>, stop: CancellationToken) {
    let id = frame.id;
    let done = Frame {
        id,
        kind: REMOVE_CONNECT,
        data: Vec::new(),
    };
    let connect: Connect = match serde_json::from_slice(&frame.data) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(id, error = %e, "edgestream connect frame not readable; closed");
            let _ = tx.send(done).await;
            return;
        }
    };
    let path = connect.path();
    tracing::debug!(id, path, "edgestream request");
    let streamed = tokio::select! {
        () = stop.cancelled() => Ok(()),
        r = get(local, &path, &connect.header, id, &tx) => r,
    };
    if let Err(e) = streamed {
        tracing::info!(id, path, error = %e, "edgestream request to the local server failed");
    }
    let _ = tx.send(done).await;
}

/// Relays one exec or attach: the API server's upgrade request is written to the local
/// server, and from then on bytes flow unchanged both ways (the SPDY or WebSocket session is
/// between the API server and the runtime's streaming server) until either side ends.
async fn relay_upgrade(
    frame: Frame,
    local: SocketAddr,
    tx: mpsc::Sender<Frame>,
    mut from_cloud: mpsc::Receiver<Vec<u8>>,
    stop: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let id = frame.id;
    let done = Frame {
        id,
        kind: REMOVE_CONNECT,
        data: Vec::new(),
    };
    let head = match serde_json::from_slice::<Connect>(&frame.data) {
        Ok(c) => c
            .upgrade_head(local)
            .ok_or("a header or the path is not writable"),
        Err(_) => Err("not a connect request"),
    };
    let head = match head {
        Ok(h) => h,
        Err(why) => {
            tracing::info!(id, why, "edgestream exec/attach frame not usable; closed");
            let _ = tx.send(done).await;
            return;
        }
    };
    let ended = async {
        let conn = tokio::net::TcpStream::connect(local)
            .await
            .map_err(|e| format!("local server: {e}"))?;
        let (mut read, mut write) = conn.into_split();
        write
            .write_all(&head)
            .await
            .map_err(|e| format!("local server: {e}"))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok("closed by cloudStream"),
                got = read.read(&mut buf) => match got {
                    Ok(0) => return Ok("ended by the local server"),
                    Ok(n) => {
                        let out = Frame { id, kind: DATA, data: buf[..n].to_vec() };
                        if tx.send(out).await.is_err() {
                            return Ok("tunnel closed");
                        }
                    }
                    Err(e) => return Err(format!("local server: {e}")),
                },
                Some(data) = from_cloud.recv() => {
                    // A local side that stops reading must not keep the stream past its stop.
                    tokio::select! {
                        () = stop.cancelled() => return Ok("closed while the local server was not reading"),
                        w = write.write_all(&data) => w.map_err(|e| format!("local server: {e}"))?,
                    }
                }
            }
        }
    };
    match ended.await {
        Ok(why) => tracing::debug!(id, why, "edgestream exec/attach ended"),
        Err(e) => tracing::info!(id, error = %e, "edgestream exec/attach failed"),
    }
    let _ = tx.send(done).await;
}

async fn get(
    local: SocketAddr,
    path: &str,
    header: &HashMap<String, Vec<String>>,
    id: u64,
    tx: &mpsc::Sender<Frame>,
) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(local)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .uri(path)
        .header("host", local.to_string());
    for (name, values) in header {
        if matches!(
            name.to_ascii_lowercase().as_str(),
            "host" | "connection" | "upgrade" | "content-length" | "transfer-encoding"
        ) {
            continue;
        }
        for v in values {
            req = req.header(name.as_str(), v.as_str());
        }
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            for piece in data.chunks(CHUNK) {
                let out = Frame {
                    id,
                    kind: DATA,
                    data: piece.to_vec(),
                };
                if tx.send(out).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_uvarint_id_type_then_data() {
        let f = Frame {
            id: 300,
            kind: DATA,
            data: b"hello".to_vec(),
        };
        let bytes = f.encode();
        assert_eq!(&bytes[..3], &[0xac, 0x02, 0x03]);
        assert_eq!(Frame::decode(&bytes), Some(f));
        assert_eq!(Frame::decode(&[0x80]), None);
        assert_eq!(Frame::decode(&[]), None);
        let empty = Frame::decode(&[0x01, 0x04]).expect("a frame");
        assert_eq!(
            (empty.id, empty.kind, empty.data.len()),
            (1, REMOVE_CONNECT, 0)
        );
    }

    /// A fake cloudStream end: drains what the edge writes, and writes `frames` on demand.
    fn fake_cloud(
        cloud: tokio::io::DuplexStream,
    ) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
        let (mut read, mut write) = tokio::io::split(cloud);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let task = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut sink = tokio::io::sink();
            let drain = tokio::io::copy(&mut read, &mut sink);
            tokio::pin!(drain);
            loop {
                tokio::select! {
                    _ = &mut drain => return,
                    Some(bytes) = rx.recv() => {
                        if write.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        (tx, task)
    }

    fn start(
        edge: tokio::io::DuplexStream,
        read_deadline: Duration,
    ) -> tokio::task::JoinHandle<String> {
        // Nothing listens there; no request reaches it in these tests.
        let local = SocketAddr::from(([127, 0, 0, 1], 9));
        spawn_serve(edge, read_deadline, local, CancellationToken::new())
    }

    /// The local server's side of an upgrade: reads the request head, answers 101.
    async fn take_upgrade(s: &mut tokio::net::TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.expect("head");
            head.push(byte[0]);
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .expect("write");
        String::from_utf8(head).expect("ascii head")
    }

    /// Echoes what arrives, upper-cased, until the connection ends.
    async fn echo_upper_cased(mut s: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            if s.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                break;
            }
        }
    }

    /// The tunnel's session over `edge`, relaying to `local`, until `cancel`.
    fn spawn_serve(
        edge: tokio::io::DuplexStream,
        read_deadline: Duration,
        local: SocketAddr,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<String> {
        tokio::spawn(async move {
            let tracker = TaskTracker::new();
            serve(
                edge,
                Vec::new(),
                read_deadline,
                local,
                std::future::pending(),
                &cancel,
                &tracker,
            )
            .await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_waits_for_cloudstream_to_serve_it_then_read_deadline_applies() {
        let (edge, cloud) = tokio::io::duplex(64 * 1024);
        let (to_edge, _cloud) = fake_cloud(cloud);
        let deadline = Duration::from_secs(15);
        let tunnel = start(edge, deadline);
        // cloudStream retries the Node update every 20 s: a minute of silence is normal.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !tunnel.is_finished(),
            "the tunnel gave up before cloudStream served it"
        );
        // It serves the session: the first pong arrives, and from now on silence counts.
        to_edge
            .send(raw_ws::pong(b"ping you".to_vec()))
            .await
            .expect("the fake cloud runs");
        let served_at = tokio::time::Instant::now();
        let why = tokio::time::timeout(Duration::from_secs(60), tunnel)
            .await
            .expect("readDeadline ends a silent served tunnel")
            .expect("serve does not panic");
        assert!(why.contains("readDeadline"), "{why}");
        let after = served_at.elapsed();
        assert!(
            after >= deadline && after <= deadline + PING_EVERY * 2,
            "ended {after:?} after the last frame"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_never_served_ends_after_cloudstreams_own_limit() {
        let (edge, cloud) = tokio::io::duplex(64 * 1024);
        let (_to_edge, _cloud) = fake_cloud(cloud);
        let began = tokio::time::Instant::now();
        let why = tokio::time::timeout(
            Duration::from_secs(600),
            start(edge, Duration::from_secs(15)),
        )
        .await
        .expect("a dead socket is given up")
        .expect("serve does not panic");
        assert!(why.contains("did not start serving"), "{why}");
        assert!(
            began.elapsed() >= UNSERVED_LIMIT,
            "gave up after {:?}",
            began.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn close_connect_ends_the_tunnel_with_cloudstreams_reason() {
        let (edge, cloud) = tokio::io::duplex(64 * 1024);
        let (to_edge, _cloud) = fake_cloud(cloud);
        let tunnel = start(edge, Duration::from_secs(15));
        let close = Frame {
            id: 0,
            kind: CLOSE_CONNECT,
            data: b"failed to Update KubeletEndpoint Port".to_vec(),
        };
        to_edge
            .send(raw_ws::text_bytes(close.encode()))
            .await
            .expect("the fake cloud runs");
        let why = tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("CLOSE_CONNECT ends the tunnel at once")
            .expect("serve does not panic");
        assert!(
            why.contains("failed to Update KubeletEndpoint Port"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn exec_bytes_flow_both_ways_and_bad_frames_close_only_their_own_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The local kubelet-style server: takes the upgrade, answers 101, echoes upper-cased.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let local = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let head = take_upgrade(&mut s).await;
            echo_upper_cased(s).await;
            head
        });

        let (edge, cloud) = tokio::io::duplex(64 * 1024);
        let (mut cloud_read, mut cloud_write) = tokio::io::split(cloud);
        let cancel = CancellationToken::new();
        let tunnel = spawn_serve(edge, Duration::from_secs(15), local, cancel.clone());
        let connect = br#"{"MessID":7,"url":{"Scheme":"http","Host":"127.0.0.1:10350","Path":"/exec/default/web/app","RawQuery":"command=ls&stdout=1","Fragment":""},"header":{"Connection":["Upgrade"],"Upgrade":["SPDY/3.1"],"X-Stream-Protocol-Version":["v4.channel.k8s.io","v3.channel.k8s.io"]},"method":"POST"}"#;
        // Before the good stream: a truncated frame, a frame of no known type, an exec connect
        // that does not parse (stream 5) and data for no stream. None may touch stream 7.
        cloud_write
            .write_all(&raw_ws::text_bytes(vec![0x80]))
            .await
            .expect("cloud writes");
        for frame in [
            Frame {
                id: 3,
                kind: 99,
                data: b"?".to_vec(),
            },
            Frame {
                id: 5,
                kind: EXEC_CONNECT,
                data: br#"{"url": {"Path": "/exec/def"#.to_vec(),
            },
            Frame {
                id: 9,
                kind: DATA,
                data: b"stray".to_vec(),
            },
            Frame {
                id: 7,
                kind: EXEC_CONNECT,
                data: connect.to_vec(),
            },
            Frame {
                id: 7,
                kind: DATA,
                data: b"spdy bytes".to_vec(),
            },
        ] {
            cloud_write
                .write_all(&raw_ws::text_bytes(frame.encode()))
                .await
                .expect("cloud writes");
        }
        // What the edge sends back: stream 5 refused, stream 7's bytes until the echo is in.
        let mut reader = raw_ws::Reader::new(Vec::new(), MAX_FRAME);
        let mut back = Vec::new();
        let mut refused = false;
        while !(back.ends_with(b"SPDY BYTES") && refused) {
            match reader.next().expect("readable frames") {
                Some(raw_ws::Incoming::Data(bytes)) => {
                    let f = Frame::decode(&bytes).expect("a tunnel frame");
                    if f.id == 5 {
                        assert_eq!(f.kind, REMOVE_CONNECT, "the unparsable connect is closed");
                        refused = true;
                        continue;
                    }
                    assert_eq!((f.id, f.kind), (7, DATA));
                    back.extend_from_slice(&f.data);
                }
                Some(_) => {}
                None => {
                    let n = cloud_read
                        .read_buf(reader.buffer())
                        .await
                        .expect("cloud reads");
                    assert!(n > 0, "the edge closed the tunnel");
                }
            }
        }
        assert!(
            back.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&back)
        );
        // cloudStream ends the stream: the local connection is closed.
        let remove = Frame {
            id: 7,
            kind: REMOVE_CONNECT,
            data: Vec::new(),
        };
        cloud_write
            .write_all(&raw_ws::text_bytes(remove.encode()))
            .await
            .expect("cloud writes");
        let head = server
            .await
            .expect("the local server saw the connection end");
        assert!(
            head.starts_with("POST /exec/default/web/app?command=ls&stdout=1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("Host: {local}\r\n")), "{head}");
        assert!(head.contains("Upgrade: SPDY/3.1\r\n"), "{head}");
        assert_eq!(
            head.matches("X-Stream-Protocol-Version").count(),
            2,
            "{head}"
        );
        cancel.cancel();
        assert_eq!(tunnel.await.expect("serve does not panic"), "shutting down");
    }

    #[tokio::test]
    async fn a_stream_whose_local_side_stops_reading_is_closed_and_the_others_go_on() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The local server answers 101 to every upgrade; `/stuck/` connections are then never
        // read (held open), the others echo upper-cased.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let local = listener.local_addr().expect("addr");
        let (held_tx, _held) = mpsc::channel::<tokio::net::TcpStream>(4);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let held_tx = held_tx.clone();
                tokio::spawn(async move {
                    if take_upgrade(&mut s).await.contains("/stuck/") {
                        let _ = held_tx.send(s).await;
                    } else {
                        echo_upper_cased(s).await;
                    }
                });
            }
        });

        let (edge, cloud) = tokio::io::duplex(64 * 1024);
        let (mut cloud_read, mut cloud_write) = tokio::io::split(cloud);
        let cancel = CancellationToken::new();
        let tunnel = spawn_serve(edge, Duration::from_secs(15), local, cancel.clone());
        // Every frame the edge sends, decoded.
        let (seen_tx, mut seen) = mpsc::channel::<Frame>(1024);
        tokio::spawn(async move {
            let mut reader = raw_ws::Reader::new(Vec::new(), MAX_FRAME);
            loop {
                match reader.next().expect("readable frames") {
                    Some(raw_ws::Incoming::Data(bytes)) => {
                        let f = Frame::decode(&bytes).expect("a tunnel frame");
                        if seen_tx.send(f).await.is_err() {
                            return;
                        }
                    }
                    Some(_) => {}
                    None => match cloud_read.read_buf(reader.buffer()).await {
                        Ok(1..) => {}
                        _ => return,
                    },
                }
            }
        });
        let connect = |path: &str| {
            format!(
                r#"{{"url":{{"Path":"{path}","RawQuery":"command=cat&stdin=1"}},"header":{{"Connection":["Upgrade"],"Upgrade":["SPDY/3.1"]}},"method":"POST"}}"#
            )
            .into_bytes()
        };
        let frame = |id, kind, data: &[u8]| {
            raw_ws::text_bytes(
                Frame {
                    id,
                    kind,
                    data: data.to_vec(),
                }
                .encode(),
            )
        };
        // Waits for stream 12's echo to end with `want`.
        async fn echoed(seen: &mut mpsc::Receiver<Frame>, want: &[u8]) {
            let mut got = Vec::new();
            while !got.ends_with(want) {
                let f = seen.recv().await.expect("the tunnel is up");
                if f.id == 12 {
                    assert_eq!(f.kind, DATA, "stream 12 stays open");
                    got.extend_from_slice(&f.data);
                }
            }
        }
        for bytes in [
            frame(11, EXEC_CONNECT, &connect("/exec/default/stuck/app")),
            frame(12, EXEC_CONNECT, &connect("/exec/default/web/app")),
            frame(12, DATA, b"hello"),
        ] {
            cloud_write.write_all(&bytes).await.expect("cloud writes");
        }
        echoed(&mut seen, b"HELLO").await;

        // Stream 11's local side reads nothing: once the socket buffers and its queue are
        // full, the edge closes it (and only it).
        let chunk = frame(11, DATA, &vec![b'x'; 64 * 1024]);
        let mut closed = false;
        let mut other = Vec::new();
        for _ in 0..2000 {
            cloud_write.write_all(&chunk).await.expect("cloud writes");
            while let Ok(f) = seen.try_recv() {
                if (f.id, f.kind) == (11, REMOVE_CONNECT) {
                    closed = true;
                } else {
                    other.push((f.id, f.kind));
                }
            }
            if closed {
                break;
            }
        }
        assert!(closed, "the stuck stream was never closed");
        assert!(
            other.iter().all(|&(id, kind)| id == 11 && kind == DATA),
            "{other:?}"
        );
        // The tunnel and stream 12 were not held up.
        cloud_write
            .write_all(&frame(12, DATA, b"again"))
            .await
            .expect("cloud writes");
        echoed(&mut seen, b"AGAIN").await;
        cancel.cancel();
        assert_eq!(tunnel.await.expect("serve does not panic"), "shutting down");
    }

    #[test]
    fn an_upgrade_head_refuses_what_would_split_the_request() {
        let local = SocketAddr::from(([127, 0, 0, 1], 10350));
        let connect = |method: &str, path: &str, header: &str| -> Connect {
            serde_json::from_str(&format!(
                r#"{{"url":{{"Path":"{path}","RawQuery":""}},"header":{header},"method":"{method}"}}"#
            ))
            .expect("parses")
        };
        assert!(
            connect("POST", "/exec/a/b/c", r#"{"A":["1"]}"#)
                .upgrade_head(local)
                .is_some()
        );
        assert!(
            connect("POST", "/exec/a/b/c", r#"{"A":["1\r\nX: y"]}"#)
                .upgrade_head(local)
                .is_none()
        );
        assert!(
            connect("POST", "/exec/a b", "{}")
                .upgrade_head(local)
                .is_none()
        );
        assert!(
            connect("P OST", "/exec/a/b/c", "{}")
                .upgrade_head(local)
                .is_none()
        );
        assert!(
            connect("GET", "/x", r#"{"Bad Name":["v"]}"#)
                .upgrade_head(local)
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_renewed_pair_on_disk_ends_the_tunnel_so_it_is_dialled_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = config::EdgeHub {
            tls_cert_file: dir.path().join("server.crt"),
            tls_private_key_file: dir.path().join("server.key"),
            ..config::EdgeHub::default()
        };
        std::fs::write(&files.tls_cert_file, "old certificate").expect("write");
        std::fs::write(&files.tls_private_key_file, "old key").expect("write");
        let stamp = files_stamp(&files).await;
        assert!(stamp.is_some());
        let every = Duration::from_millis(20);
        // Unchanged files keep the tunnel.
        let unchanged = tokio::time::timeout(
            Duration::from_millis(200),
            certificate_changed(&files, stamp, every),
        )
        .await;
        assert!(unchanged.is_err(), "ended with no change");
        // A missing file (a rotation between its two renames) is not a change yet.
        std::fs::remove_file(&files.tls_private_key_file).expect("remove");
        let missing = tokio::time::timeout(
            Duration::from_millis(200),
            certificate_changed(&files, stamp, every),
        )
        .await;
        assert!(missing.is_err(), "ended on a missing file");
        // The renewed pair, written as the rotation does, ends it.
        std::fs::write(&files.tls_cert_file, "the renewed certificate").expect("write");
        std::fs::write(&files.tls_private_key_file, "the renewed key").expect("write");
        let why = tokio::time::timeout(
            Duration::from_secs(10),
            certificate_changed(&files, stamp, every),
        )
        .await
        .expect("a renewed pair is noticed");
        assert!(why.contains("certificate files changed"), "{why}");
    }

    #[test]
    fn a_connect_frame_names_the_kubelet_request() {
        let c: Connect = serde_json::from_str(
            r#"{"MessID":7,"url":{"Scheme":"http","Opaque":"","User":null,"Host":"127.0.0.1:10350","Path":"/containerLogs/ns/p/c","RawPath":"","RawQuery":"follow=true&tailLines=5","Fragment":""},"header":{"Accept":["*/*"]}}"#,
        )
        .expect("parses");
        assert_eq!(c.url.path, "/containerLogs/ns/p/c");
        assert_eq!(c.url.raw_query, "follow=true&tailLines=5");
        assert_eq!(c.header["Accept"], ["*/*"]);
    }
}
