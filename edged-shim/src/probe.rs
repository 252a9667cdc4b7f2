//! Container probes as the kubelet runs them (`pkg/kubelet/prober`): liveness, readiness and
//! startup, each by `exec` (CRI ExecSync), `httpGet` (HTTP; 2xx and 3xx succeed), `tcpSocket`
//! (a connect) or `grpc` (`grpc.health.v1.Health/Check` answering SERVING). One task per probe
//! and container, off the pod worker: a slow probe never holds up another pod. The task waits
//! `initialDelaySeconds` after the container started, probes every `periodSeconds` within
//! `timeoutSeconds`, and flips its result after `successThreshold` successes or
//! `failureThreshold` failures in a row. Liveness and readiness wait for the startup probe; a
//! failed liveness or startup result holds until the container is replaced.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info};

use crate::runtime::Runtime;

/// A probe of a container spec.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Probe {
    pub(crate) exec: Option<ExecAction>,
    pub(crate) http_get: Option<HttpGetAction>,
    pub(crate) tcp_socket: Option<TcpSocketAction>,
    pub(crate) grpc: Option<GrpcAction>,
    pub(crate) initial_delay_seconds: u32,
    pub(crate) timeout_seconds: u32,
    pub(crate) period_seconds: u32,
    pub(crate) success_threshold: u32,
    pub(crate) failure_threshold: u32,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct ExecAction {
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct HttpGetAction {
    pub(crate) path: String,
    /// A number or the name of one of the container's ports.
    pub(crate) port: Value,
    pub(crate) host: String,
    pub(crate) scheme: String,
    pub(crate) http_headers: Vec<HttpHeader>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct HttpHeader {
    pub(crate) name: String,
    pub(crate) value: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct TcpSocketAction {
    pub(crate) port: Value,
    pub(crate) host: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct GrpcAction {
    pub(crate) port: u16,
    pub(crate) service: Option<String>,
}

/// `ports[]` of a container spec: named ports for probes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ContainerPort {
    pub(crate) name: String,
    pub(crate) container_port: u16,
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Liveness => "liveness",
            Kind::Readiness => "readiness",
            Kind::Startup => "startup",
        }
    }

    /// The result before the first verdict: alive, not ready; a startup probe has none (not
    /// started, and not failed either).
    fn initial(self) -> Option<bool> {
        match self {
            Kind::Liveness => Some(true),
            Kind::Readiness => Some(false),
            Kind::Startup => None,
        }
    }
}

/// The settings with the API's defaults for zeros (timeout 1 s, period 10 s, thresholds 1
/// and 3); liveness and startup need one success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    initial_delay: Duration,
    timeout: Duration,
    period: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Timing {
    fn of(p: &Probe, kind: Kind) -> Self {
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        Self {
            initial_delay: Duration::from_secs(p.initial_delay_seconds.into()),
            timeout: Duration::from_secs(or(p.timeout_seconds, 1).into()),
            period: Duration::from_secs(or(p.period_seconds, 10).into()),
            success_threshold: if kind == Kind::Readiness {
                or(p.success_threshold, 1)
            } else {
                1
            },
            failure_threshold: or(p.failure_threshold, 3),
        }
    }
}

/// What one probe found; the failure says why (for the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure(String),
}

/// Where a probe goes: the container (exec) and the pod's address (network probes).
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) pod: String,
    pub(crate) container: String,
    pub(crate) container_id: String,
    /// `None` while edged does not know the pod's address: network probes then fail saying so.
    pub(crate) pod_ip: Option<IpAddr>,
    pub(crate) ports: Vec<ContainerPort>,
    pub(crate) runtime: Arc<dyn Runtime>,
}

/// Probe verdicts by container ID, shared by the probe tasks and the pod worker.
#[derive(Debug, Clone, Default)]
pub(crate) struct Results(Arc<Mutex<HashMap<(String, Kind), bool>>>);

impl Results {
    /// The current verdict; `None` when the container has no such probe.
    pub(crate) fn get(&self, container_id: &str, kind: Kind) -> Option<bool> {
        let map = self.0.lock().ok()?;
        map.get(&(container_id.to_owned(), kind)).copied()
    }

    fn set(&self, container_id: &str, kind: Kind, ok: bool) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        map.insert((container_id.to_owned(), kind), ok) != Some(ok)
    }

    /// Forgets a container's verdicts.
    pub(crate) fn remove(&self, container_id: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|(id, _), _| id != container_id);
        }
    }
}

