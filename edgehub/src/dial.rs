//! One connection attempt: TCP, mutual TLS, then the WebSocket upgrade CloudHub expects
//! (`wss://{server}/{projectID}/{node}/events` with `node_id`, `project_id`, `ConnectionUse: msg`).

use std::sync::Arc;
use std::time::Duration;

use rustls::{AlertDescription, ClientConfig};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::endpoints::Endpoint;
use crate::error::{DialError, DialStage, HubError, NameMismatch};
use crate::tls::ClientTls;

/// The WebSocket to CloudHub.
pub(crate) type CloudStream = WebSocketStream<TlsStream<TcpStream>>;

/// Largest message (and frame) accepted from the cloud: 32 MiB, CloudHub's own cap since
/// KubeEdge bounded its WebSocket reads (a larger message is refused before it is buffered:
/// tungstenite checks the frame header's length first).
pub(crate) const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// Everything needed to dial one endpoint, prepared (and validated) at start.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    endpoint: Endpoint,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    request: Request,
    limit: Duration,
}

impl Target {
    /// Builds the TLS config, server name and upgrade request for `endpoint`.
    pub(crate) fn new(
        endpoint: Endpoint,
        tls: &ClientTls,
        node: &str,
        hub: &config::EdgeHub,
    ) -> Result<Self, HubError> {
        let bad_url = || HubError::BadUrl {
            node: node.to_owned(),
            project: hub.project_id.clone(),
        };
        let url = format!("wss://{endpoint}/{}/{node}/events", hub.project_id);
        let mut request = url.into_client_request().map_err(|_| bad_url())?;
        let headers = request.headers_mut();
        headers.insert(
            "node_id",
            HeaderValue::from_str(node).map_err(|_| bad_url())?,
        );
        headers.insert(
            "project_id",
            HeaderValue::from_str(&hub.project_id).map_err(|_| bad_url())?,
        );
        headers.insert("connectionuse", HeaderValue::from_static("msg"));
        Ok(Self {
            tls: tls.config_for(&endpoint)?,
            server_name: tls.server_name(&endpoint)?,
            endpoint,
            request,
            limit: attempt_limit(hub),
        })
    }

    /// The EdgeStream tunnel to cloudStream: `wss://{endpoint}/v1/kubeedge/connect` with the
    /// headers that name the session (`docs/edgestream.md`).
    pub(crate) fn tunnel(
        endpoint: Endpoint,
        tls: &ClientTls,
        node: &str,
        node_ip: &str,
        limit: Duration,
    ) -> Result<Self, HubError> {
        let bad_url = || HubError::BadUrl {
            node: node.to_owned(),
            project: String::new(),
        };
        let mut request = format!("wss://{endpoint}/v1/kubeedge/connect")
            .into_client_request()
            .map_err(|_| bad_url())?;
        let headers = request.headers_mut();
        headers.insert(
            "SessionHostNameOverride",
            HeaderValue::from_str(node).map_err(|_| bad_url())?,
        );
        headers.insert(
            "SessionInternalIP",
            HeaderValue::from_str(node_ip).map_err(|_| bad_url())?,
        );
        Ok(Self {
            tls: tls.config_for(&endpoint)?,
            server_name: tls.server_name(&endpoint)?,
            endpoint,
            request,
            limit,
        })
    }

    /// The endpoint this target dials.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// TCP + TLS + upgrade, bounded by the attempt limit.
    pub(crate) async fn dial(&self) -> Result<CloudStream, DialError> {
        let deadline = Instant::now() + self.limit;
        let tls = self.tls_connect(deadline).await?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let upgrade =
            tokio_tungstenite::client_async_with_config(self.request.clone(), tls, Some(config));
        let (ws, _response) = timeout_at(deadline, upgrade)
            .await
            .map_err(|_| self.timeout(DialStage::Upgrade))?
            .map_err(|e| self.upgrade_error(e))?;
        Ok(ws)
    }

