//! edgecore.yaml (`edgecore.config.kubeedge.io/v1alpha2`, kind `EdgeCore`): the first crate in the
//! flow. It reads KubeEdge's file with KubeEdge's keys and defaults (plus our extra keys, never
//! renamed ones), warns about unknown keys, and validates; runtime crates receive their
//! validated section by value and never read files themselves.
//!
//! ```
//! let loaded = config::from_yaml("apiVersion: edgecore.config.kubeedge.io/v1alpha2\nkind: EdgeCore\n")?;
//! assert!(loaded.warnings.is_empty());
//! assert_eq!(loaded.config.modules.edge_hub.heartbeat, 15);
//! # Ok::<(), config::ConfigError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod de;
mod defaults;
mod duration;
mod edged;
mod edgehub;
mod error;
mod inert;
mod load;
mod other_modules;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub use defaults::{default_config, minimal_config};
pub use duration::GoDuration;
pub use edged::{Edged, TailoredKubeletConfig};
pub use edgehub::{EdgeHub, Failover, Quic, WebSocket};
pub use error::{ConfigError, ValidationError, ValidationErrors};
pub use inert::{Inert, inert};
pub use load::{Loaded, Warning, from_yaml, load, minimal_yaml, to_yaml};
pub use other_modules::{
    DbTest, DeviceTwin, EdgeStream, EventBus, EventBusTls, ServiceBus, TaskManager,
};
pub use types::{
    API_VERSION, Database, EdgeCoreConfig, Health, KIND, MetaManager, MetaServer, Modules,
};
