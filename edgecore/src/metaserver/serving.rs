//! MetaServer's serving certificate when `requireAuthorization` is on, obtained as KubeEdge's
//! is: a P-256 key and a `kubernetes.io/kubelet-serving` CertificateSigningRequest (CN
//! `system:node:<node>`, O `system:nodes`, the IP addresses MetaServer serves on), created
//! through the cloud (edgecontroller creates it in kube-apiserver), then read back through the
//! cloud until it is approved and signed. The pair is kept in
//! `<certificatesDir>/metaserver-server-current.pem` (certificate then key, as client-go's file
//! store keeps it) and used again on the next start while it is valid for 20 % of its life.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use edgehub::{Message, Route, op};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::metamanager::MetaHandle;

/// How often an unsigned request is read again.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// The file client-go's store (and so KubeEdge's MetaServer) keeps the pair in.
pub(crate) const PAIR_FILE: &str = "metaserver-server-current.pem";

/// Why there is no serving certificate.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServingError {
    #[error("generating the MetaServer key or request failed: {0}")]
    Generate(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the serving certificate cannot be used: {0}")]
    Unusable(String),
    #[error("shut down while waiting for the serving certificate")]
    Cancelled,
}

/// A usable pair on disk, or a new one through the cloud; returns the TLS config to serve with.
pub(crate) async fn serving_config(
    meta: &MetaHandle,
    node: &str,
    ips: &[IpAddr],
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<Arc<ServerConfig>, ServingError> {
    let path = dir.join(PAIR_FILE);
    if let Ok(pem) = std::fs::read(&path) {
        match config_from_pem(&pem, ips) {
            Ok(config) => {
                tracing::info!(path = %path.display(), "metaserver serving certificate loaded");
                return Ok(config);
            }
            Err(why) => {
                tracing::info!(path = %path.display(), %why, "metaserver serving certificate not usable; requesting a new one");
            }
        }
    }
    let (pem, config) = request(meta, node, ips, cancel).await?;
    write_pair(dir, &pem)?;
    tracing::info!(path = %path.display(), "metaserver serving certificate issued and saved");
    Ok(config)
}

/// The TLS config of a stored pair, if it covers `ips` and is valid for 20 % of its life.
fn config_from_pem(pem: &[u8], ips: &[IpAddr]) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    let leaf = certs.first().ok_or("no certificate")?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("certificate: {e}"))?;
    let validity = parsed.validity();
    let (from, to) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let now = edgehub::now_millis() / 1000;
    if now >= to - (to - from) / 5 {
        return Err("expires soon".to_owned());
    }
    let covered: Vec<IpAddr> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::IPAddress(b) => ip_of(b),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(missing) = ips.iter().find(|ip| !covered.contains(ip)) {
        return Err(format!("does not name {missing}"));
    }
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("key: {e}"))?;
    tls_config(certs, key)
}

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

