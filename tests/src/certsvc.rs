//! CloudHub's certificate service (port 10002) as the spec describes it: HTTPS with the
//! simulator's server certificate, `GET /ca.crt` (raw DER) and `GET /edge.crt` (raw DER CSR in,
//! raw DER certificate out), authorised either by an HS256 bootstrap token keyed with the CA
//! private key DER or, for rotation, by the current edge certificate.
//!
//! Also: [`make_token`] for tests and [`sign_server_cert`] for server certificates with chosen
//! SANs and dates.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SigningKey,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info_span};

use crate::pki::Pki;

/// Largest CSR accepted (CloudHub's `MaxBytesReader` limit).
const MAX_CSR: usize = 1 << 20;
/// Time allowed for a client's TLS handshake and for one connection.
const CONN_TIMEOUT: Duration = Duration::from_secs(10);

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct CertServiceOptions {
    /// Lifetime of issued edge certificates (CloudHub default 365 days).
    pub edge_cert_lifetime: Duration,
    /// Server certificate and key PEM to serve instead of the [`Pki`]'s (see
    /// [`sign_server_cert`]).
    pub server_cert: Option<(String, String)>,
}

impl Default for CertServiceOptions {
    fn default() -> Self {
        Self {
            edge_cert_lifetime: Duration::from_secs(365 * 24 * 3600),
            server_cert: None,
        }
    }
}

/// How a certificate was applied for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuedVia {
    /// Bootstrap with a token.
    Token,
    /// Rotation with the current client certificate.
    ClientCert,
}

/// One issued edge certificate.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The `NodeName` header.
    pub node: String,
    /// Token or client certificate.
    pub via: IssuedVia,
    /// The DER certificate.
    pub der: Vec<u8>,
}

struct State {
    ca_der: Vec<u8>,
    hmac_key: Vec<u8>,
    issuer: Issuer<'static, CaSigner>,
    lifetime: Duration,
    issued: watch::Sender<Vec<IssuedCert>>,
    refused: watch::Sender<Vec<String>>,
}

/// A running certificate service on `127.0.0.1:<random port>`. Stops when dropped.
pub struct CertService {
    addr: SocketAddr,
    state: Arc<State>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for CertService {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl CertService {
    /// Starts the service with the CA of `pki`.
    pub async fn start(pki: &Pki, options: CertServiceOptions) -> Result<Self> {
        let ca_der =
            CertificateDer::from_pem_slice(pki.ca_crt.as_bytes()).context("ca certificate pem")?;
        let ca_key = PrivateKeyDer::from_pem_slice(pki.ca_key.as_bytes()).context("ca key pem")?;
        let PrivateKeyDer::Sec1(ca_sec1) = &ca_key else {
            bail!("the CA key is not an EC PRIVATE KEY");
        };
        let hmac_key = ca_sec1.secret_sec1_der().to_vec();
        let signer = CaSigner::from_sec1(&hmac_key)?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, signer).context("ca issuer")?;

        let (crt_pem, key_pem) = options
            .server_cert
            .clone()
            .unwrap_or_else(|| (pki.server_crt.clone(), pki.server_key.clone()));
        let chain = CertificateDer::pem_slice_iter(crt_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("server certificate pem")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("server key pem")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca_der.clone()).context("ca into root store")?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .context("client verifier")?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("tls versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .context("server certificate")?;

        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
        let addr = listener.local_addr().context("local addr")?;
        let state = Arc::new(State {
            ca_der: ca_der.to_vec(),
            hmac_key,
            issuer,
            lifetime: options.edge_cert_lifetime,
            issued: watch::channel(Vec::new()).0,
            refused: watch::channel(Vec::new()).0,
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(
            accept_loop(
                listener,
                TlsAcceptor::from(Arc::new(config)),
                state.clone(),
                cancel.clone(),
                tracker.clone(),
            )
            .instrument(info_span!("certsvc", %addr)),
        );
        Ok(Self {
            addr,
            state,
            cancel,
            tracker,
        })
    }

    /// `https://127.0.0.1:<port>`, the edge's `httpServer`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate DER, as `/ca.crt` serves it.
    pub fn ca_der(&self) -> &[u8] {
        &self.state.ca_der
    }

    /// A bootstrap token valid until `exp`.
    pub fn token(&self, exp: SystemTime) -> String {
        make_token(&self.state.ca_der, &self.state.hmac_key, exp)
    }

    /// Certificates issued so far.
    pub fn issued(&self) -> Vec<IssuedCert> {
        self.state.issued.borrow().clone()
    }

    /// Waits until at least `n` certificates have been issued; `None` after `timeout`.
    pub async fn wait_issued(&self, n: usize, timeout: Duration) -> Option<Vec<IssuedCert>> {
        let mut rx = self.state.issued.subscribe();
        let wait = rx.wait_for(|v| v.len() >= n);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// The 401/4xx/5xx messages sent so far.
    pub fn refusals(&self) -> Vec<String> {
        self.state.refused.borrow().clone()
    }

    /// Waits until at least `n` requests have been refused; `None` after `timeout`.
    pub async fn wait_refused(&self, n: usize, timeout: Duration) -> Option<Vec<String>> {
        let mut rx = self.state.refused.subscribe();
        let wait = rx.wait_for(|v| v.len() >= n);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// Stops accepting and waits for open connections to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let cancel = cancel.clone();
        tracker.spawn(
            async move {
                let serve = async {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            debug!(error = %e, "tls handshake failed");
                            return;
                        }
                    };
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        let client_cert = client_cert.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                handle(req, &state, client_cert).await,
                            )
                        }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await
                    {
                        debug!(error = %e, "connection ended with an error");
                    }
                };
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    _ = tokio::time::timeout(CONN_TIMEOUT, serve) => {}
                }
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
}

async fn handle(
    req: Request<Incoming>,
    state: &State,
    client_cert: Option<Vec<u8>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/ca.crt") => reply(StatusCode::OK, state.ca_der.clone()),
        ("GET", "/edge.crt") => match edge_cert(req, state, client_cert).await {
            Ok(der) => reply(StatusCode::OK, der),
            Err((status, message)) => {
                state.refused.send_modify(|v| v.push(message.clone()));
                reply(status, message.into_bytes())
            }
        },
        _ => reply(StatusCode::NOT_FOUND, b"not found".to_vec()),
    }
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

type Refusal = (StatusCode, String);

async fn edge_cert(
    req: Request<Incoming>,
    state: &State,
    client_cert: Option<Vec<u8>>,
) -> Result<Vec<u8>, Refusal> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let node = header("NodeName");
    let authorization = header("Authorization");
    let unauthorized = |m: String| (StatusCode::UNAUTHORIZED, m);
    let via = if let Some(der) = client_cert {
        check_client_cert(&der, &node)
            .map_err(|e| unauthorized(format!("certificate validation failure: {e}")))?;
        IssuedVia::ClientCert
    } else {
        let jwt = authorization.strip_prefix("Bearer ").unwrap_or_default();
        verify_jwt(jwt, &state.hmac_key, SystemTime::now())
            .map_err(|e| unauthorized(format!("token validation failure: {e}")))?;
        IssuedVia::Token
    };
    let csr = Limited::new(req.into_body(), MAX_CSR)
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("read csr: {e}")))?
        .to_bytes();
    let der = sign_csr(&csr, state).map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("fail to sign certificate: {e:#}"),
        )
    })?;
    state.issued.send_modify(|v| {
        v.push(IssuedCert {
            node,
            via,
            der: der.clone(),
        })
    });
    Ok(der)
}

