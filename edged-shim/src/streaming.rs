//! `/exec`, `/attach` and `/portForward` as the kubelet serves them: the request names a pod
//! and container, the runtime hands out a URL on its streaming server (CRI `Exec`, `Attach`,
//! `PortForward`), and the client's upgraded connection (SPDY or WebSocket, whatever it asked
//! for) is proxied to that URL byte for byte. The runtime's streaming server speaks the
//! protocol; this module only finds the container and joins the two connections.

use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::{ContainerState, Runtime, RuntimeError, StreamIo, StreamRequest};

/// Largest non-upgrade answer of the runtime's streaming server passed back (an error text).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// What the path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// `/exec/{ns}/{pod}[/{uid}]/{container}`.
    Exec(Pod<'a>, &'a str),
    /// `/attach/{ns}/{pod}[/{uid}]/{container}`.
    Attach(Pod<'a>, &'a str),
    /// `/portForward/{ns}/{pod}[/{uid}]`.
    PortForward(Pod<'a>),
}

/// A pod named in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pod<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) uid: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// The streaming target of a path's segments, if it names one.
    pub(crate) fn parse(parts: &[&'a str]) -> Option<Self> {
        let pod = |namespace, name, uid| Pod {
            namespace,
            name,
            uid,
        };
        Some(match *parts {
            ["exec", ns, p, c] => Target::Exec(pod(ns, p, None), c),
            ["exec", ns, p, uid, c] => Target::Exec(pod(ns, p, Some(uid)), c),
            ["attach", ns, p, c] => Target::Attach(pod(ns, p, None), c),
            ["attach", ns, p, uid, c] => Target::Attach(pod(ns, p, Some(uid)), c),
            ["portForward", ns, p] => Target::PortForward(pod(ns, p, None)),
            ["portForward", ns, p, uid] => Target::PortForward(pod(ns, p, Some(uid))),
            _ => return None,
        })
    }
}

/// Why a streaming request is not served: the status and the text the client sees.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal(pub(crate) StatusCode, pub(crate) String);

impl Refusal {
    fn bad(why: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, why.into())
    }
}

impl From<RuntimeError> for Refusal {
    fn from(e: RuntimeError) -> Self {
        let code = match e {
            RuntimeError::NotFound { .. } => StatusCode::NOT_FOUND,
            ref e if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(code, e.to_string())
    }
}

/// The streams and command of an exec or attach query (`command` repeated; `stdin`, `stdout`,
/// `stderr`, `tty` as `1` or `true`), with the kubelet's rules: at least one stream, and no
/// separate stderr with a terminal.
pub(crate) fn stream_options(query: &str) -> Result<(StreamIo, Vec<String>), Refusal> {
    let mut io = StreamIo::default();
    let mut cmd = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let on = value == "1" || value.eq_ignore_ascii_case("true");
        match key.as_ref() {
            "command" => cmd.push(value.into_owned()),
            "stdin" | "input" => io.stdin = on,
            "stdout" | "output" => io.stdout = on,
            "stderr" | "error" => io.stderr = on,
            "tty" => io.tty = on,
            _ => {}
        }
    }
    if !(io.stdin || io.stdout || io.stderr) {
        return Err(Refusal::bad(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    if io.tty {
        io.stderr = false;
    }
    Ok((io, cmd))
}

/// The `port` values of a port-forward query (comma-separated or repeated).
pub(crate) fn forward_ports(query: &str) -> Result<Vec<i32>, Refusal> {
    let mut ports = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "port" {
            continue;
        }
        for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(i32::from(n)),
                _ => return Err(Refusal::bad(format!("invalid port {p:?}: want 1-65535"))),
            }
        }
    }
    Ok(ports)
}

/// The sandbox of `pod`: a ready one first, and the one with the right UID when given.
async fn sandbox_of(runtime: &dyn Runtime, pod: Pod<'_>) -> Result<String, Refusal> {
    let mut found: Vec<_> = runtime
        .list_sandboxes()
        .await?
        .into_iter()
        .filter(|s| s.namespace == pod.namespace && s.name == pod.name)
        .filter(|s| pod.uid.is_none_or(|u| s.uid == u))
        .collect();
    found.sort_by_key(|s| !s.ready);
    found.into_iter().next().map(|s| s.id).ok_or_else(|| {
        Refusal(
            StatusCode::NOT_FOUND,
            format!("pod {}/{} not found on this node", pod.namespace, pod.name),
        )
    })
}

/// The running container `name` of `pod` (its latest attempt).
async fn container_of(runtime: &dyn Runtime, pod: Pod<'_>, name: &str) -> Result<String, Refusal> {
    let sandbox = sandbox_of(runtime, pod).await?;
    let mut found: Vec<_> = runtime
        .list_containers(&sandbox)
        .await?
        .into_iter()
        .filter(|c| c.name == name)
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse(c.attempt));
    let Some(latest) = found.into_iter().next() else {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!(
                "container {name:?} not found in pod {}/{}",
                pod.namespace, pod.name
            ),
        ));
    };
    if latest.state != ContainerState::Running {
        return Err(Refusal::bad(format!(
            "container {name:?} in pod {}/{} is not running",
            pod.namespace, pod.name
        )));
    }
    Ok(latest.id)
}

/// The runtime's request for `target` with the URL's `query`.
pub(crate) async fn runtime_request(
    runtime: &dyn Runtime,
    target: &Target<'_>,
    query: &str,
) -> Result<StreamRequest, Refusal> {
    Ok(match target {
        Target::Exec(pod, container) => {
            let (io, cmd) = stream_options(query)?;
            if cmd.is_empty() {
                return Err(Refusal::bad(
                    "exec needs a command (the `command` parameter)",
                ));
            }
            StreamRequest::Exec {
                container_id: container_of(runtime, *pod, container).await?,
                cmd,
                io,
            }
        }
        Target::Attach(pod, container) => StreamRequest::Attach {
            io: stream_options(query)?.0,
            container_id: container_of(runtime, *pod, container).await?,
        },
        Target::PortForward(pod) => StreamRequest::PortForward {
            ports: forward_ports(query)?,
            sandbox_id: sandbox_of(runtime, *pod).await?,
        },
    })
}

