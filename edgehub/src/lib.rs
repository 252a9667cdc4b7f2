//! The cloud link of edgecore: cloud → **edgehub** → metamanager → edged-shim.
//!
//! It owns the beehive message model, mutual TLS to CloudHub and the WebSocket session
//! (keepalive, reserved operations, reconnect). Messages from the cloud go to metamanager over a
//! bounded channel; metamanager sends back through a [`HubHandle`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
mod cert_bootstrap;
mod cert_error;
mod cert_files;
mod cert_http;
mod cert_rotation;
mod cert_token;
mod dial;
mod endpoints;
mod error;
mod hub;
mod link;
mod link_state;
mod message;
mod raw_ws;
mod session;
mod stream_tunnel;
#[cfg(test)]
mod testcloud;
mod throttle;
mod tls;

pub use cert_bootstrap::{CertRetry, CertSettings, DEFAULT_TOKEN_FILE, ensure_certificates};
pub use cert_error::CertError;
pub use cert_files::CertInfo;
pub use cert_rotation::{CertUpdates, spawn_rotation};
pub use error::{DecodeError, DialError, DialErrorKind, DialStage, HubError, NameMismatch};
pub use hub::{HubHandle, HubSettings, spawn};
pub use link_state::{DisconnectReason, HubStats, LinkState, ReconnectCounts};
pub use message::{Header, Message, Resource, Route, now_millis, op, sorted_json};
pub use stream_tunnel::{TunnelSettings, spawn_tunnel};