/// The rotation path: O[0] must be `system:nodes` and CN `system:node:<NodeName>`.
fn check_client_cert(der: &[u8], node: &str) -> Result<()> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).context("parse client certificate")?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default();
    let org = cert
        .subject()
        .iter_organization()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default();
    if org != "system:nodes" || cn != format!("system:node:{node}") {
        bail!("client certificate is CN={cn:?} O={org:?}, node name header is {node:?}");
    }
    Ok(())
}

/// Verifies an HS256 JWT and its `exp`.
fn verify_jwt(jwt: &str, key: &[u8], now: SystemTime) -> Result<()> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("token contains an invalid number of segments");
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .context("signature encoding")?;
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&hmac, format!("{header}.{payload}").as_bytes(), &signature)
        .map_err(|_| anyhow::anyhow!("signature is invalid"))?;
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(payload)
            .context("payload encoding")?,
    )
    .context("payload json")?;
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .context("no exp claim")?;
    let now = now.duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
    if exp <= now {
        bail!("token is expired");
    }
    Ok(())
}

/// A bootstrap token as CloudHub makes it: `<sha256(ca der) hex>.<HS256 JWT {exp}>`, the HMAC
/// key being the CA private key DER.
pub fn make_token(ca_der: &[u8], ca_key_der: &[u8], exp: SystemTime) -> String {
    let exp = exp
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#));
    let signing_input = format!("{header}.{payload}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ca_key_der);
    let signature = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signing_input.as_bytes()));
    let hash: String = ring::digest::digest(&ring::digest::SHA256, ca_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hash}.{signing_input}.{signature}")
}

