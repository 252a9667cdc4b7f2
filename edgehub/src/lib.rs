//! The cloud link of edgecore: cloud → **edgehub** → metamanager → edged-shim.
//!
//! It owns the beehive message model, mutual TLS to CloudHub and the WebSocket session
//! (keepalive, reserved operations, reconnect). Messages from the cloud go to metamanager over a
//! bounded channel; metamanager sends back through a [`HubHandle`]-style handle.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod message;

pub use error::DecodeError;
pub use message::{Header, Message, Resource, Route, now_millis, op};
