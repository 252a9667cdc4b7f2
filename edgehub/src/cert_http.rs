//! The two requests to CloudHub's certificate service (`httpServer`, port 10002): `GET /ca.crt`
//! and `GET /edge.crt` with a DER CSR body, over HTTP/1.1 on TLS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::cert_error::CertError;
use crate::error::NameMismatch;
use crate::tls::ExplainingVerifier;

/// Largest answer read from the service (KubeEdge's `MaxRespBodyLength`).
pub(crate) const MAX_BODY: usize = 1 << 20;

/// The certificate service, parsed from `httpServer`.
#[derive(Debug, Clone)]
pub(crate) struct CertServer {
    /// `https://host:port` plus any path prefix, for messages and URLs.
    base: String,
    /// Host to connect to (no brackets).
    host: String,
    port: u16,
    /// `Host:` header value.
    authority: String,
    /// Path prefix without a trailing slash.
    prefix: String,
    /// Name the server certificate must carry.
    server_name: ServerName<'static>,
}

impl CertServer {
    /// Parses `https://host[:port][/prefix]`. `tls_server_name`, when not empty, is the name to
    /// verify the server certificate against instead of the host.
    pub(crate) fn parse(url: &str, tls_server_name: &str) -> Result<Self, CertError> {
        let bad = |why: &str| CertError::BadUrl {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let uri: hyper::Uri = url.trim().parse().map_err(|_| bad("it is not a URL"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(_) => return Err(bad("the scheme must be https")),
            None => return Err(bad("it has no https:// scheme")),
        }
        let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        let port = uri.port_u16().unwrap_or(443);
        let verify = if tls_server_name.trim().is_empty() {
            host.clone()
        } else {
            tls_server_name.trim().to_owned()
        };
        let server_name = ServerName::try_from(verify).map_err(|_| {
            bad("the host (or tlsServerName) is not a valid DNS name or IP address")
        })?;
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            base: format!("https://{authority}{prefix}"),
            host,
            port,
            authority: authority.as_str().to_owned(),
            prefix,
            server_name,
        })
    }

    /// The URL of `path` on this server.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// How the `/edge.crt` request proves who it is.
pub(crate) enum Credential<'a> {
    /// First certificate: `Authorization: Bearer <jwt>`.
    Token(&'a str),
    /// Rotation: the current pair as the TLS client certificate, no Authorization header.
    ClientCert {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    },
}

/// `GET /ca.crt` without verifying the server (its integrity comes from the token's hash);
/// returns the DER body.
pub(crate) async fn fetch_ca(server: &CertServer, timeout: Duration) -> Result<Vec<u8>, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| CertError::Tls {
            url: server.url("/ca.crt"),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(HashPinnedLater { provider }))
        .with_no_client_auth();
    let (status, body) =
        exchange(server, config, "/ca.crt", Vec::new(), Bytes::new(), timeout).await?;
    expect_ok(server, "/ca.crt", status, &body, "bootstrap token")?;
    Ok(body.to_vec())
}