/// Starts the container's probes; they stop when the guard is dropped. `wake` gets the pod's
/// key whenever a verdict changes.
pub(crate) fn start(
    target: &Target,
    probes: [(Kind, Option<&Probe>); 3],
    results: &Results,
    wake: &mpsc::Sender<String>,
) -> DropGuard {
    let cancel = CancellationToken::new();
    let has_startup = probes
        .iter()
        .any(|(k, p)| *k == Kind::Startup && p.is_some());
    for (kind, probe) in probes {
        let Some(probe) = probe else { continue };
        if let Some(initial) = kind.initial() {
            results.set(&target.container_id, kind, initial);
        }
        let task = Task {
            kind,
            probe: probe.clone(),
            timing: Timing::of(probe, kind),
            target: target.clone(),
            results: results.clone(),
            wake: wake.clone(),
            wait_for_startup: has_startup && kind != Kind::Startup,
        };
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = task.run() => {}
            }
        });
    }
    cancel.drop_guard()
}

struct Task {
    kind: Kind,
    probe: Probe,
    timing: Timing,
    target: Target,
    results: Results,
    wake: mpsc::Sender<String>,
    wait_for_startup: bool,
}

impl Task {
    async fn run(self) {
        let t = &self.timing;
        tokio::time::sleep(t.initial_delay).await;
        let mut tick = tokio::time::interval(t.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut successes, mut failures) = (0u32, 0u32);
        loop {
            tick.tick().await;
            let id = &self.target.container_id;
            if self.wait_for_startup && self.results.get(id, Kind::Startup) != Some(true) {
                continue;
            }
            let outcome =
                match tokio::time::timeout(t.timeout, check(&self.probe, &self.target, t.timeout))
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::Failure(format!("timed out after {:?}", t.timeout)),
                };
            let verdict = match &outcome {
                Outcome::Success => {
                    failures = 0;
                    successes = successes.saturating_add(1);
                    (successes >= t.success_threshold).then_some(true)
                }
                Outcome::Failure(why) => {
                    successes = 0;
                    failures = failures.saturating_add(1);
                    debug!(pod = %self.target.pod, container = %self.target.container, probe = self.kind.name(), %why, failures, "probe failed");
                    (failures >= t.failure_threshold).then_some(false)
                }
            };
            let Some(ok) = verdict else { continue };
            if self.results.set(id, self.kind, ok) {
                let why = match &outcome {
                    Outcome::Failure(why) => why.as_str(),
                    Outcome::Success => "",
                };
                info!(pod = %self.target.pod, container = %self.target.container, probe = self.kind.name(), ok, %why, "probe result changed");
                // A full mailbox means a sync is coming anyway.
                let _ = self.wake.try_send(self.target.pod.clone());
            }
            // A started container is not probed for startup again; a failed liveness or
            // startup verdict holds until the container is replaced.
            if self.kind == Kind::Startup && ok || self.kind != Kind::Readiness && !ok {
                return;
            }
        }
    }
}

/// Runs one probe once.
pub(crate) async fn check(probe: &Probe, target: &Target, timeout: Duration) -> Outcome {
    if let Some(exec) = &probe.exec {
        return exec_check(exec, target, timeout).await;
    }
    if let Some(http) = &probe.http_get {
        return match (host(&http.host, target), port(&http.port, &target.ports)) {
            (Ok(host), Ok(port)) => http_check(http, host, port).await,
            (Err(why), _) | (_, Err(why)) => Outcome::Failure(why),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        return match (host(&tcp.host, target), port(&tcp.port, &target.ports)) {
            (Ok(host), Ok(port)) => tcp_check(host, port).await,
            (Err(why), _) | (_, Err(why)) => Outcome::Failure(why),
        };
    }
    if let Some(grpc) = &probe.grpc {
        return match target.pod_ip {
            Some(ip) => grpc_check(grpc, ip, timeout).await,
            None => Outcome::Failure(NO_POD_IP.to_owned()),
        };
    }
    Outcome::Failure("the probe names no exec, httpGet, tcpSocket or grpc action".to_owned())
}

const NO_POD_IP: &str = "the pod's IP is not known to edged (only host-network pods have one here); set the probe's host";

fn host(host: &str, target: &Target) -> Result<String, String> {
    match (host, target.pod_ip) {
        ("", Some(ip)) => Ok(ip.to_string()),
        ("", None) => Err(NO_POD_IP.to_owned()),
        (h, _) => Ok(h.to_owned()),
    }
}

/// A port number, or the `containerPort` of the container port with that name.
fn port(port: &Value, ports: &[ContainerPort]) -> Result<u16, String> {
    match port {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("port {n} is not a port number")),
        Value::String(s) => match s.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => ports
                .iter()
                .find(|p| p.name == *s)
                .map(|p| p.container_port)
                .ok_or_else(|| format!("the container has no port named {s:?}")),
        },
        other => Err(format!("port {other} is not a number or a port name")),
    }
}

