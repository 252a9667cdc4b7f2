//! edgecore.yaml (`edgecore.config.kubeedge.io/v1alpha2`, kind `EdgeCore`): the first crate in the
//! flow. Runtime crates receive their validated section by value and never read files themselves.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod edgehub;
mod types;

pub use edgehub::{EdgeHub, Failover, Quic, WebSocket};
pub use types::{Database, EdgeCoreConfig, Edged, MetaManager, Modules, TailoredKubeletConfig};
