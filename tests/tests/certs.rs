//! Edge certificate bootstrap and rotation against the simulator's certificate service.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cloudsim::{
    CertService, CertServiceOptions, CloudSim, Event, IssuedVia, Pki, PkiOptions, SimConfig,
    make_token, sign_server_cert,
};
use edgehub::{CertError, CertRetry, CertSettings, ensure_certificates, spawn_rotation};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const NODE: &str = "edge-1";
const HOUR: Duration = Duration::from_secs(3600);

const CONFIG: &str = "\
# written by keadm join
apiVersion: edgecore.config.kubeedge.io/v1alpha2
kind: EdgeCore
modules:
  edgeHub:
    enable: true
    heartbeat: 15   # seconds
    token: TOKEN
    httpServer: https://127.0.0.1:10002
  edged:
    hostnameOverride: edge-1
";

struct Fixture {
    dir: tempfile::TempDir,
    svc: CertService,
}

impl Fixture {
    async fn new(options: CertServiceOptions) -> Self {
        let pki = Pki::generate(&PkiOptions::new(NODE)).expect("test pki");
        Self::with_pki(pki, options).await
    }

    async fn with_pki(pki: Pki, options: CertServiceOptions) -> Self {
        let svc = CertService::start(&pki, options)
            .await
            .expect("cert service starts");
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            svc,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Settings with files under the temp dir, one attempt, the token in the config.
    fn settings(&self, token: &str) -> CertSettings {
        CertSettings {
            node_name: NODE.to_owned(),
            ca_file: self.path("etc/ca/rootCA.crt"),
            cert_file: self.path("etc/certs/server.crt"),
            key_file: self.path("etc/certs/server.key"),
            http_server: self.svc.url(),
            tls_server_name: String::new(),
            token: token.to_owned(),
            token_file: self.path("etc/bootstrap-edgecore.conf"),
            config_file: None,
            rotate: true,
            request_timeout: Duration::from_secs(10),
            retry: CertRetry {
                max_attempts: Some(1),
                ..CertRetry::default()
            },
        }
    }

    fn good_token(&self) -> String {
        self.svc.token(SystemTime::now() + HOUR)
    }
}

async fn bootstrap(settings: &CertSettings) -> Result<edgehub::CertInfo, CertError> {
    ensure_certificates(settings, &CancellationToken::new()).await
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o777
}

fn leaf(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .expect("a PEM certificate")
        .to_vec()
}

fn subject(der: &[u8]) -> (String, String) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    let get = |it: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (
        get(cert.subject().iter_common_name().next()),
        get(cert.subject().iter_organization().next()),
    )
}