async fn exec_check(exec: &ExecAction, target: &Target, timeout: Duration) -> Outcome {
    match target
        .runtime
        .exec_sync(&target.container_id, &exec.command, timeout)
        .await
    {
        Ok((0, _)) => Outcome::Success,
        Ok((code, output)) => Outcome::Failure(format!(
            "command {:?} exited with {code}: {}",
            exec.command,
            output.trim()
        )),
        Err(error) => Outcome::Failure(error.to_string()),
    }
}

async fn tcp_check(host: String, port: u16) -> Outcome {
    match tokio::net::TcpStream::connect((host.as_str(), port)).await {
        Ok(_) => Outcome::Success,
        Err(e) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
    }
}

async fn http_check(http: &HttpGetAction, host: String, port: u16) -> Outcome {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    let https = if http.scheme.is_empty() || http.scheme.eq_ignore_ascii_case("http") {
        false
    } else if http.scheme.eq_ignore_ascii_case("https") {
        true
    } else {
        return Outcome::Failure(format!(
            "scheme {} is not supported (HTTP or HTTPS)",
            http.scheme
        ));
    };
    let scheme = if https { "https" } else { "http" };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let path = if http.path.starts_with('/') {
        http.path.clone()
    } else {
        format!("/{}", http.path)
    };
    let url = format!("{scheme}://{authority}{path}");
    let mut req = hyper::Request::get(path.as_str())
        .header(hyper::header::USER_AGENT, "kube-probe/1.30")
        .header(hyper::header::ACCEPT, "*/*");
    if !http
        .http_headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("host"))
    {
        req = req.header(hyper::header::HOST, authority.as_str());
    }
    for h in &http.http_headers {
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    let req = match req.body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return Outcome::Failure(format!("bad probe request: {e}")),
    };
    let stream = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failure(format!("Get \"{url}\": {e}")),
    };
    let answer = if https {
        // As the kubelet: the server's certificate is not verified (a pod's is rarely one the
        // node could check), only the TLS handshake itself.
        let name = match ServerName::try_from(host.clone()) {
            Ok(n) => n,
            Err(e) => return Outcome::Failure(format!("Get \"{url}\": {e}")),
        };
        let config = match insecure_tls() {
            Ok(c) => c,
            Err(e) => return Outcome::Failure(format!("TLS set-up: {e}")),
        };
        match TlsConnector::from(config).connect(name, stream).await {
            Ok(tls) => send(tls, req).await,
            Err(e) => Err(format!("TLS handshake: {e}")),
        }
    } else {
        send(stream, req).await
    };
    match answer {
        Ok(code) if (200..400).contains(&code) => Outcome::Success,
        Ok(code) => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
        Err(e) => Outcome::Failure(format!("Get \"{url}\": {e}")),
    }
}

/// Sends one HTTP/1.1 request over `io`; the response's status code.
async fn send<IO>(
    io: IO,
    req: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
) -> Result<u16, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .map(|resp| resp.status().as_u16())
        .map_err(|e| e.to_string())
}

