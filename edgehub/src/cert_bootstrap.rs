//! Getting the first edge certificate: check the pair on disk, and when it is missing, unreadable,
//! expired or made for another node, apply for one with the bootstrap token.
//!
//! Unlike KubeEdge (which panics on a failed application) every failure is logged with what was
//! tried and retried with backoff until it works or edgecore shuts down.

use std::fmt;
use std::future::Future;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cert_error::{CertError, Chain};
use crate::cert_files::{
    CERT_MODE, CertInfo, KEY_MODE, NewFile, certified_key, load_ca, load_pair, node_common_name,
    parse_cert, pem, replace_files, sec1_from_pkcs8,
};
use crate::cert_http::{CertServer, Credential, fetch_ca, fetch_edge_cert};
use crate::cert_token::{BootstrapToken, read_token, remove_token_from_yaml};

/// Where `keadm join` leaves the bootstrap token; it overrides `modules.edgeHub.token`.
pub const DEFAULT_TOKEN_FILE: &str = "/etc/kubeedge/bootstrap-edgecore.conf";

/// Everything the certificate code needs. Build it with [`CertSettings::new`] and adjust.
#[derive(Clone)]
pub struct CertSettings {
    /// `modules.edged.hostnameOverride`; the certificate's CN is `system:node:<node_name>`.
    pub node_name: String,
    /// `tlsCaFile` (PEM).
    pub ca_file: PathBuf,
    /// `tlsCertFile` (PEM).
    pub cert_file: PathBuf,
    /// `tlsPrivateKeyFile` (PEM `EC PRIVATE KEY`).
    pub key_file: PathBuf,
    /// `httpServer`, `https://host:port`.
    pub http_server: String,
    /// `tlsServerName`: the name the service's certificate must carry; empty = the URL's host.
    pub tls_server_name: String,
    /// `token` from the config (the token file wins when it has one).
    pub token: String,
    /// The bootstrap token file, [`DEFAULT_TOKEN_FILE`] unless a test says otherwise.
    pub token_file: PathBuf,
    /// edgecore.yaml, whose `modules.edgeHub.token` is blanked after a bootstrap; `None` leaves
    /// it alone.
    pub config_file: Option<PathBuf>,
    /// `rotateCertificates`.
    pub rotate: bool,
    /// Limit for one request (connect, TLS, HTTP), default 30 s.
    pub request_timeout: Duration,
    /// Retry policy for a failed bootstrap or rotation.
    pub retry: CertRetry,
}

/// Exponential, jittered retry delays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRetry {
    /// First delay (default 2 s, as KubeEdge).
    pub initial: Duration,
    /// Cap (default 32 s, KubeEdge's steady poll).
    pub max: Duration,
    /// Attempts before giving up; `None` (default) retries until shutdown.
    pub max_attempts: Option<usize>,
}

impl Default for CertRetry {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(32),
            max_attempts: None,
        }
    }
}

impl fmt::Debug for CertSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSettings")
            .field("node_name", &self.node_name)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("http_server", &self.http_server)
            .field("tls_server_name", &self.tls_server_name)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("token_file", &self.token_file)
            .field("config_file", &self.config_file)
            .field("rotate", &self.rotate)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl CertSettings {
    /// Settings from the validated `modules.edgeHub` section, with the default token file, no
    /// config file to edit, a 30 s request timeout and retries until shutdown.
    pub fn new(node_name: impl Into<String>, hub: &config::EdgeHub) -> Self {
        Self {
            node_name: node_name.into(),
            ca_file: hub.tls_ca_file.clone(),
            cert_file: hub.tls_cert_file.clone(),
            key_file: hub.tls_private_key_file.clone(),
            http_server: hub.http_server.clone(),
            tls_server_name: hub.tls_server_name.clone(),
            token: hub.token.clone(),
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            config_file: None,
            rotate: hub.rotate_certificates,
            request_timeout: Duration::from_secs(30),
            retry: CertRetry::default(),
        }
    }
}

/// Makes sure a usable edge certificate is on disk and returns facts about it.
///
/// The pair on disk is kept when it loads, belongs together, is not expired and has CN
/// `system:node:<node>`, and the CA file loads. Otherwise the bootstrap token applies for a new one. Failures are
/// logged and retried per `settings.retry`; the error is returned only on shutdown
/// ([`CertError::Cancelled`]), an unusable `httpServer`, or when `max_attempts` run out.
pub async fn ensure_certificates(
    settings: &CertSettings,
    cancel: &CancellationToken,
) -> Result<CertInfo, CertError> {
    with_retry(&settings.retry, cancel, "bootstrap", || {
        bootstrap_once(settings)
    })
    .await
}

