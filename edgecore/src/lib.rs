//! edgecore, the edge agent: cloud → edgehub → **metamanager** → edged-shim.
//!
//! This crate holds metamanager, its SQLite store (KubeEdge's `meta` table plus our
//! `edgecore_` tables), the command line and the wiring of the binary. Only `store` touches
//! SQLite; metamanager reaches the cloud through a [`CloudLink`] (the hub's handle).
// One module, trim.rs, allows unsafe (a madvise call); everything else denies it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod accept;
mod app;
mod cli;
mod error;
mod health;
mod link;
mod meta_client;
mod metamanager;
mod metaserver;
mod metrics;
mod store;
mod trim;

pub use app::{run, shutdown_signal};
pub use cli::{Cli, DEFAULT_CONFIG_PATH, main};
pub use error::{Cause, MetaError, RemoteStatus, StoreError, StoreFailure};
pub use health::{HealthError, HealthServer, ReadyState, follow_link};
pub use link::CloudLink;
pub use metamanager::{MetaHandle, MetaSettings, spawn_metamanager};
pub use metaserver::{Authorization, ChangeKind, Changes, MetaServer, MetaServerError};
pub use metrics::{
    CertMetrics, EdgedMetrics, HubMetrics, MetaMetrics, MeteredLink, Metrics, SessionState,
    StoreMetrics, sample_store_size,
};
pub use store::{PutOutcome, ResourceVersion, Store};
