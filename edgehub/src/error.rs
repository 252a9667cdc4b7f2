//! Errors of the cloud link.

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

/// Errors of the hub that stop it from starting.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The TLS material named in the config could not be used.
    #[error("tls setup failed: {0}")]
    Tls(String),
}
