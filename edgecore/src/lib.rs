//! edgecore, the edge agent: cloud → edgehub → **metamanager** → edged-shim.
//!
//! This crate holds metamanager, its SQLite store (KubeEdge's `meta` table plus our
//! `edgecore_` tables), the command line and the wiring of the binary. Only `store` touches
//! SQLite; metamanager reaches the cloud through a [`CloudLink`] (the hub's handle).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app;
mod cli;
mod error;
mod link;
mod metamanager;
mod sorted_json;
mod store;

pub use app::{run, shutdown_signal};
pub use cli::{Cli, DEFAULT_CONFIG_PATH, main};
pub use error::{Cause, MetaError, StoreError};
pub use link::CloudLink;
pub use metamanager::{MetaHandle, MetaSettings, spawn_metamanager};
pub use store::{PutOutcome, Store};
