//! Dialing the in-test TLS WebSocket server: names, keys, headers.

use tokio::net::TcpListener;

use super::*;
use crate::error::DialErrorKind;
use crate::testcloud::{Cloud, KeyFormat, Mode, Pki, Seen};

async fn cloud(pki: &Pki, sans: &[&str]) -> Cloud {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Cloud::start(pki.acceptor(sans), listener, vec![Mode::Serve]).await
}

fn target(hub: &config::EdgeHub, server: &str) -> Target {
    let tls = ClientTls::load(hub).unwrap();
    let ep = Endpoint::try_new("modules.edgeHub.websocket.server", server).unwrap();
    Target::new(ep, &tls, "edge-1", hub).unwrap()
}

#[tokio::test]
async fn upgrade_carries_the_three_headers_and_the_events_path() {
    let pki = Pki::new();
    let mut cloud = cloud(&pki, &["127.0.0.1"]).await;
    let hub = pki.edge_config(KeyFormat::Sec1);
    let _ws = target(&hub, &cloud.addr.to_string()).dial().await.unwrap();
    let Seen::Upgrade { path, headers } = cloud.next("upgrade request").await else {
        panic!("first event is not the upgrade");
    };
    assert_eq!(path, format!("/{}/edge-1/events", hub.project_id));
    let get = |name: &str| {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("node_id"), ["edge-1"]);
    assert_eq!(get("project_id"), [hub.project_id.as_str()]);
    assert_eq!(get("connectionuse"), ["msg"], "sent once");
    assert!(get("origin").is_empty(), "no Origin header");
    assert!(get("sec-websocket-extensions").is_empty(), "no compression");
}

#[tokio::test]
async fn a_san_mismatch_names_the_dialed_host_the_certificate_names_and_the_fix() {
    let pki = Pki::new();
    let cloud = cloud(&pki, &["cloudcore.example", "10.9.9.9"]).await;
    let hub = pki.edge_config(KeyFormat::Sec1);
    let err = target(&hub, &cloud.addr.to_string())
        .dial()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), DialErrorKind::NextEndpoint);
    let DialError::NameMismatch(mismatch) = &err else {
        panic!("not a name mismatch: {err}");
    };
    assert_eq!(mismatch.expected, "127.0.0.1");
    assert_eq!(mismatch.presented, ["DNS:cloudcore.example", "IP:10.9.9.9"]);
    let text = err.to_string();
    for needle in [
        "127.0.0.1",
        &cloud.addr.to_string(),
        "cloudcore.example",
        "10.9.9.9",
        "advertiseAddress",
        "dnsNames",
        "tlsServerName",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
}

#[tokio::test]
async fn tls_server_name_is_verified_instead_of_the_dialed_host() {
    let pki = Pki::new();
    let cloud = cloud(&pki, &["cloudcore.example"]).await;
    let mut hub = pki.edge_config(KeyFormat::Pkcs8);
    hub.tls_server_name = "cloudcore.example".into();
    target(&hub, &cloud.addr.to_string()).dial().await.unwrap();
}

#[tokio::test]
async fn an_empty_dns_san_like_cloudcores_default_does_not_break_ip_verification() {
    let pki = Pki::new();
    let cloud = cloud(&pki, &["127.0.0.1", ""]).await;
    let hub = pki.edge_config(KeyFormat::Sec1);
    target(&hub, &cloud.addr.to_string()).dial().await.unwrap();

    // A mismatch on such a certificate shows the empty name too.
    let other = cloud_on_other_ip(&pki).await;
    let err = target(&hub, &other).dial().await.unwrap_err();
    assert!(err.to_string().contains(r#""DNS:""#), "{err}");
}

#[tokio::test]
async fn an_empty_dns_san_before_the_right_name_does_not_break_dns_verification() {
    let pki = Pki::new();
    let cloud = cloud(&pki, &["", "cloudcore.example", "127.0.0.1"]).await;
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.tls_server_name = "cloudcore.example".into();
    target(&hub, &cloud.addr.to_string()).dial().await.unwrap();
}

/// A server whose certificate carries `[IP:10.1.1.1, DNS:""]`, dialed as 127.0.0.1.
async fn cloud_on_other_ip(pki: &Pki) -> String {
    cloud(pki, &["10.1.1.1", ""]).await.addr.to_string()
}

#[tokio::test]
async fn connection_refused_moves_to_the_next_endpoint() {
    let pki = Pki::new();
    let hub = pki.edge_config(KeyFormat::Sec1);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = target(&hub, &format!("127.0.0.1:{port}"))
        .dial()
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::Connect { .. }), "{err}");
    assert_eq!(err.kind(), DialErrorKind::NextEndpoint);
    assert_eq!(err.kind().as_str(), "next_endpoint");
    assert!(err.is_unreachable());
}