/// Signs the CSR like CloudHub: copies only CN, O and the SANs, no signature check, KeyUsage
/// DigitalSignature|KeyEncipherment, EKU ClientAuth, NotBefore now, a random serial < 2^63.
fn sign_csr(csr_der: &[u8], state: &State) -> Result<Vec<u8>> {
    use x509_parser::prelude::FromDer as _;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .context("parse csr")?;
    let info = &csr.certification_request_info;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(cn) = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
    {
        dn.push(DnType::CommonName, cn);
    }
    for org in info
        .subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
    {
        dn.push(DnType::OrganizationName, org);
    }
    params.distinguished_name = dn;
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        x509_parser::extensions::GeneralName::DNSName(d) => params
                            .subject_alt_names
                            .push(SanType::DnsName(Ia5String::try_from(*d)?)),
                        x509_parser::extensions::GeneralName::IPAddress(ip) => {
                            if let Ok(b) = <[u8; 4]>::try_from(*ip) {
                                params
                                    .subject_alt_names
                                    .push(SanType::IpAddress(IpAddr::from(b)));
                            } else if let Ok(b) = <[u8; 16]>::try_from(*ip) {
                                params
                                    .subject_alt_names
                                    .push(SanType::IpAddress(IpAddr::from(b)));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + state.lifetime).into();
    let mut serial = [0u8; 8];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut serial)
        .map_err(|_| anyhow::anyhow!("no randomness for the serial"))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from(serial.to_vec()));
    let public =
        rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw).context("csr public key")?;
    let cert = params.signed_by(&public, &state.issuer).context("sign")?;
    Ok(cert.der().to_vec())
}

/// A server certificate signed by the [`Pki`]'s CA with the given SANs (IPs or DNS names) and
/// validity; returns (certificate PEM, key PEM).
pub fn sign_server_cert(
    pki: &Pki,
    sans: &[&str],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(String, String)> {
    let ca_der = CertificateDer::from_pem_slice(pki.ca_crt.as_bytes()).context("ca pem")?;
    let ca_key = PrivateKeyDer::from_pem_slice(pki.ca_key.as_bytes()).context("ca key pem")?;
    let PrivateKeyDer::Sec1(ca_sec1) = &ca_key else {
        bail!("the CA key is not an EC PRIVATE KEY");
    };
    let issuer =
        Issuer::from_ca_cert_der(&ca_der, CaSigner::from_sec1(ca_sec1.secret_sec1_der())?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "KubeEdge");
    dn.push(DnType::OrganizationName, "KubeEdge");
    params.distinguished_name = dn;
    for san in sans {
        params.subject_alt_names.push(match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(Ia5String::try_from(*san)?),
        });
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA key as an rcgen signer (rcgen on ring reads only PKCS#8; the simulator keeps SEC1).
struct CaSigner {
    key: EcdsaKeyPair,
    public: Vec<u8>,
}

impl CaSigner {
    /// From SEC1 `ECPrivateKey` DER: SEQUENCE { 1, OCTET STRING d, [0] curve?, [1] BIT STRING Q }.
    fn from_sec1(der: &[u8]) -> Result<Self> {
        let (seq, _) = tlv(der, 0x30)?;
        let (_, rest) = tlv(seq, 0x02)?;
        let (scalar, mut rest) = tlv(rest, 0x04)?;
        if rest.first() == Some(&0xa0) {
            rest = tlv(rest, 0xa0)?.1;
        }
        let (public, _) = tlv(rest, 0xa1)?;
        let (bits, _) = tlv(public, 0x03)?;
        let point = bits.get(1..).context("empty public key")?.to_vec();
        let key = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            scalar,
            &point,
            &SystemRandom::new(),
        )
        .map_err(|e| anyhow::anyhow!("ca key rejected: {e}"))?;
        Ok(Self { key, public: point })
    }
}

impl PublicKeyData for CaSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for CaSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key
            .sign(&SystemRandom::new(), msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| rcgen::Error::RingUnspecified)
    }
}

/// One DER TLV with `tag`: (value, rest).
fn tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first().context("der: empty")?;
    if t != tag {
        bail!("der: tag {t:#x}, expected {tag:#x}");
    }
    let (&first, mut rest) = rest.split_first().context("der: no length")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        let (bytes, r) = rest.split_at_checked(n).context("der: short length")?;
        rest = r;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    rest.split_at_checked(len).context("der: short value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::PkiOptions;

    #[test]
    fn tokens_verify_and_expire() {
        let pki = Pki::generate(&PkiOptions::new("n")).unwrap();
        let key = b"key-der";
        let now = SystemTime::now();
        let token = make_token(b"ca", key, now + Duration::from_secs(60));
        let jwt = token.split_once('.').unwrap().1;
        verify_jwt(jwt, key, now).unwrap();
        assert!(verify_jwt(jwt, b"other", now).is_err());
        assert!(verify_jwt(jwt, key, now + Duration::from_secs(61)).is_err());
        assert!(verify_jwt("a.b", key, now).is_err());
        drop(pki);
    }

    #[test]
    fn server_cert_is_signed_by_the_ca() {
        let pki = Pki::generate(&PkiOptions::new("n")).unwrap();
        let now = SystemTime::now();
        let (crt, key) = sign_server_cert(
            &pki,
            &["127.0.0.2", "cloud.test"],
            now,
            now + Duration::from_secs(60),
        )
        .unwrap();
        assert!(crt.contains("BEGIN CERTIFICATE"));
        assert!(key.contains("PRIVATE KEY"));
    }
}
