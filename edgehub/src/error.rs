//! Errors of the cloud link.

use std::path::PathBuf;
use std::time::Duration;

/// A WebSocket message that is not a beehive message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message held no JSON value (gorilla reports `io.ErrUnexpectedEOF`).
    #[error("message holds no complete JSON value")]
    Empty,
    /// The first JSON value is not a beehive message.
    #[error("message is not a beehive message")]
    Json(#[source] serde_json::Error),
}

/// Errors that stop the hub from starting. Each names the config key to fix.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A TLS file could not be read.
    #[error("cannot read {key} {path:?}: check the path and its permissions")]
    ReadFile {
        /// Config key, e.g. `modules.edgeHub.tlsCaFile`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file is not the PEM it should be.
    #[error("{key} {path:?} holds no usable {what}: expected PEM ({expected})")]
    BadPem {
        /// Config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// The PEM labels accepted.
        expected: &'static str,
        /// The parser's complaint, if there was one.
        #[source]
        source: Option<rustls_pki_types::pem::Error>,
    },
    /// The CA file holds a certificate that cannot be a trust anchor.
    #[error("{key} {path:?} holds a certificate that is not a usable CA")]
    BadCa {
        /// Config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate and key do not make a usable pair.
    #[error(
        "modules.edgeHub.tlsCertFile {cert:?} and tlsPrivateKeyFile {key:?} are not a usable pair \
         (key does not match or its type is unsupported)"
    )]
    ClientIdentity {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// A configured endpoint is not `host:port`.
    #[error("{key} {value:?} is not host:port ({reason})")]
    BadEndpoint {
        /// Config key.
        key: &'static str,
        /// The value as configured.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `tlsServerName` (or the dialed host) is not a valid server name.
    #[error(
        "server name {name:?} (modules.edgeHub.tlsServerName, else the host of \
         websocket.server / failover.servers) is neither a DNS name nor an IP address"
    )]
    BadServerName {
        /// The name.
        name: String,
    },
    /// The WebSocket URL built from node name and project ID is not a valid URL.
    #[error(
        "cannot build the websocket url from node name {node:?} and modules.edgeHub.projectID \
         {project:?}: use characters valid in a URL path"
    )]
    BadUrl {
        /// Node name.
        node: String,
        /// Project ID.
        project: String,
    },
}

/// What the reconnect loop does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialErrorKind {
    /// Transient (reset mid-handshake, upgrade refused): try the next endpoint; this one keeps
    /// its place in the preference order.
    Retry,
    /// This endpoint does not work now (refused, unreachable, timed out, wrong certificate):
    /// try the next one and prefer the healthy ones until it answers again.
    NextEndpoint,
    /// Retrying will not help until an operator acts (client certificate rejected); logged as
    /// an error, and the hub keeps trying at the backoff cap.
    Fatal,
}

impl DialErrorKind {
    /// Static label, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::NextEndpoint => "next_endpoint",
            Self::Fatal => "fatal",
        }
    }
}

/// The server certificate does not carry the name the edge verified it against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "server certificate of {endpoint} is not valid for {expected:?}; it carries [{presented}]: \
     add {expected:?} to CloudCore's cloudHub.advertiseAddress / dnsNames, or set \
     modules.edgeHub.tlsServerName to one of the names it carries",
    presented = quoted_list(.presented)
)]
pub struct NameMismatch {
    /// The endpoint dialed (`host:port`).
    pub endpoint: String,
    /// The name verified against (the dialed host or `tlsServerName`).
    pub expected: String,
    /// The subject alternative names in the certificate (`DNS:x`, `IP:y`).
    pub presented: Vec<String>,
}

/// A failed connection attempt.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP connect failed (refused, unreachable, unresolvable).
    #[error("tcp connect to {endpoint} failed")]
    Connect {
        /// Endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The whole attempt took longer than allowed.
    #[error(
        "connecting to {endpoint} took longer than {after:?}, stuck in the {stage} \
         (limit: failover.connectTimeoutMs / websocket.handshakeTimeout)"
    )]
    Timeout {
        /// Endpoint.
        endpoint: String,
        /// The limit.
        after: Duration,
        /// Where the attempt was when time ran out.
        stage: DialStage,
    },
    /// The server certificate does not name the host.
    #[error(transparent)]
    NameMismatch(#[from] NameMismatch),
    /// The server certificate did not verify (unknown issuer, expired, ...).
    #[error("server certificate of {endpoint} did not verify against modules.edgeHub.tlsCaFile")]
    ServerCert {
        /// Endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: rustls::Error,
    },
    /// The cloud rejected this node's client certificate.
    #[error(
        "{endpoint} rejected the client certificate ({alert}): renew \
         modules.edgeHub.tlsCertFile or check it is signed by CloudCore's CA"
    )]
    ClientCertRejected {
        /// Endpoint.
        endpoint: String,
        /// The TLS alert received.
        alert: String,
    },
    /// The TLS handshake failed for another reason.
    #[error("tls handshake with {endpoint} failed")]
    Tls {
        /// Endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The WebSocket upgrade failed.
    #[error("websocket upgrade with {endpoint} failed")]
    Upgrade {
        /// Endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
}

/// The steps of a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStage {
    /// TCP connect (SYN answered or not).
    TcpConnect,
    /// TLS handshake.
    TlsHandshake,
    /// WebSocket upgrade request and response.
    Upgrade,
}

impl std::fmt::Display for DialStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TcpConnect => "tcp connect",
            Self::TlsHandshake => "tls handshake",
            Self::Upgrade => "websocket upgrade",
        })
    }
}

impl DialError {
    /// True when the endpoint did not even accept TCP: a TCP connect succeeding later is news.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::Timeout {
                    stage: DialStage::TcpConnect,
                    ..
                }
        )
    }

    /// What the reconnect loop should do next.
    pub fn kind(&self) -> DialErrorKind {
        match self {
            Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::NameMismatch(_)
            | Self::ServerCert { .. } => DialErrorKind::NextEndpoint,
            Self::ClientCertRejected { .. } => DialErrorKind::Fatal,
            Self::Tls { .. } | Self::Upgrade { .. } => DialErrorKind::Retry,
        }
    }
}

/// `"a", "b"`: every name quoted, so that an empty SAN shows as `""`.
fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
