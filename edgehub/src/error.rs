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