/// One bootstrap attempt.
async fn bootstrap_once(settings: &CertSettings) -> Result<CertInfo, CertError> {
    let now = SystemTime::now();
    let current = load_pair(
        &settings.cert_file,
        &settings.key_file,
        &settings.node_name,
        now,
    )
    .await;
    // The hub cannot verify CloudHub without the CA either.
    let why = match current {
        Ok(pair) => match load_ca(&settings.ca_file).await {
            Ok(_) => return Ok(pair.info),
            Err(why) => why,
        },
        Err(why) => why,
    };
    info!(
        cert_file = %settings.cert_file.display(),
        reason = %Chain(&why),
        "edge certificate not usable, applying for one with the bootstrap token"
    );
    let Some(raw) = read_token(&settings.token_file, &settings.token).await? else {
        return Err(CertError::TokenMissing {
            cert_file: settings.cert_file.clone(),
            why: Chain(&why).to_string(),
            token_file: settings.token_file.clone(),
        });
    };
    let token = BootstrapToken::parse(&raw)?;
    token.check_not_expired(now)?;
    let server = CertServer::parse(&settings.http_server, &settings.tls_server_name)?;

    let ca_der = fetch_ca(&server, settings.request_timeout).await?;
    let actual = sha256_hex(&ca_der);
    if actual != token.ca_hash() {
        return Err(CertError::CaHashMismatch {
            url: server.url("/ca.crt"),
            expected: token.ca_hash().to_owned(),
            actual,
        });
    }
    parse_cert(&ca_der, "CA certificate", &server.url("/ca.crt"))?;
    let ca = vec![CertificateDer::from(ca_der.clone())];
    let issued = issue(settings, &server, &ca, Credential::Token(token.jwt())).await?;
    let mut files = vec![NewFile {
        path: settings.ca_file.clone(),
        contents: pem("CERTIFICATE", &ca_der).into_bytes(),
        mode: CERT_MODE,
    }];
    files.extend(issued.files(settings));
    replace_files(files).await?;
    info!(
        cert_file = %settings.cert_file.display(),
        serial = %issued.info.serial,
        not_after = unix(issued.info.not_after),
        "edge certificate bootstrapped"
    );
    if let Some(config_file) = &settings.config_file {
        match remove_token_from_config(config_file).await {
            Ok(true) => {
                info!(path = %config_file.display(), "bootstrap token removed from the config file")
            }
            Ok(false) => {}
            Err(e) => error!(error = %Chain(&e), "bootstrap token left in the config file"),
        }
    }
    Ok(issued.info)
}

/// A freshly issued pair.
pub(crate) struct Issued {
    pub(crate) key_sec1: Vec<u8>,
    pub(crate) cert_der: Vec<u8>,
    pub(crate) info: CertInfo,
}

impl Issued {
    /// The new key and certificate as the files they replace: key `EC PRIVATE KEY` 0600,
    /// certificate PEM 0644. Bootstrap adds the CA; rotation writes just these two.
    pub(crate) fn files(&self, settings: &CertSettings) -> [NewFile; 2] {
        [
            NewFile {
                path: settings.key_file.clone(),
                contents: pem("EC PRIVATE KEY", &self.key_sec1).into_bytes(),
                mode: KEY_MODE,
            },
            NewFile {
                path: settings.cert_file.clone(),
                contents: pem("CERTIFICATE", &self.cert_der).into_bytes(),
                mode: CERT_MODE,
            },
        ]
    }
}

