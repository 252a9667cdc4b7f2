//! Mutual TLS to CloudHub: client identity and CA from the config files, rustls with ring.
//!
//! Verification is WebPKI's and is never skipped. The wrapper only turns a name mismatch into an
//! error that says which host was dialed, which names the certificate carries and what to fix.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::endpoints::Endpoint;
use crate::error::{HubError, NameMismatch};

const KEY_CA: &str = "modules.edgeHub.tlsCaFile";
const KEY_CERT: &str = "modules.edgeHub.tlsCertFile";
const KEY_KEY: &str = "modules.edgeHub.tlsPrivateKeyFile";

/// The loaded TLS material; builds one client config per endpoint.
#[derive(Debug, Clone)]
pub(crate) struct ClientTls {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// `tlsServerName`; `None` = verify the dialed host.
    server_name: Option<String>,
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
}

impl ClientTls {
    /// Reads CA, certificate chain and key named in `hub` and checks they make a usable config.
    pub(crate) fn load(hub: &config::EdgeHub) -> Result<Self, HubError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_pem = read(KEY_CA, &hub.tls_ca_file)?;
        let mut roots = RootCertStore::empty();
        for cert in certificates(KEY_CA, &hub.tls_ca_file, &ca_pem)? {
            roots.add(cert).map_err(|source| HubError::BadCa {
                key: KEY_CA,
                path: hub.tls_ca_file.clone(),
                source,
            })?;
        }
        let chain = certificates(
            KEY_CERT,
            &hub.tls_cert_file,
            &read(KEY_CERT, &hub.tls_cert_file)?,
        )?;
        let key_pem = read(KEY_KEY, &hub.tls_private_key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| HubError::BadPem {
            key: KEY_KEY,
            path: hub.tls_private_key_file.clone(),
            what: "private key",
            expected: "EC PRIVATE KEY, PRIVATE KEY or RSA PRIVATE KEY",
            source: Some(e),
        })?;
        let server_name = Some(hub.tls_server_name.trim().to_owned()).filter(|n| !n.is_empty());
        if let Some(name) = &server_name {
            server_name_of(name)?;
        }
        let tls = Self {
            provider,
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
            server_name,
            cert_path: hub.tls_cert_file.clone(),
            key_path: hub.tls_private_key_file.clone(),
        };
        // Build once so that a key that does not match the certificate fails at start.
        tls.build(None)
            .map_err(|source| tls.identity_error(source))?;
        Ok(tls)
    }

    /// The first 8 bytes of the leaf certificate's SHA-256, in hex: which pair a dial used
    /// (`openssl x509 -noout -fingerprint -sha256` starts with the same bytes).
    pub(crate) fn fingerprint(&self) -> String {
        self.chain.first().map_or_else(String::new, |leaf| {
            let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
            digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect()
        })
    }

    /// The name the server certificate of `endpoint` must carry.
    pub(crate) fn server_name(&self, endpoint: &Endpoint) -> Result<ServerName<'static>, HubError> {
        server_name_of(self.server_name.as_deref().unwrap_or(endpoint.host()))
    }

    /// A client config whose verifier reports mismatches against `endpoint`.
    pub(crate) fn config_for(&self, endpoint: &Endpoint) -> Result<Arc<ClientConfig>, HubError> {
        self.build(Some(endpoint))
            .map_err(|source| self.identity_error(source))
    }

    fn identity_error(&self, source: rustls::Error) -> HubError {
        HubError::ClientIdentity {
            cert: self.cert_path.clone(),
            key: self.key_path.clone(),
            source,
        }
    }

    fn build(&self, endpoint: Option<&Endpoint>) -> Result<Arc<ClientConfig>, rustls::Error> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = Arc::new(ExplainingVerifier {
            inner,
            endpoint: endpoint.map(ToString::to_string).unwrap_or_default(),
        });
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}

fn server_name_of(name: &str) -> Result<ServerName<'static>, HubError> {
    ServerName::try_from(name.to_owned()).map_err(|_| HubError::BadServerName {
        name: name.to_owned(),
    })
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, HubError> {
    std::fs::read(path).map_err(|source| HubError::ReadFile {
        key,
        path: path.to_owned(),
        source,
    })
}

fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, HubError> {
    let bad = |source| HubError::BadPem {
        key,
        path: path.to_owned(),
        what: "certificate",
        expected: "CERTIFICATE",
        source,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(Some(e)))?;
    if certs.is_empty() {
        return Err(bad(None));
    }
    Ok(certs)
}

/// WebPKI verification; a name mismatch becomes a [`NameMismatch`] carried in
/// `rustls::Error::Other`, which the dialer (and the certificate client) unwraps.
#[derive(Debug)]
pub(crate) struct ExplainingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    /// What was dialed, as the operator configured it (endpoint or URL).
    endpoint: String,
}

impl ExplainingVerifier {
    pub(crate) fn new(inner: Arc<WebPkiServerVerifier>, endpoint: String) -> Arc<Self> {
        Arc::new(Self { inner, endpoint })
    }
}

impl ServerCertVerifier for ExplainingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Err(rustls::Error::Other(rustls::OtherError(Arc::new(
                NameMismatch {
                    endpoint: self.endpoint.clone(),
                    expected: server_name.to_str().into_owned(),
                    presented: subject_alt_names(end_entity),
                },
            )))),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The DNS and IP subject alternative names of a certificate, as `DNS:x` / `IP:y`, empty ones
/// included; `[]` when it cannot be parsed.
pub(crate) fn subject_alt_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(format!("DNS:{dns}")),
            GeneralName::IPAddress(bytes) => Some(match ip_of(bytes) {
                Some(ip) => format!("IP:{ip}"),
                None => format!("IP:<{} bytes>", bytes.len()),
            }),
            _ => None,
        })
        .collect()
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}
