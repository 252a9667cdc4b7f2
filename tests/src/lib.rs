//! Cloud simulator: CloudHub as `kubeedge-protocol.md` describes it, for the end-to-end,
//! failover and benchmark suites. Not a dependency of anything.
//!
//! * [`Cluster`]: the cluster state in one SQLite file that several replica processes share.
//! * [`CloudSim`]: one CloudHub replica (mutual-TLS WebSocket, node sessions, resync).
//! * [`VipProxy`]: a loopback stand-in for a VIP that moves between replicas.
//! * [`Pki`]: CA, server and edge certificates.
//! * [`CertService`]: CloudHub's certificate service (`/ca.crt`, `/edge.crt`) for bootstrap and
//!   rotation tests.
//! * [`edge`]: runs the real `edgecore` binary and reads its SQLite `meta` table.
//! * [`flood`]: 100,000 downstream messages without pacing, edgecore's memory sampled.
//! * [`chaos`]: VIP moves and `kill -9` of edgecore during write storms, with the invariants
//!   checked after each step (shared by the bench and the CI test).
#![forbid(unsafe_code)]

mod certsvc;
pub mod chaos;
mod cluster;
pub mod edge;
mod events;
pub mod feed;
pub mod flood;
mod messages;
mod pki;
mod proxy;
mod queue;
mod session;
mod sim;
pub mod testedge;
mod wait;

pub use certsvc::{
    CertService, CertServiceOptions, IssuedCert, IssuedVia, make_token, sign_server_cert,
};
pub use cluster::{
    AckedObject, AckedState, ChangeOp, Cluster, DeliveryStats, Object, ResyncItem, kind_name,
};
pub use events::{CounterSnapshot, DisconnectReason, Event, EventStream};
pub use pki::{Pki, PkiOptions, PkiPaths};
pub use proxy::{Mode, VipProxy};
pub use session::WsFrame;
pub use sim::{CloudSim, SimConfig};
pub use wait::eventually;