#[tokio::test]
async fn an_attempt_that_hangs_times_out() {
    let pki = Pki::new();
    let mut hub = pki.edge_config(KeyFormat::Sec1);
    hub.failover.connect_timeout_ms = 200;
    // Accepts TCP (backlog) but never speaks TLS.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let err = target(&hub, &addr.to_string()).dial().await.unwrap_err();
    assert!(
        matches!(
            err,
            DialError::Timeout {
                stage: DialStage::TlsHandshake,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_unreachable(), "tcp was accepted");
    assert!(err.to_string().contains("connectTimeoutMs"), "{err}");
    drop(listener);
}

#[tokio::test]
async fn a_rejected_client_certificate_is_fatal_and_says_so() {
    let pki = Pki::new();
    let strangers = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = pki.acceptor_trusting(&["127.0.0.1"], &strangers);
    let cloud = Cloud::start(acceptor, listener, vec![Mode::Serve]).await;
    let hub = pki.edge_config(KeyFormat::Sec1);
    let err = target(&hub, &cloud.addr.to_string())
        .dial()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), DialErrorKind::Fatal, "{err:?}");
    assert!(
        err.to_string().contains("rejected the client certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reset_during_the_handshake_is_retry() {
    let pki = Pki::new();
    let hub = pki.edge_config(KeyFormat::Sec1);
    // Like haproxy in front of a dead CloudCore: TCP accepted, then closed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            drop(tcp);
        }
    });
    let err = target(&hub, &addr.to_string()).dial().await.unwrap_err();
    assert_eq!(err.kind(), DialErrorKind::Retry, "{err:?}");
    assert!(!err.is_unreachable());
}

#[test]
fn missing_and_unusable_tls_files_name_the_file_and_the_config_key() {
    let pki = Pki::new();
    let hub = pki.edge_config(KeyFormat::Sec1);

    let mut missing = hub.clone();
    missing.tls_ca_file = pki.dir.path().join("nope.crt");
    let text = ClientTls::load(&missing).unwrap_err().to_string();
    assert!(
        text.contains("tlsCaFile") && text.contains("nope.crt"),
        "{text}"
    );

    let mut garbage = hub.clone();
    garbage.tls_private_key_file = pki.dir.path().join("garbage.key");
    std::fs::write(&garbage.tls_private_key_file, "not a key").unwrap();
    let text = ClientTls::load(&garbage).unwrap_err().to_string();
    assert!(
        text.contains("tlsPrivateKeyFile") && text.contains("garbage.key"),
        "{text}"
    );

    let mut wrong_key = hub.clone();
    let other_pki = Pki::new();
    let other = other_pki.edge_config(KeyFormat::Pkcs8);
    wrong_key.tls_private_key_file = other.tls_private_key_file.clone();
    let text = ClientTls::load(&wrong_key).unwrap_err().to_string();
    assert!(
        text.contains("tlsCertFile") && text.contains("tlsPrivateKeyFile"),
        "{text}"
    );

    let mut no_cert = hub;
    no_cert.tls_cert_file = pki.dir.path().join("rootCA.crt.empty");
    std::fs::write(&no_cert.tls_cert_file, "").unwrap();
    let text = ClientTls::load(&no_cert).unwrap_err().to_string();
    assert!(
        text.contains("tlsCertFile") && text.contains("CERTIFICATE"),
        "{text}"
    );
}
