//! `modules.edgeHub`: KubeEdge's keys plus our failover and TLS additions.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::de;

/// The address KubeEdge writes into a default config when it finds no better one (RFC 5737
/// documentation range): a placeholder the operator or `keadm join` replaces with CloudCore's.
pub(crate) const PLACEHOLDER_CLOUD_IP: &str = "192.0.2.2";

/// `modules.edgeHub`. `Debug` hides the bootstrap token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EdgeHub {
    /// Module switch.
    pub enable: bool,
    /// Keepalive period in seconds (KubeEdge default 15; CloudHub drops a node after 30 s of silence).
    #[serde(deserialize_with = "de::seconds")]
    pub heartbeat: u32,
    /// Token-bucket rate for edge → cloud messages (not keepalives).
    #[serde(rename = "messageQPS", deserialize_with = "de::int32")]
    pub message_qps: i32,
    /// Token-bucket burst.
    #[serde(deserialize_with = "de::int32")]
    pub message_burst: i32,
    /// Path segment of the WebSocket URL and the `project_id` header.
    #[serde(rename = "projectID")]
    pub project_id: String,
    /// CloudHub CA (PEM).
    pub tls_ca_file: PathBuf,
    /// Edge client certificate (PEM).
    pub tls_cert_file: PathBuf,
    /// Edge client key (PEM, `EC PRIVATE KEY`).
    pub tls_private_key_file: PathBuf,
    /// Bootstrap token `<cahash>.<jwt>`; removed from the file after bootstrap.
    pub token: String,
    /// CloudHub cert service, `https://host:10002`.
    pub http_server: String,
    /// Renew the edge certificate at 70–90 % of its lifetime.
    pub rotate_certificates: bool,
    /// WebSocket transport.
    #[serde(deserialize_with = "de::null_as_default")]
    pub websocket: WebSocket,
    /// QUIC transport (accepted for compatibility; not supported).
    #[serde(deserialize_with = "de::null_as_default")]
    pub quic: Quic,
    /// Ours: the name to verify the server certificate against instead of the dialed host
    /// (for NAT or a VIP that is not in CloudCore's SANs). Empty = the dialed host.
    pub tls_server_name: String,
    /// Ours: failover behaviour of the cloud link.
    #[serde(deserialize_with = "de::null_as_default")]
    pub failover: Failover,
}

/// `modules.edgeHub.websocket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WebSocket {
    /// Transport switch; exactly one of websocket and quic is enabled.
    pub enable: bool,
    /// CloudHub `host:port` (the VIP in an HA setup).
    pub server: String,
    /// Seconds for TCP + TLS + WebSocket upgrade.
    #[serde(deserialize_with = "de::seconds")]
    pub handshake_timeout: u32,
    /// Seconds; configured but not applied by KubeEdge (ours: see `failover.pingTimeoutMs`).
    #[serde(deserialize_with = "de::seconds")]
    pub read_deadline: u32,
    /// Seconds allowed for one write.
    #[serde(deserialize_with = "de::seconds")]
    pub write_deadline: u32,
}

/// `modules.edgeHub.quic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Quic {
    /// Transport switch.
    pub enable: bool,
    /// CloudHub QUIC `host:port`.
    pub server: String,
    /// Seconds.
    #[serde(deserialize_with = "de::seconds")]
    pub handshake_timeout: u32,
    /// Seconds.
    #[serde(deserialize_with = "de::seconds")]
    pub read_deadline: u32,
    /// Seconds.
    #[serde(deserialize_with = "de::seconds")]
    pub write_deadline: u32,
}

/// `modules.edgeHub.failover` (ours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Failover {
    /// Further CloudHub endpoints (`host:port`), tried in order after `websocket.server`.
    pub servers: Vec<String>,
    /// WebSocket Ping period in milliseconds.
    #[serde(deserialize_with = "de::millis")]
    pub ping_interval_ms: u64,
    /// Silence (no frame of any kind) after which the session is declared dead, in milliseconds.
    #[serde(deserialize_with = "de::millis")]
    pub ping_timeout_ms: u64,
    /// Time allowed for TCP connect + TLS + upgrade of one attempt, in milliseconds.
    #[serde(deserialize_with = "de::millis")]
    pub connect_timeout_ms: u64,
    /// First reconnect delay after the immediate retry, in milliseconds.
    #[serde(deserialize_with = "de::millis")]
    pub backoff_initial_ms: u64,
    /// Cap of the jittered exponential reconnect delay, in milliseconds.
    #[serde(deserialize_with = "de::millis")]
    pub backoff_max_ms: u64,
    /// A session must stay up this long before the backoff resets, in milliseconds.
    #[serde(deserialize_with = "de::millis")]
    pub stable_after_ms: u64,
    /// While on a less preferred endpoint, probe the preferred ones this often, in milliseconds.
    #[serde(deserialize_with = "de::millis")]
    pub probe_preferred_ms: u64,
}

impl Default for EdgeHub {
    fn default() -> Self {
        Self {
            enable: true,
            heartbeat: 15,
            message_qps: 30,
            message_burst: 60,
            project_id: "e632aba927ea4ac2b575ec1603d56f10".to_owned(),
            tls_ca_file: PathBuf::from("/etc/kubeedge/ca/rootCA.crt"),
            tls_cert_file: PathBuf::from("/etc/kubeedge/certs/server.crt"),
            tls_private_key_file: PathBuf::from("/etc/kubeedge/certs/server.key"),
            token: String::new(),
            http_server: format!("https://{PLACEHOLDER_CLOUD_IP}:10002"),
            rotate_certificates: true,
            websocket: WebSocket::default(),
            quic: Quic::default(),
            tls_server_name: String::new(),
            failover: Failover::default(),
        }
    }
}

impl Default for WebSocket {
    fn default() -> Self {
        Self {
            enable: true,
            server: format!("{PLACEHOLDER_CLOUD_IP}:10000"),
            handshake_timeout: 30,
            read_deadline: 15,
            write_deadline: 15,
        }
    }
}

impl Default for Quic {
    fn default() -> Self {
        Self {
            enable: false,
            server: format!("{PLACEHOLDER_CLOUD_IP}:10001"),
            handshake_timeout: 30,
            read_deadline: 15,
            write_deadline: 15,
        }
    }
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            ping_interval_ms: 2_000,
            ping_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 3_000,
            stable_after_ms: 10_000,
            probe_preferred_ms: 10_000,
        }
    }
}

impl fmt::Debug for EdgeHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = if self.token.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("EdgeHub")
            .field("enable", &self.enable)
            .field("heartbeat", &self.heartbeat)
            .field("message_qps", &self.message_qps)
            .field("message_burst", &self.message_burst)
            .field("project_id", &self.project_id)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_private_key_file", &self.tls_private_key_file)
            .field("token", &token)
            .field("http_server", &self.http_server)
            .field("rotate_certificates", &self.rotate_certificates)
            .field("websocket", &self.websocket)
            .field("quic", &self.quic)
            .field("tls_server_name", &self.tls_server_name)
            .field("failover", &self.failover)
            .finish()
    }
}