fn tls_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Sends the request and waits until kube-apiserver has a certificate for it.
async fn request(
    meta: &MetaHandle,
    node: &str,
    ips: &[IpAddr],
    cancel: &CancellationToken,
) -> Result<(String, Arc<ServerConfig>), ServingError> {
    let keygen = |e: rcgen::Error| ServingError::Generate(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(keygen)?;
    let mut params = rcgen::CertificateParams::default();
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    subject.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name = subject;
    params.subject_alt_names = ips
        .iter()
        .map(|ip| rcgen::SanType::IpAddress(*ip))
        .collect();
    let csr = params.serialize_request(&key).map_err(keygen)?;
    let csr_pem = csr.pem().map_err(keygen)?;
    let mut name = String::new();
    loop {
        if name.is_empty() {
            // Named here: edgecontroller takes the name from the message's resource and drops a
            // request without one, so `generateName` (client-go's way) cannot be used.
            let wanted = format!(
                "csr-metaserver-{node}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            let msg = Message::new(
                Route::new(
                    "edged",
                    "meta",
                    op::INSERT,
                    &format!("default/certificatesigningrequest/{wanted}"),
                ),
                csr_object(&csr_pem, &wanted),
            );
            match meta.request(msg).await {
                Ok(answer) => {
                    name = answer
                        .first()
                        .and_then(|o| o.pointer("/metadata/name"))
                        .and_then(Value::as_str)
                        .unwrap_or(&wanted)
                        .to_owned();
                    tracing::info!(csr = %name, "metaserver serving certificate requested; waiting for it to be approved and signed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "requesting the metaserver serving certificate failed; retrying");
                }
            }
        } else {
            let msg = Message::new(
                Route::new(
                    "edged",
                    "meta",
                    op::QUERY,
                    &format!("default/certificatesigningrequest/{name}"),
                ),
                Value::Null,
            );
            match meta.request(msg).await {
                Ok(answer) => {
                    if let Some(cert) = answer.iter().find_map(issued) {
                        let mut pem = cert;
                        pem.push_str(&key.serialize_pem());
                        let certs: Vec<CertificateDer<'static>> =
                            CertificateDer::pem_slice_iter(pem.as_bytes())
                                .collect::<Result<_, _>>()
                                .map_err(|e| ServingError::Unusable(e.to_string()))?;
                        let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
                            .map_err(|e| ServingError::Unusable(e.to_string()))?;
                        let config = tls_config(certs, key).map_err(ServingError::Unusable)?;
                        return Ok((pem, config));
                    }
                    if let Some(why) = answer.iter().find_map(denied) {
                        tracing::warn!(csr = %name, why, "the metaserver serving certificate was refused; requesting again");
                        name.clear();
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, csr = %name, "reading the certificate request failed; retrying")
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(ServingError::Cancelled),
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
}

/// The CertificateSigningRequest object `name` for `csr_pem`.
fn csr_object(csr_pem: &str, name: &str) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": STANDARD.encode(csr_pem.as_bytes()),
            "signerName": "kubernetes.io/kubelet-serving",
            "usages": ["digital signature", "key encipherment", "server auth"],
        },
    })
}

/// The issued certificate (PEM) of a CertificateSigningRequest, once there is one.
fn issued(csr: &Value) -> Option<String> {
    let b64 = csr.pointer("/status/certificate")?.as_str()?;
    let pem = STANDARD.decode(b64).ok()?;
    String::from_utf8(pem)
        .ok()
        .filter(|p| p.contains("CERTIFICATE"))
}

/// Why a request was denied or failed, if it was.
fn denied(csr: &Value) -> Option<String> {
    csr.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| matches!(c["type"].as_str(), Some("Denied" | "Failed")))
        .map(|c| format!("{}: {}", c["type"], c["message"]))
}

fn write_pair(dir: &Path, pem: &str) -> Result<(), ServingError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ServingError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(PAIR_FILE);
    let tmp = dir.join(format!("{PAIR_FILE}.tmp"));
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(io(&tmp))?;
        f.write_all(pem.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(ips: &[IpAddr], days: i64) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = ips
            .iter()
            .map(|ip| rcgen::SanType::IpAddress(*ip))
            .collect();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let cert = params.self_signed(&key).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_stored_pair_is_used_while_it_names_the_addresses_and_is_not_near_its_end() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let dummy: IpAddr = "169.254.30.10".parse().unwrap();
        assert!(config_from_pem(signed(&[lo, dummy], 365).as_bytes(), &[lo, dummy]).is_ok());
        let e = config_from_pem(signed(&[lo], 365).as_bytes(), &[lo, dummy]).unwrap_err();
        assert!(e.contains("169.254.30.10"), "{e}");
        let e = config_from_pem(signed(&[lo], 0).as_bytes(), &[lo]).unwrap_err();
        assert_eq!(e, "expires soon");
        assert!(config_from_pem(b"nonsense", &[lo]).is_err());
    }

    #[test]
    fn the_request_is_a_kubelet_serving_csr_and_its_answer_is_read() {
        let o = csr_object(
            "-----BEGIN CERTIFICATE REQUEST-----\nx\n",
            "csr-metaserver-n1-1",
        );
        assert_eq!(o["metadata"]["name"], "csr-metaserver-n1-1");
        assert_eq!(o["spec"]["signerName"], "kubernetes.io/kubelet-serving");
        assert_eq!(o["spec"]["usages"][2], "server auth");
        assert_eq!(issued(&o), None);
        let done =
            json!({"status": {"certificate": STANDARD.encode("-----BEGIN CERTIFICATE-----\n")}});
        assert!(issued(&done).is_some());
        let no = json!({"status": {"conditions": [{"type": "Denied", "message": "no"}]}});
        assert!(denied(&no).is_some());
    }
}