/// Serves one streaming request: asks the runtime for its URL and proxies the upgrade there,
/// the joined connections in a task of `upgraded` that ends with them or at `stop`.
pub(crate) async fn serve(
    runtime: Arc<dyn Runtime>,
    target: Target<'_>,
    req: Request<Incoming>,
    stop: &CancellationToken,
    upgraded: &TaskTracker,
) -> Result<Response<crate::kubelet_server::ServerBody>, Refusal> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let request = runtime_request(runtime.as_ref(), &target, &query).await?;
    let url = runtime.stream_url(&request).await?;
    tracing::info!(?target, "streaming request proxied to the runtime");
    proxy_upgrade(req, &url, stop, upgraded).await
}

/// Sends `req` (an upgrade request) to `url` and, once that answers `101`, joins the two
/// upgraded connections. Any other answer is passed back as it is.
async fn proxy_upgrade(
    mut req: Request<Incoming>,
    url: &str,
    stop: &CancellationToken,
    upgraded: &TaskTracker,
) -> Result<Response<crate::kubelet_server::ServerBody>, Refusal> {
    let internal = |why: String| Refusal(StatusCode::INTERNAL_SERVER_ERROR, why);
    let uri: Uri = url
        .parse()
        .map_err(|e| internal(format!("the runtime's streaming URL {url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(internal(format!(
            "the runtime's streaming URL {url:?} is not plain http (TLS streaming is not supported)"
        )));
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(internal(format!(
            "the runtime's streaming URL {url:?} has no host"
        )));
    };
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), ToString::to_string);
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| internal(format!("the runtime's streaming server {authority}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| internal(format!("the runtime's streaming server {authority}: {e}")))?;
    tokio::spawn(conn.with_upgrades());
    let mut upstream = Request::builder().method(req.method().clone()).uri(path);
    for (name, value) in req.headers() {
        if name != HOST {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = upstream
        .header(HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| internal(e.to_string()))?;
    let client_side = hyper::upgrade::on(&mut req);
    let answer = sender
        .send_request(upstream)
        .await
        .map_err(|e| internal(format!("the runtime's streaming server {authority}: {e}")))?;
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = answer.into_parts();
        let body = Limited::new(body, ERROR_BODY_LIMIT)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let mut resp = Response::new(crate::kubelet_server::boxed(Full::new(body)));
        *resp.status_mut() = parts.status;
        *resp.headers_mut() = parts.headers;
        return Ok(resp);
    }
    let mut resp = Response::new(crate::kubelet_server::boxed(Empty::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in answer.headers() {
        resp.headers_mut().append(name, value.clone());
    }
    if !resp.headers().contains_key(hyper::header::CONNECTION) {
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        );
    }
    let runtime_side = hyper::upgrade::on(answer);
    let stop = stop.clone();
    upgraded.spawn(async move {
        let joined = async {
            let (client, runtime) = tokio::join!(client_side, runtime_side);
            match (client, runtime) {
                (Ok(client), Ok(runtime)) => {
                    let mut client = TokioIo::new(client);
                    let mut runtime = TokioIo::new(runtime);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
                        tracing::debug!(error = %e, "streaming connection ended");
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::info!(error = %e, "streaming upgrade failed");
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => {}
            () = joined => {}
        }
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_kubelets_streaming_targets() {
        let pod = Pod {
            namespace: "ns",
            name: "p",
            uid: None,
        };
        assert_eq!(
            Target::parse(&["exec", "ns", "p", "c"]),
            Some(Target::Exec(pod, "c"))
        );
        assert_eq!(
            Target::parse(&["attach", "ns", "p", "u1", "c"]),
            Some(Target::Attach(
                Pod {
                    uid: Some("u1"),
                    ..pod
                },
                "c"
            ))
        );
        assert_eq!(
            Target::parse(&["portForward", "ns", "p"]),
            Some(Target::PortForward(pod))
        );
        assert_eq!(Target::parse(&["exec", "ns", "p"]), None);
        assert_eq!(Target::parse(&["containerLogs", "ns", "p", "c"]), None);
    }

    #[test]
    fn stream_options_follow_the_kubelets_rules() {
        let (io, cmd) =
            stream_options("command=sh&command=-c&command=echo+hi&stdin=1&stdout=1&stderr=1&tty=1")
                .expect("valid");
        assert_eq!(cmd, ["sh", "-c", "echo hi"]);
        assert_eq!(
            io,
            StreamIo {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true
            }
        );
        assert_eq!(
            stream_options("command=ls&stdout=true").expect("valid").0,
            StreamIo {
                stdout: true,
                ..StreamIo::default()
            }
        );
        let Refusal(code, why) = stream_options("command=ls").expect_err("no stream");
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(why.contains("at least 1 of stdin, stdout, stderr"), "{why}");
    }

    #[test]
    fn forward_ports_are_checked() {
        assert_eq!(
            forward_ports("port=8080,9090&port=22"),
            Ok(vec![8080, 9090, 22])
        );
        assert_eq!(forward_ports(""), Ok(vec![]));
        assert_eq!(
            forward_ports("port=0").expect_err("zero").0,
            StatusCode::BAD_REQUEST
        );
        assert!(
            forward_ports("port=http")
                .expect_err("name")
                .1
                .contains("\"http\"")
        );
    }
}
