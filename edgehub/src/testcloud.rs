//! Test-only: a CA with rcgen and a small mutual-TLS WebSocket server on 127.0.0.1 that behaves
//! like CloudHub in the ways the cloud link cares about (and misbehaves on request).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use crate::message::Message;

/// How the private key file is written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyFormat {
    /// `EC PRIVATE KEY`, what KubeEdge writes.
    Sec1,
    /// `PRIVATE KEY`.
    Pkcs8,
}

/// A CA, and a temp dir for the edge's files.
pub(crate) struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub(crate) dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "KubeEdge");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A leaf signed by the CA; `sans` are IPs or DNS names, `""` an empty DNS name.
    fn leaf(&self, sans: &[&str], eku: ExtendedKeyUsagePurpose, cn: &str) -> (Vec<u8>, KeyPair) {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.der().to_vec(), key)
    }

    /// The server side: CloudHub's certificate with `sans`, client certificates required.
    pub(crate) fn acceptor(&self, sans: &[&str]) -> TlsAcceptor {
        self.acceptor_trusting(sans, self)
    }

    /// Like [`Self::acceptor`], but client certificates must come from `clients`' CA.
    pub(crate) fn acceptor_trusting(&self, sans: &[&str], clients: &Pki) -> TlsAcceptor {
        let (cert, key) = self.leaf(sans, ExtendedKeyUsagePurpose::ServerAuth, "KubeEdge");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(clients.ca.der().clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![CertificateDer::from(cert)], key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    /// Writes CA, edge certificate and key; returns `modules.edgeHub` pointing at them, with
    /// short timers for tests.
    pub(crate) fn edge_config(&self, format: KeyFormat) -> config::EdgeHub {
        let (cert, key) = self.leaf(
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            "system:node:edge-1",
        );
        let ca = self.dir.path().join("rootCA.crt");
        let crt = self.dir.path().join("server.crt");
        let keyfile = self.dir.path().join("server.key");
        std::fs::write(&ca, self.ca.pem()).unwrap();
        std::fs::write(&crt, pem("CERTIFICATE", &cert)).unwrap();
        let key_pem = match format {
            KeyFormat::Pkcs8 => key.serialize_pem(),
            KeyFormat::Sec1 => pem("EC PRIVATE KEY", &sec1_of(&key.serialize_der())),
        };
        std::fs::write(&keyfile, key_pem).unwrap();
        let mut hub = config::EdgeHub {
            tls_ca_file: ca,
            tls_cert_file: crt,
            tls_private_key_file: keyfile,
            ..config::EdgeHub::default()
        };
        hub.failover.ping_interval_ms = 50;
        hub.failover.ping_timeout_ms = 400;
        hub.failover.connect_timeout_ms = 2_000;
        hub.failover.backoff_initial_ms = 20;
        hub.failover.backoff_max_ms = 200;
        hub.failover.probe_preferred_ms = 100;
        hub
    }
}

/// What the server does with the n-th connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Read and record; send a reserved `ping` operation and an `insert` after the upgrade.
    Serve,
    /// Close the TCP connection right after the upgrade, without a Close frame (like Go).
    Drop,
    /// Stop reading and writing, keep the connection open (half-open link).
    Silent,
}

/// What the server saw.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "test events")]
pub(crate) enum Seen {
    Upgrade {
        path: String,
        headers: Vec<(String, String)>,
    },
    Message(Message),
    Close,
}

/// The server; it runs until the test's runtime ends.
pub(crate) struct Cloud {
    pub(crate) addr: SocketAddr,
    pub(crate) seen: mpsc::Receiver<Seen>,
    /// Sent to the edge by every `Serve` connection after the upgrade.
    pub(crate) greeting: Vec<Message>,
}

impl Cloud {
    pub(crate) async fn start(
        acceptor: TlsAcceptor,
        listener: TcpListener,
        modes: Vec<Mode>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::channel(1024);
        let greeting = vec![
            Message::new(
                crate::Route::new("cloudhub", "resource", "ping", "node"),
                serde_json::Value::Null,
            ),
            Message::new(
                crate::Route::new("edgecontroller", "resource", "insert", "default/pod/p"),
                serde_json::json!({"kind": "Pod"}),
            ),
        ];
        let hello = greeting.clone();
        let count = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let mode = modes.get(n).copied().unwrap_or(Mode::Serve);
                tokio::spawn(serve(
                    acceptor.clone(),
                    tcp,
                    mode,
                    tx.clone(),
                    hello.clone(),
                ));
            }
        });
        Self {
            addr,
            seen,
            greeting,
        }
    }

    pub(crate) async fn next(&mut self, what: &str) -> Seen {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.seen.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap()
    }
}

async fn serve(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    mode: Mode,
    seen: mpsc::Sender<Seen>,
    greeting: Vec<Message>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let record = seen.clone();
    #[expect(clippy::result_large_err, reason = "tungstenite's callback signature")]
    let callback = move |req: &Request, resp: Response| {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        let _ = record.try_send(Seen::Upgrade {
            path: req.uri().path().to_owned(),
            headers,
        });
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await else {
        return;
    };
    match mode {
        Mode::Drop => drop(ws),
        Mode::Silent => {
            std::future::pending::<()>().await;
            drop(ws);
        }
        Mode::Serve => {
            for m in greeting {
                if ws.send(WsMessage::Text(m.to_wire().into())).await.is_err() {
                    return;
                }
            }
            while let Some(Ok(frame)) = ws.next().await {
                let event = match frame {
                    WsMessage::Text(t) => match Message::from_wire(t.as_bytes()) {
                        Ok(m) => Seen::Message(m),
                        Err(_) => continue,
                    },
                    WsMessage::Close(_) => Seen::Close,
                    _ => continue,
                };
                let _ = seen.try_send(event);
            }
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// DER tag-length-value at the start of `buf`: (whole element, contents, rest).
fn tlv(buf: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let (len, header) = match buf[1] {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 => (usize::from(buf[2]), 3),
        0x82 => (usize::from(buf[2]) << 8 | usize::from(buf[3]), 4),
        other => panic!("unsupported DER length byte {other:#x}"),
    };
    (
        &buf[..header + len],
        &buf[header..header + len],
        &buf[header + len..],
    )
}

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match contents.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(contents);
    out
}

/// The SEC1 `ECPrivateKey` inside a P-256 PKCS#8 key, with the curve parameters Go writes.
fn sec1_of(pkcs8: &[u8]) -> Vec<u8> {
    let (_, info, _) = tlv(pkcs8);
    let (_, _, rest) = tlv(info); // version
    let (_, _, rest) = tlv(rest); // algorithm
    let (_, ec_key, _) = tlv(rest); // OCTET STRING
    let (_, inner, _) = tlv(ec_key);
    let (version, _, rest) = tlv(inner);
    let (private, _, rest) = tlv(rest);
    let prime256v1 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut body = Vec::new();
    body.extend_from_slice(version);
    body.extend_from_slice(private);
    body.extend(der(0xa0, &prime256v1));
    body.extend_from_slice(rest);
    der(0x30, &body)
}