#[tokio::test]
async fn bootstrap_writes_ca_cert_and_key_with_private_modes() {
    let fx = Fixture::new(CertServiceOptions::default()).await;
    let settings = fx.settings(&fx.good_token());
    let info = bootstrap(&settings).await.unwrap();
    assert!(info.not_after > SystemTime::now() + Duration::from_secs(300 * 24 * 3600));

    assert_eq!(leaf(&settings.ca_file), fx.svc.ca_der());
    let cert = leaf(&settings.cert_file);
    assert_eq!(
        subject(&cert),
        ("system:node:edge-1".to_owned(), "system:nodes".to_owned())
    );
    let key_pem = std::fs::read_to_string(&settings.key_file).unwrap();
    assert!(key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
    assert!(matches!(
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        PrivateKeyDer::Sec1(_)
    ));
    assert_eq!(mode(&settings.key_file), 0o600);
    assert_eq!(mode(&fx.path("etc/certs")), 0o700);
    assert_eq!(mode(&fx.path("etc/ca")), 0o700);
    let issued = fx.svc.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(
        (issued[0].node.as_str(), issued[0].via),
        (NODE, IssuedVia::Token)
    );
    assert_eq!(issued[0].der, cert);

    // A usable pair is kept: no second application.
    let again = bootstrap(&settings).await.unwrap();
    assert_eq!(again, info);
    assert_eq!(fx.svc.issued().len(), 1);
}

#[tokio::test]
async fn token_is_removed_from_the_config_file_and_everything_else_kept() {
    let fx = Fixture::new(CertServiceOptions::default()).await;
    let token = fx.good_token();
    let config_file = fx.path("edgecore.yaml");
    std::fs::write(&config_file, CONFIG.replace("TOKEN", &token)).unwrap();
    std::fs::set_permissions(&config_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut settings = fx.settings(&token);
    settings.config_file = Some(config_file.clone());
    bootstrap(&settings).await.unwrap();
    let text = std::fs::read_to_string(&config_file).unwrap();
    assert_eq!(text, CONFIG.replace("TOKEN", "\"\""));
    assert!(!text.contains(&token));
    assert_eq!(mode(&config_file), 0o640);
}

#[tokio::test]
async fn token_file_wins_over_the_config_token() {
    let fx = Fixture::new(CertServiceOptions::default()).await;
    let settings = fx.settings("not-a-token");
    std::fs::create_dir_all(fx.path("etc")).unwrap();
    std::fs::write(&settings.token_file, format!("{}\n", fx.good_token())).unwrap();
    bootstrap(&settings).await.unwrap();
    assert_eq!(fx.svc.issued().len(), 1);
}

#[tokio::test]
async fn a_pair_for_another_node_is_replaced() {
    let fx = Fixture::new(CertServiceOptions::default()).await;
    let other = Pki::generate(&PkiOptions::new("other-node")).unwrap();
    let settings = fx.settings(&fx.good_token());
    std::fs::create_dir_all(fx.path("etc/certs")).unwrap();
    std::fs::write(&settings.cert_file, &other.edge_crt).unwrap();
    std::fs::write(&settings.key_file, &other.edge_key).unwrap();
    bootstrap(&settings).await.unwrap();
    assert_eq!(subject(&leaf(&settings.cert_file)).0, "system:node:edge-1");
    assert_eq!(fx.svc.issued().len(), 1);
}

#[tokio::test]
async fn a_missing_ca_file_is_fetched_again() {
    let fx = Fixture::new(CertServiceOptions::default()).await;
    let settings = fx.settings(&fx.good_token());
    bootstrap(&settings).await.expect("first bootstrap");
    std::fs::remove_file(&settings.ca_file).expect("remove the CA file");
    bootstrap(&settings).await.expect("second bootstrap");
    assert_eq!(leaf(&settings.ca_file), fx.svc.ca_der());
    assert_eq!(fx.svc.issued().len(), 2);
}

#[tokio::test]
async fn wrong_ca_hash_is_refused_and_nothing_written() {
    let fx = Fixture::new(CertServiceOptions::default()).await;
    let foreign = Pki::generate(&PkiOptions::new(NODE)).unwrap();
    let foreign_ca = CertificateDer::from_pem_slice(foreign.ca_crt.as_bytes()).unwrap();
    let token = make_token(&foreign_ca, b"k", SystemTime::now() + HOUR);
    let err = bootstrap(&fx.settings(&token)).await.unwrap_err();
    assert!(matches!(err, CertError::CaHashMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("/ca.crt") && text.contains("token"), "{text}");
    assert!(fx.svc.issued().is_empty());
    assert!(!fx.path("etc/ca/rootCA.crt").exists());
    assert!(!fx.path("etc/certs/server.key").exists());
}

#[tokio::test]
async fn expired_token_says_so_before_asking_the_cloud() {
    let fx = Fixture::new(CertServiceOptions::default()).await;
    let token = fx.svc.token(SystemTime::now() - HOUR);
    let err = bootstrap(&fx.settings(&token)).await.unwrap_err();
    assert!(matches!(err, CertError::TokenExpired { .. }), "{err}");
    assert!(err.to_string().contains("keadm gettoken"), "{err}");
    assert!(fx.svc.refusals().is_empty());
}

#[tokio::test]
async fn token_the_cloud_refuses_is_a_plain_401() {
    let fx = Fixture::new(CertServiceOptions::default()).await;
    let token = make_token(fx.svc.ca_der(), b"not the ca key", SystemTime::now() + HOUR);
    let err = bootstrap(&fx.settings(&token)).await.unwrap_err();
    assert!(matches!(err, CertError::Unauthorized { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("401") && text.contains("token validation failure"),
        "{text}"
    );
    assert!(text.contains("keadm gettoken"), "{text}");
    assert!(!text.contains(&token));
}

#[tokio::test]
async fn failed_bootstrap_is_retried_and_picks_up_a_new_token_file() {
    let fx = Fixture::new(CertServiceOptions::default()).await;
    let mut settings = fx.settings("");
    settings.retry = CertRetry {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(50),
        max_attempts: None,
    };
    std::fs::create_dir_all(fx.path("etc")).expect("etc dir");
    let refused = make_token(fx.svc.ca_der(), b"stale key", SystemTime::now() + HOUR);
    std::fs::write(&settings.token_file, &refused).expect("token file");
    let cancel = CancellationToken::new();
    let task = {
        let settings = settings.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { ensure_certificates(&settings, &cancel).await })
    };
    fx.svc
        .wait_refused(2, Duration::from_secs(10))
        .await
        .expect("two refused attempts");
    assert!(!task.is_finished(), "a refused token is retried, not fatal");
    // The operator puts a fresh token in place; the next attempt uses it.
    std::fs::write(&settings.token_file, fx.good_token()).expect("token file");
    let info = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("bootstrap finishes after the new token")
        .expect("task")
        .expect("certificate");
    assert!(info.not_after > SystemTime::now());
    assert_eq!(fx.svc.issued().len(), 1);
}

#[tokio::test]
async fn malformed_and_missing_tokens_are_explained() {
    let fx = Fixture::new(CertServiceOptions::default()).await;
    for token in ["abc.def", "a.b.c.d.e", "x.y.z.w"] {
        let err = bootstrap(&fx.settings(token)).await.unwrap_err();
        assert!(
            matches!(err, CertError::TokenFormat { .. }),
            "{token}: {err}"
        );
    }
    let err = bootstrap(&fx.settings("")).await.unwrap_err();
    assert!(matches!(err, CertError::TokenMissing { .. }), "{err}");
    assert!(err.to_string().contains("bootstrap-edgecore.conf"), "{err}");
    assert!(fx.svc.refusals().is_empty() && fx.svc.issued().is_empty());
}

async fn fixture_with_server_cert(
    sans: &[&str],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Fixture {
    let pki = Pki::generate(&PkiOptions::new(NODE)).expect("test pki");
    let server = sign_server_cert(&pki, sans, not_before, not_after).expect("server certificate");
    Fixture::with_pki(
        pki,
        CertServiceOptions {
            server_cert: Some(server),
            ..CertServiceOptions::default()
        },
    )
    .await
}

#[tokio::test]
async fn server_cert_without_the_dialed_ip_is_refused_naming_host_and_sans() {
    let now = SystemTime::now();
    let fx = fixture_with_server_cert(&["127.0.0.2", "cloud.test"], now - HOUR, now + HOUR).await;
    let err = bootstrap(&fx.settings(&fx.good_token())).await.unwrap_err();
    assert!(matches!(err, CertError::ServerNameMismatch(_)), "{err}");
    let text = err.to_string();
    for needle in ["127.0.0.1", "127.0.0.2", "cloud.test", "/edge.crt"] {
        assert!(text.contains(needle), "{needle} missing in: {text}");
    }
    // /ca.crt is fetched without verification, /edge.crt never got to send the token.
    assert!(fx.svc.issued().is_empty());
}

#[tokio::test]
async fn server_cert_san_by_dns_name() {
    let now = SystemTime::now();
    let fx = fixture_with_server_cert(&["localhost", "cloud.test"], now - HOUR, now + HOUR).await;
    // The host of httpServer is a DNS name in the SANs.
    let mut settings = fx.settings(&fx.good_token());
    settings.http_server = format!("https://localhost:{}", fx.svc.addr().port());
    bootstrap(&settings).await.unwrap();
    // tlsServerName names a DNS SAN while dialing an IP that is not in the certificate.
    let fx = fixture_with_server_cert(&["cloud.test"], now - HOUR, now + HOUR).await;
    let mut settings = fx.settings(&fx.good_token());
    settings.tls_server_name = "cloud.test".to_owned();
    bootstrap(&settings).await.unwrap();
}

#[tokio::test]
async fn server_cert_san_by_ip() {
    let now = SystemTime::now();
    let fx = fixture_with_server_cert(&["127.0.0.1"], now - HOUR, now + HOUR).await;
    bootstrap(&fx.settings(&fx.good_token())).await.unwrap();
}

#[tokio::test]
async fn expired_server_cert_is_refused() {
    let now = SystemTime::now();
    let fx = fixture_with_server_cert(&["127.0.0.1"], now - 2 * HOUR, now - HOUR).await;
    let err = bootstrap(&fx.settings(&fx.good_token())).await.unwrap_err();
    assert!(matches!(err, CertError::ServerCertExpired { .. }), "{err}");
    assert!(fx.svc.issued().is_empty());
}

#[tokio::test]
async fn short_lived_cert_is_rotated_with_the_client_cert_and_files_replaced() {
    let fx = Fixture::new(CertServiceOptions {
        edge_cert_lifetime: Duration::from_secs(10),
        ..CertServiceOptions::default()
    })
    .await;
    let settings = fx.settings(&fx.good_token());
    let first = bootstrap(&settings).await.unwrap();
    let old_cert = std::fs::read(&settings.cert_file).unwrap();
    let old_key = std::fs::read(&settings.key_file).unwrap();

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (told_tx, mut told) = tokio::sync::mpsc::unbounded_channel();
    let mut updates = spawn_rotation(
        settings.clone(),
        first.clone(),
        move |info| {
            let _ = told_tx.send(info.serial.clone());
        },
        cancel.clone(),
        &tracker,
    );
    let rotated = tokio::time::timeout(Duration::from_secs(30), updates.rotated())
        .await
        .expect("a rotation within 30 s of a 10 s certificate");
    assert_ne!(rotated.serial, first.serial);
    assert_eq!(updates.current(), rotated);
    // The hub hook ran for this pair (after the files were written).
    assert_eq!(told.try_recv().ok(), Some(rotated.serial.clone()));

    let issued = fx.svc.issued();
    assert_eq!(issued.len(), 2);
    assert_eq!(issued[1].via, IssuedVia::ClientCert);
    assert_eq!(leaf(&settings.cert_file), issued[1].der);
    assert_ne!(std::fs::read(&settings.cert_file).unwrap(), old_cert);
    assert_ne!(std::fs::read(&settings.key_file).unwrap(), old_key);
    assert_eq!(mode(&settings.key_file), 0o600);
    // The new pair loads as it is on disk.
    assert_eq!(bootstrap(&settings).await.unwrap(), rotated);

    cancel.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .expect("rotation task ends on cancel");
}

#[tokio::test]
async fn the_hub_redials_with_the_rotated_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::generate(&PkiOptions::new(NODE)).expect("test pki");
    let sim = CloudSim::start(SimConfig::new(
        "r1",
        "127.0.0.1:0".parse().expect("literal address"),
        dir.path().join("state.db"),
        pki.clone(),
    ))
    .await
    .expect("simulator starts");
    let mut events = sim.events();
    let fx = Fixture::with_pki(
        pki,
        CertServiceOptions {
            edge_cert_lifetime: Duration::from_secs(10),
            ..CertServiceOptions::default()
        },
    )
    .await;
    let settings = fx.settings(&fx.good_token());
    let first = bootstrap(&settings).await.expect("bootstrap");

    let hub_config = config::EdgeHub {
        tls_ca_file: settings.ca_file.clone(),
        tls_cert_file: settings.cert_file.clone(),
        tls_private_key_file: settings.key_file.clone(),
        http_server: settings.http_server.clone(),
        websocket: config::WebSocket {
            server: sim.addr().to_string(),
            ..Default::default()
        },
        ..Default::default()
    };
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (inbound, _inbound_rx) = tokio::sync::mpsc::channel(64);
    let hub = edgehub::spawn(
        edgehub::HubSettings {
            node_name: NODE.to_owned(),
            hub: hub_config,
        },
        inbound,
        cancel.clone(),
        &tracker,
    )
    .expect("hub starts with the bootstrapped pair");
    let connected = |e: &Event| matches!(e, Event::Connected { node, .. } if node == NODE);
    events
        .wait_for(Duration::from_secs(20), "the first session", connected)
        .await
        .expect("first session");

    let mut updates = spawn_rotation(
        settings.clone(),
        first,
        {
            let hub = hub.clone();
            move |_| hub.certificates_rotated()
        },
        cancel.clone(),
        &tracker,
    );
    tokio::time::timeout(Duration::from_secs(30), updates.rotated())
        .await
        .expect("a rotation within 30 s of a 10 s certificate");
    // The hub reloads the renewed pair and starts a new session with it.
    events
        .wait_for(
            Duration::from_secs(20),
            "a session after the rotation",
            connected,
        )
        .await
        .expect("second session");
    assert_eq!(
        fx.svc.issued().last().map(|c| c.via),
        Some(IssuedVia::ClientCert)
    );
    assert!(
        hub.stats()
            .reconnects(edgehub::DisconnectReason::CertRotated)
            >= 1,
        "the session ended because of the rotation: {:?}",
        hub.stats()
    );

    cancel.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .expect("hub and rotation end on cancel");
}