/// The client side of HTTPS probes: any server certificate, a verified handshake.
fn insecure_tls() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyServerCertificate(provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

/// Accepts any server certificate (the kubelet's `InsecureSkipVerify`) but checks that the
/// server holds its key.
#[derive(Debug)]
struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; status 1 is SERVING.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

async fn grpc_check(grpc: &GrpcAction, ip: IpAddr, timeout: Duration) -> Outcome {
    let addr = std::net::SocketAddr::new(ip, grpc.port);
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::Failure(e.to_string()),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return Outcome::Failure(format!("failed to connect service {addr:?}: {e}")),
    };
    let mut client = tonic::client::Grpc::new(channel);
    if let Err(e) = client.ready().await {
        return Outcome::Failure(e.to_string());
    }
    let request = tonic::Request::new(HealthCheckRequest {
        service: grpc.service.clone().unwrap_or_default(),
    });
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let answer: Result<tonic::Response<HealthCheckResponse>, tonic::Status> = client
        .unary(request, path, tonic_prost::ProstCodec::default())
        .await;
    match answer {
        Ok(r) if r.get_ref().status == 1 => Outcome::Success,
        Ok(r) => Outcome::Failure(format!(
            "service unhealthy (responded with status {})",
            r.get_ref().status
        )),
        Err(s) => Outcome::Failure(format!("health rpc failed: {s}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::fake_runtime::FakeRuntime;

    fn target(pod_ip: Option<IpAddr>, runtime: FakeRuntime) -> Target {
        Target {
            pod: "ns/p".to_owned(),
            container: "app".to_owned(),
            container_id: "c1".to_owned(),
            pod_ip,
            ports: vec![ContainerPort {
                name: "http".to_owned(),
                container_port: 8080,
            }],
            runtime: Arc::new(runtime),
        }
    }

    fn probe(v: Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    /// An HTTP server answering each request with the status its path names (`/200`), and
    /// recording the request heads.
    /// Reads one request and answers with the status code its path names (`/503`); the
    /// request head.
    async fn answer_with_path_code(
        s: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    ) -> String {
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.trim_start_matches('/').parse::<u16>().ok())
            .unwrap_or(404);
        let reply = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n");
        let _ = s.write_all(reply.as_bytes()).await;
        head
    }

    async fn http_server() -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let head = answer_with_path_code(&mut s).await;
                log.lock().unwrap().push(head);
            }
        });
        (port, seen)
    }

    #[test]
    fn ports_by_number_or_name() {
        let ports = target(None, FakeRuntime::default()).ports;
        assert_eq!(port(&json!(80), &ports), Ok(80));
        assert_eq!(port(&json!("8443"), &ports), Ok(8443));
        assert_eq!(port(&json!("http"), &ports), Ok(8080));
        assert!(
            port(&json!("metrics"), &ports)
                .unwrap_err()
                .contains("no port named")
        );
        assert!(port(&json!(70000), &ports).is_err());
        assert!(port(&json!(null), &ports).is_err());
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_and_3xx() {
        let (port, seen) = http_server().await;
        let t = target(Some("127.0.0.1".parse().unwrap()), FakeRuntime::default());
        let get = |path: &str| {
            probe(json!({"httpGet": {"path": path, "port": port,
                "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}}))
        };
        let timeout = Duration::from_secs(5);
        assert_eq!(check(&get("/200"), &t, timeout).await, Outcome::Success);
        assert_eq!(check(&get("/302"), &t, timeout).await, Outcome::Success);
        let failed = check(&get("/500"), &t, timeout).await;
        assert_eq!(
            failed,
            Outcome::Failure("HTTP probe failed with statuscode: 500".to_owned())
        );
        let heads = seen.lock().unwrap().clone();
        assert!(heads[0].starts_with("GET /200 HTTP/1.1\r\n"), "{heads:?}");
        let lower = heads[0].to_ascii_lowercase();
        assert!(lower.contains("user-agent: kube-probe/"), "{lower}");
        assert!(lower.contains("x-probe: yes"), "{lower}");
        assert!(
            lower.contains(&format!("host: 127.0.0.1:{port}")),
            "{lower}"
        );
        // A plain HTTP server does not speak TLS: an HTTPS probe of it fails.
        let https = probe(json!({"httpGet": {"port": port, "scheme": "HTTPS"}}));
        assert!(
            matches!(check(&https, &t, timeout).await, Outcome::Failure(w) if w.contains("TLS")),
        );
        let other = probe(json!({"httpGet": {"port": port, "scheme": "FTP"}}));
        assert!(
            matches!(check(&other, &t, timeout).await, Outcome::Failure(w) if w.contains("FTP"))
        );
    }

    /// An HTTPS server with a self-signed certificate no one could verify, answering with the
    /// code in the path.
    async fn https_server() -> u16 {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["pod.invalid".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let Ok(mut s) = acceptor.accept(s).await else {
                    continue;
                };
                answer_with_path_code(&mut s).await;
                let _ = s.shutdown().await;
            }
        });
        port
    }

    /// A gRPC health server over HTTP/2 answering every `Check` with `status`.
    async fn grpc_health_server(status: i32) -> u16 {
        use http_body_util::{BodyExt, Full};
        use hyper::body::Bytes;
        use prost::Message as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let path = req.uri().path().to_owned();
                    async move {
                        assert_eq!(path, "/grpc.health.v1.Health/Check");
                        let msg = HealthCheckResponse { status }.encode_to_vec();
                        let mut frame = vec![0u8];
                        frame.extend(u32::try_from(msg.len()).unwrap().to_be_bytes());
                        frame.extend(msg);
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let body = Full::new(Bytes::from(frame))
                            .with_trailers(async move { Some(Ok(trailers)) });
                        hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn grpc_probes_pass_when_the_service_is_serving() {
        let t = target(Some("127.0.0.1".parse().unwrap()), FakeRuntime::default());
        let timeout = Duration::from_secs(5);
        let serving = grpc_health_server(1).await;
        let grpc = |port: u16| probe(json!({"grpc": {"port": port}}));
        assert_eq!(check(&grpc(serving), &t, timeout).await, Outcome::Success);
        let not_serving = grpc_health_server(2).await;
        assert_eq!(
            check(&grpc(not_serving), &t, timeout).await,
            Outcome::Failure("service unhealthy (responded with status 2)".to_owned())
        );
    }

    #[tokio::test]
    async fn https_probes_skip_certificate_checks_as_the_kubelet_does() {
        let port = https_server().await;
        let t = target(Some("127.0.0.1".parse().unwrap()), FakeRuntime::default());
        let get =
            |path: &str| probe(json!({"httpGet": {"path": path, "port": port, "scheme": "HTTPS"}}));
        let timeout = Duration::from_secs(5);
        assert_eq!(check(&get("/200"), &t, timeout).await, Outcome::Success);
        assert_eq!(
            check(&get("/503"), &t, timeout).await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".to_owned())
        );
        // Plain HTTP to the TLS port gets no HTTP answer.
        let plain = probe(json!({"httpGet": {"path": "/200", "port": port}}));
        assert!(matches!(
            check(&plain, &t, timeout).await,
            Outcome::Failure(_)
        ));
    }

    #[tokio::test]
    async fn tcp_and_grpc_probes_fail_on_a_closed_port_and_tcp_passes_on_an_open_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = target(Some("127.0.0.1".parse().unwrap()), FakeRuntime::default());
        let timeout = Duration::from_secs(5);
        let tcp = |p: u16| probe(json!({"tcpSocket": {"port": p}}));
        assert_eq!(check(&tcp(open), &t, timeout).await, Outcome::Success);
        assert!(
            matches!(check(&tcp(closed), &t, timeout).await, Outcome::Failure(w) if w.contains("dial tcp"))
        );
        let grpc = probe(json!({"grpc": {"port": closed}}));
        assert!(matches!(
            check(&grpc, &t, timeout).await,
            Outcome::Failure(_)
        ));
        // Without a known pod IP, network probes say so; one with a host still works.
        let no_ip = target(None, FakeRuntime::default());
        assert!(
            matches!(check(&tcp(open), &no_ip, timeout).await, Outcome::Failure(w) if w.contains("pod's IP"))
        );
        let with_host = probe(json!({"tcpSocket": {"port": open, "host": "127.0.0.1"}}));
        assert_eq!(check(&with_host, &no_ip, timeout).await, Outcome::Success);
        assert!(matches!(
            check(&probe(json!({})), &t, timeout).await,
            Outcome::Failure(_)
        ));
        drop(listener);
    }

    #[tokio::test]
    async fn exec_probes_use_the_exit_code() {
        let rt = FakeRuntime::with_images(&["img"]);
        let (sandbox, container) = crate::testutil::running_pair("p", "app", "img", 0);
        rt.preexisting(sandbox, container);
        let id = rt.state().containers.keys().next().unwrap().clone();
        let mut t = target(None, rt.clone());
        t.container_id = id;
        let exec = probe(json!({"exec": {"command": ["cat", "/tmp/healthy"]}}));
        assert_eq!(
            check(&exec, &t, Duration::from_secs(1)).await,
            Outcome::Success
        );
        rt.state().exec_codes.insert("app".to_owned(), 1);
        let failed = check(&exec, &t, Duration::from_secs(1)).await;
        assert!(matches!(failed, Outcome::Failure(w) if w.contains("exited with 1")));
        t.container_id = "gone".to_owned();
        assert!(matches!(
            check(&exec, &t, Duration::from_secs(1)).await,
            Outcome::Failure(_)
        ));
    }

    #[test]
    fn timings_default_as_the_api_does() {
        let t = Timing::of(&Probe::default(), Kind::Readiness);
        assert_eq!(
            (
                t.timeout,
                t.period,
                t.success_threshold,
                t.failure_threshold
            ),
            (Duration::from_secs(1), Duration::from_secs(10), 1, 3)
        );
        let p = probe(json!({"successThreshold": 3, "initialDelaySeconds": 5}));
        assert_eq!(Timing::of(&p, Kind::Readiness).success_threshold, 3);
        assert_eq!(Timing::of(&p, Kind::Liveness).success_threshold, 1);
        assert_eq!(
            Timing::of(&p, Kind::Startup).initial_delay,
            Duration::from_secs(5)
        );
    }
}
