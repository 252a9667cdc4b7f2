//! A scripted edge for protocol tests of the simulator itself: mutual TLS, the viaduct headers,
//! and raw access to the messages. Not an edgecore; it acks only when told to.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use edgehub::Message;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::pki::Pki;

type Stream = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A connected scripted edge.
#[derive(Debug)]
pub struct TestEdge {
    ws: Stream,
}

impl TestEdge {
    /// Connects to `addr` as `node`; `connection_use` is the `ConnectionUse` header value
    /// (`Some("msg")` for a normal edge, `None` to omit it).
    pub async fn connect(
        addr: std::net::SocketAddr,
        pki: &Pki,
        node: &str,
        connection_use: Option<&str>,
    ) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pki.ca_crt.as_bytes())?)?;
        let chain = CertificateDer::pem_slice_iter(pki.edge_crt.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(pki.edge_key.as_bytes())?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .context("tls handshake")?;
        let url = format!("wss://{addr}/e632aba927ea4ac2b575ec1603d56f10/{node}/events");
        let mut req = url.into_client_request()?;
        req.headers_mut().insert("node_id", node.parse()?);
        req.headers_mut()
            .insert("project_id", "e632aba927ea4ac2b575ec1603d56f10".parse()?);
        if let Some(u) = connection_use {
            req.headers_mut().insert("ConnectionUse", u.parse()?);
        }
        let (ws, _) = tokio_tungstenite::client_async(req, tls)
            .await
            .context("websocket upgrade")?;
        Ok(Self { ws })
    }

    /// Sends a message.
    pub async fn send(&mut self, msg: &Message) -> Result<()> {
        self.ws.send(WsMessage::Text(msg.to_wire().into())).await?;
        Ok(())
    }

    /// Sends a keepalive.
    pub async fn keepalive(&mut self) -> Result<()> {
        self.send(&Message::keepalive()).await
    }

    /// The next beehive message within `within`, or an error naming `what`. Undecodable frames
    /// are an error too.
    pub async fn recv(&mut self, within: Duration, what: &str) -> Result<Message> {
        loop {
            let frame = match tokio::time::timeout(within, self.ws.next()).await {
                Err(_) => bail!("timed out after {within:?} awaiting {what}"),
                Ok(None) => bail!("connection closed while awaiting {what}"),
                Ok(Some(Err(e))) => bail!("connection failed while awaiting {what}: {e}"),
                Ok(Some(Ok(f))) => f,
            };
            let bytes = match frame {
                WsMessage::Text(t) => t.as_bytes().to_vec(),
                WsMessage::Binary(b) => b.to_vec(),
                WsMessage::Close(_) => bail!("close frame while awaiting {what}"),
                _ => continue,
            };
            return Message::from_wire(&bytes).with_context(|| format!("decoding {what}"));
        }
    }

    /// Waits until the cloud closes the connection; errors after `within` naming `what`.
    pub async fn closed(&mut self, within: Duration, what: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => bail!("timed out after {within:?} awaiting {what}"),
                Ok(None | Some(Err(_)) | Some(Ok(WsMessage::Close(_)))) => return Ok(()),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

impl TestEdge {
    /// Sends a text frame as is.
    pub async fn send_raw_text(&mut self, text: &str) -> Result<()> {
        self.ws
            .send(WsMessage::Text(text.to_owned().into()))
            .await?;
        Ok(())
    }
}
