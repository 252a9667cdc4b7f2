//! The node side of the edge: cloud → edgehub → metamanager → **edged-shim** → runtime.
//!
//! edged-shim registers the Node, patches its status, and runs the pods metamanager feeds it
//! through a container runtime. It speaks pods, never hub messages: everything towards the
//! cloud goes through the [`MetaClient`] trait that metamanager implements.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
mod cgroup;
mod cri;
mod cri_api;
mod dns;
mod edged;
mod env;
#[cfg(test)]
mod fake_runtime;
mod host;
mod keyring;
mod kubelet_server;
mod logs;
mod meta;
mod node;
mod node_lease;
mod node_status;
mod pod;
mod pod_status;
mod pod_worker;
mod probe;
mod resources;
mod runtime;
mod settings;
mod streaming;
mod termination;
#[cfg(test)]
mod testutil;
mod time;
mod volumes;

pub use cgroup::{CgroupDriver, CgroupLayout};
pub use cri::CriRuntime;
pub use dns::DnsSettings;
pub use edged::{EdgedHandle, spawn};
pub use kubelet_server::{KubeletServer, KubeletServerError};
pub use meta::{MetaClient, MetaError, MetaFuture, POD_EVENT_CAPACITY, PodEvent, VolumeSource};
pub use runtime::{
    ContainerConfig, ContainerInfo, ContainerState, ContainerStatus, DnsConfig, LinuxResources,
    MANAGED_LABEL, Mount, RegistryAuth, Runtime, RuntimeError, RuntimeFuture, RuntimeState,
    SandboxConfig, SandboxInfo, StreamIo, StreamRequest,
};
pub use settings::{EdgedSettings, PressureThresholds};