/// A new P-256 key and CSR (CN `system:node:<node>`, O `system:nodes`), sent to `/edge.crt`;
/// checks that the answer is a certificate for this node and this key.
pub(crate) async fn issue(
    settings: &CertSettings,
    server: &CertServer,
    ca: &[CertificateDer<'static>],
    credential: Credential<'_>,
) -> Result<Issued, CertError> {
    let keygen = |e: rcgen::Error| CertError::KeyGeneration(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(keygen)?;
    let mut params = rcgen::CertificateParams::default();
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(
        rcgen::DnType::CommonName,
        node_common_name(&settings.node_name),
    );
    subject.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name = subject;
    let csr = params.serialize_request(&key).map_err(keygen)?;
    let key_sec1 = sec1_from_pkcs8(&key.serialize_der()).map_err(CertError::KeyGeneration)?;

    let cert_der = fetch_edge_cert(
        server,
        ca,
        &settings.node_name,
        credential,
        csr.der().to_vec(),
        settings.request_timeout,
    )
    .await?;
    let origin = server.url("/edge.crt");
    let parsed = parse_cert(&cert_der, "edge certificate", &origin)?;
    let want = node_common_name(&settings.node_name);
    if parsed.common_name.as_deref() != Some(want.as_str()) {
        return Err(CertError::BadMaterial {
            what: "edge certificate",
            origin,
            why: format!(
                "its CN is {:?}, expected {want:?}",
                parsed.common_name.unwrap_or_default()
            ),
        });
    }
    certified_key(
        vec![CertificateDer::from(cert_der.clone())],
        PrivateKeyDer::Sec1(key_sec1.clone().into()),
        &origin,
    )?;
    Ok(Issued {
        key_sec1,
        cert_der,
        info: parsed.info,
    })
}

/// Blanks `modules.edgeHub.token` in the config file, keeping its mode and everything else.
/// `Ok(false)` when there was nothing to remove.
async fn remove_token_from_config(path: &Path) -> Result<bool, CertError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| CertError::Io {
            action: "reading the config file",
            path: path.to_path_buf(),
            source,
        })?;
    let edited = remove_token_from_yaml(&text).map_err(|why| CertError::ConfigEdit {
        path: path.to_path_buf(),
        why,
    })?;
    let Some(edited) = edited else {
        return Ok(false);
    };
    let mode = tokio::fs::metadata(path)
        .await
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    replace_files(vec![NewFile {
        path: path.to_path_buf(),
        contents: edited.into_bytes(),
        mode,
    }])
    .await?;
    Ok(true)
}

/// Runs `attempt` until it succeeds, logging each failure with the delay before the next try.
pub(crate) async fn with_retry<T, F, Fut>(
    retry: &CertRetry,
    cancel: &CancellationToken,
    task: &'static str,
    mut attempt: F,
) -> Result<T, CertError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CertError>>,
{
    let builder = ExponentialBuilder::default()
        .with_min_delay(retry.initial)
        .with_max_delay(retry.max)
        .with_factor(2.0)
        .with_jitter();
    let mut delays = match retry.max_attempts {
        Some(n) => builder.with_max_times(n.saturating_sub(1)),
        None => builder.without_max_times(),
    }
    .build();
    let mut number: u32 = 0;
    loop {
        number = number.saturating_add(1);
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(CertError::Cancelled),
            result = attempt() => result,
        };
        let err = match result {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let fatal = matches!(err, CertError::BadUrl { .. } | CertError::Cancelled);
        let next = if fatal { None } else { delays.next() };
        let Some(delay) = next else {
            error!(task, attempt = number, error = %Chain(&err), "edge certificate: giving up");
            return Err(err);
        };
        if err.needs_operator() {
            error!(task, attempt = number, retry_in = ?delay, error = %Chain(&err), "edge certificate request failed");
        } else {
            warn!(task, attempt = number, retry_in = ?delay, error = %Chain(&err), "edge certificate request failed");
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(CertError::Cancelled),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Seconds since the epoch, for log fields.
pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn retry(max_attempts: Option<usize>) -> CertRetry {
        CertRetry {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(32),
            max_attempts,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_with_growing_delays() {
        let calls = Arc::new(AtomicU32::new(0));
        let started = tokio::time::Instant::now();
        let c = calls.clone();
        let result = with_retry(&retry(None), &CancellationToken::new(), "test", || {
            let c = c.clone();
            async move {
                if c.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(CertError::TokenExpired { expired_at: 1 })
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 2 + 4 + 8 seconds, each with up to 100 % jitter on top.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(14) && waited <= Duration::from_secs(28),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_max_attempts_and_on_bad_url() {
        let calls = AtomicU32::new(0);
        let err = with_retry(
            &retry(Some(3)),
            &CancellationToken::new(),
            "test",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(CertError::TokenExpired { expired_at: 1 })
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CertError::TokenExpired { .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let err = with_retry(&retry(None), &CancellationToken::new(), "test", || async {
            Err::<(), _>(CertError::BadUrl {
                url: String::new(),
                why: String::new(),
            })
        })
        .await
        .unwrap_err();
        assert!(matches!(err, CertError::BadUrl { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_the_wait() {
        let cancel = CancellationToken::new();
        let task = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                with_retry(&retry(None), &cancel, "test", || async {
                    Err::<(), _>(CertError::TokenExpired { expired_at: 1 })
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        cancel.cancel();
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, CertError::Cancelled));
    }

    #[test]
    fn debug_redacts_the_token() {
        let hub = config::EdgeHub {
            token: "secret-token".to_owned(),
            ..Default::default()
        };
        let settings = CertSettings::new("node-a", &hub);
        assert!(!format!("{settings:?}").contains("secret-token"));
        assert_eq!(settings.token_file, PathBuf::from(DEFAULT_TOKEN_FILE));
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