/// `GET /edge.crt` with the DER CSR as body, verifying the server against `ca`; returns the DER
/// certificate.
pub(crate) async fn fetch_edge_cert(
    server: &CertServer,
    ca: &[CertificateDer<'static>],
    node_name: &str,
    credential: Credential<'_>,
    csr_der: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, CertError> {
    let url = server.url("/edge.crt");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| CertError::BadMaterial {
                what: "CA certificate",
                origin: url.clone(),
                why: e.to_string(),
            })?;
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| CertError::BadMaterial {
            what: "CA certificate",
            origin: url.clone(),
            why: e.to_string(),
        })?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| CertError::Tls {
            url: url.clone(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(ExplainingVerifier::new(inner, url.clone()));
    let mut headers = vec![("NodeName", node_name.to_owned())];
    let (config, what) = match credential {
        Credential::Token(jwt) => {
            headers.push((AUTHORIZATION.as_str(), format!("Bearer {jwt}")));
            (builder.with_no_client_auth(), "bootstrap token")
        }
        Credential::ClientCert { chain, key } => (
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| CertError::Tls {
                    url: url.clone(),
                    source,
                })?,
            "current edge certificate",
        ),
    };
    let (status, body) = exchange(
        server,
        config,
        "/edge.crt",
        headers,
        Bytes::from(csr_der),
        timeout,
    )
    .await?;
    expect_ok(server, "/edge.crt", status, &body, what)?;
    Ok(body.to_vec())
}

fn expect_ok(
    server: &CertServer,
    path: &str,
    status: u16,
    body: &[u8],
    credential: &'static str,
) -> Result<(), CertError> {
    if status == 200 {
        return Ok(());
    }
    let message: String = String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(512)
        .collect();
    if status == 401 {
        let advice = if credential == "bootstrap token" {
            "the token is expired or not this cloud's: create a new one with `keadm gettoken` on the cloud"
        } else {
            "the cloud no longer accepts this certificate: put a new token from `keadm gettoken` in the config and remove the certificate files to bootstrap again"
        };
        return Err(CertError::Unauthorized {
            url: server.url(path),
            credential,
            message,
            advice,
        });
    }
    Err(CertError::HttpStatus {
        url: server.url(path),
        status,
        message,
    })
}

/// One request on a fresh connection; returns the status and the body (at most [`MAX_BODY`]).
async fn exchange(
    server: &CertServer,
    config: ClientConfig,
    path: &str,
    headers: Vec<(&str, String)>,
    body: Bytes,
    timeout: Duration,
) -> Result<(u16, Bytes), CertError> {
    let url = server.url(path);
    let work = async {
        let tcp = TcpStream::connect((server.host.as_str(), server.port))
            .await
            .map_err(|source| CertError::Connect {
                url: url.clone(),
                source,
            })?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(server.server_name.clone(), tcp)
            .await
            .map_err(|e| tls_error(&url, &server.server_name, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| CertError::Http {
                url: url.clone(),
                source,
            })?;
        let mut request = Request::get(format!("{}{path}", server.prefix))
            .header(HOST, server.authority.as_str())
            .header(CONTENT_TYPE, "application/octet-stream");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| CertError::BadUrl {
                url: url.clone(),
                why: format!("the request cannot be built ({e})"),
            })?;
        let exchange = async {
            let response =
                sender
                    .send_request(request)
                    .await
                    .map_err(|source| CertError::Http {
                        url: url.clone(),
                        source,
                    })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(source) => CertError::Http {
                        url: url.clone(),
                        source: *source,
                    },
                    Err(_) => CertError::BodyTooLarge {
                        url: url.clone(),
                        limit: MAX_BODY,
                    },
                })?
                .to_bytes();
            Ok((status, body))
        };
        // The connection future ends on its own only when something broke.
        let connection = async {
            match conn.await {
                Err(source) => source,
                Ok(()) => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            result = exchange => result,
            source = connection => Err(CertError::Http { url: url.clone(), source }),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| CertError::Timeout {
            url: url.clone(),
            what: "the request",
            after: timeout,
        })?
}

/// Turns a handshake failure into the error an operator can act on.
fn tls_error(url: &str, name: &ServerName<'static>, e: std::io::Error) -> CertError {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return CertError::Connect {
            url: url.to_owned(),
            source: e,
        };
    };
    match tls {
        rustls::Error::Other(OtherError(other)) => match other.downcast_ref::<NameMismatch>() {
            Some(mismatch) => CertError::ServerNameMismatch(mismatch.clone()),
            None => CertError::Tls {
                url: url.to_owned(),
                source: tls.clone(),
            },
        },
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        }) => CertError::ServerNameMismatch(NameMismatch {
            endpoint: url.to_owned(),
            expected: name.to_str().into_owned(),
            presented: presented.clone(),
        }),
        rustls::Error::InvalidCertificate(
            cert @ (CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. }),
        ) => CertError::ServerCertExpired {
            url: url.to_owned(),
            detail: cert.to_string(),
        },
        other => CertError::Tls {
            url: url.to_owned(),
            source: other.clone(),
        },
    }
}

/// Accepts any server certificate for `GET /ca.crt` only: what it returns is trusted only after
/// its SHA-256 matches the token. Handshake signatures are still checked.
#[derive(Debug)]
struct HashPinnedLater {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for HashPinnedLater {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_https_urls() {
        let s = CertServer::parse("https://10.0.0.1:10002", "").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("10.0.0.1", 10002));
        assert_eq!(s.url("/ca.crt"), "https://10.0.0.1:10002/ca.crt");
        let s = CertServer::parse("https://[::1]:10002/", "cloudcore.example").unwrap();
        assert_eq!(s.host, "::1");
        assert_eq!(s.server_name.to_str(), "cloudcore.example");
        let s = CertServer::parse("https://cloud.example/base/", "").unwrap();
        assert_eq!((s.port, s.prefix.as_str()), (443, "/base"));
        assert_eq!(s.url("/edge.crt"), "https://cloud.example/base/edge.crt");
    }

    #[test]
    fn refuses_unusable_urls() {
        for url in [
            "",
            "http://1.2.3.4:10002",
            "1.2.3.4:10002",
            "https://",
            "not a url",
        ] {
            let err = CertServer::parse(url, "").unwrap_err();
            assert!(matches!(err, CertError::BadUrl { .. }), "{url}: {err}");
        }
    }
}