    /// TCP + TLS, and the upgrade request to send on it: for a peer whose WebSocket frames
    /// the caller reads itself (the EdgeStream tunnel).
    pub(crate) async fn dial_tls(&self) -> Result<(TlsStream<TcpStream>, &Request), DialError> {
        let tls = self.tls_connect(Instant::now() + self.limit).await?;
        Ok((tls, &self.request))
    }

    /// TCP + TLS only: enough to know a preferred endpoint answers again.
    pub(crate) async fn probe(&self) -> Result<(), DialError> {
        self.tls_connect(Instant::now() + self.limit)
            .await
            .map(drop)
    }

    /// True when a TCP connect succeeds within `limit` (the connection is closed at once).
    pub(crate) async fn accepts_tcp(&self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.tcp_connect()).await,
            Ok(Ok(_))
        )
    }

    fn timeout(&self, stage: DialStage) -> DialError {
        DialError::Timeout {
            endpoint: self.endpoint.to_string(),
            after: self.limit,
            stage,
        }
    }

    async fn tcp_connect(&self) -> Result<TcpStream, DialError> {
        let connect_error = |source| DialError::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        };
        let tcp = TcpStream::connect((self.endpoint.host(), self.endpoint.port()))
            .await
            .map_err(connect_error)?;
        tcp.set_nodelay(true).map_err(connect_error)?;
        Ok(tcp)
    }

    async fn tls_connect(&self, deadline: Instant) -> Result<TlsStream<TcpStream>, DialError> {
        let tcp = timeout_at(deadline, self.tcp_connect())
            .await
            .map_err(|_| self.timeout(DialStage::TcpConnect))??;
        let handshake = TlsConnector::from(self.tls.clone()).connect(self.server_name.clone(), tcp);
        timeout_at(deadline, handshake)
            .await
            .map_err(|_| self.timeout(DialStage::TlsHandshake))?
            .map_err(|e| self.tls_error(e))
    }

    fn tls_error(&self, e: std::io::Error) -> DialError {
        let endpoint = self.endpoint.to_string();
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return DialError::Tls {
                endpoint,
                source: e,
            };
        };
        match tls {
            rustls::Error::Other(other) => match other.0.downcast_ref::<NameMismatch>() {
                Some(mismatch) => DialError::NameMismatch(mismatch.clone()),
                None => DialError::Tls {
                    endpoint,
                    source: e,
                },
            },
            rustls::Error::InvalidCertificate(_) => DialError::ServerCert {
                endpoint,
                source: tls.clone(),
            },
            rustls::Error::AlertReceived(alert) if rejects_client_cert(*alert) => {
                DialError::ClientCertRejected {
                    endpoint,
                    alert: format!("{alert:?}"),
                }
            }
            _ => DialError::Tls {
                endpoint,
                source: e,
            },
        }
    }

    fn upgrade_error(&self, e: tokio_tungstenite::tungstenite::Error) -> DialError {
        // With TLS 1.3 the server judges the client certificate after the client finished its
        // handshake, so a rejection arrives while the upgrade is read. At that point a
        // decrypt_error can only be about our certificate too (a CA with the same name as the
        // server's, as every KubeEdge CA is named, but another key).
        if let tokio_tungstenite::tungstenite::Error::Io(io) = &e
            && let Some(rustls::Error::AlertReceived(alert)) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            && (rejects_client_cert(*alert) || *alert == AlertDescription::DecryptError)
        {
            return DialError::ClientCertRejected {
                endpoint: self.endpoint.to_string(),
                alert: format!("{alert:?}"),
            };
        }
        DialError::Upgrade {
            endpoint: self.endpoint.to_string(),
            source: Box::new(e),
        }
    }
}

/// `failover.connectTimeoutMs`, never more than `websocket.handshakeTimeout`.
fn attempt_limit(hub: &config::EdgeHub) -> Duration {
    let connect = Duration::from_millis(hub.failover.connect_timeout_ms.max(1));
    match hub.websocket.handshake_timeout {
        0 => connect,
        secs => connect.min(Duration::from_secs(u64::from(secs))),
    }
}

fn rejects_client_cert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
    )
}

#[cfg(test)]
mod tests;
