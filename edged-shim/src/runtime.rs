//! The container runtime as edged-shim uses it: a small trait the CRI client implements.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future returned by [`Runtime`] methods (dyn-compatible async).
pub type RuntimeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RuntimeError>> + Send + 'a>>;

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The endpoint cannot be used at all (bad scheme or path).
    #[error(
        "container runtime endpoint {endpoint:?} is not usable: {why}; set containerRuntimeEndpoint to unix:///path/to/socket"
    )]
    Endpoint {
        /// The configured endpoint.
        endpoint: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The runtime does not answer: socket missing, refused, or connection lost.
    #[error(
        "container runtime at {endpoint} is unavailable; start it or fix containerRuntimeEndpoint"
    )]
    Unavailable {
        /// The configured endpoint.
        endpoint: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The call took longer than the request timeout.
    #[error("runtime call {call} timed out after {timeout:?}")]
    Timeout {
        /// The CRI call.
        call: &'static str,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The object named in the call does not exist.
    #[error("runtime call {call}: {what} not found")]
    NotFound {
        /// The CRI call.
        call: &'static str,
        /// What was looked up.
        what: String,
    },
    /// The runtime refused the call.
    #[error("runtime call {call} failed: {message}")]
    Call {
        /// The CRI call.
        call: &'static str,
        /// The runtime's message.
        message: String,
    },
}

impl RuntimeError {
    /// True when the runtime itself is unreachable (not a problem with one pod).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RuntimeError::Unavailable { .. }
                | RuntimeError::Endpoint { .. }
                | RuntimeError::Timeout { .. }
        )
    }
}

/// What the pod sandbox is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// How many sandboxes this pod had before.
    pub attempt: u32,
    /// `spec.hostNetwork`: share the node's network namespace (no CNI needed).
    pub host_network: bool,
    /// Hostname inside the pod.
    pub hostname: String,
    /// Directory for the pod's container logs.
    pub log_directory: PathBuf,
    /// Cgroup parent, if any.
    pub cgroup_parent: Option<String>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// The pod's `/etc/resolv.conf`; `None` leaves it to the runtime (the node's file).
    pub dns: Option<DnsConfig>,
}

/// Credentials for a registry, from a pod's `imagePullSecrets` (CRI `AuthConfig`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A pod's resolver configuration (CRI `DNSConfig`): what its `/etc/resolv.conf` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// `nameserver` lines.
    pub servers: Vec<String>,
    /// The `search` line.
    pub searches: Vec<String>,
    /// The `options` line.
    pub options: Vec<String>,
}

/// A bind mount into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path inside the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: PathBuf,
    /// Mount read-only.
    pub read_only: bool,
}

/// What a container is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Container name in the pod.
    pub name: String,
    /// Image reference as the pod names it.
    pub image: String,
    /// Entrypoint override (`command`).
    pub command: Vec<String>,
    /// Arguments (`args`).
    pub args: Vec<String>,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// Working directory, empty for the image's.
    pub working_dir: String,
    /// Log file, relative to the sandbox's log directory.
    pub log_path: String,
    /// How many times this container was created before.
    pub attempt: u32,
    /// CPU and memory controls and the OOM score adjustment.
    pub resources: LinuxResources,
}

/// What the runtime applies to a container's cgroup and process (CRI
/// `LinuxContainerResources`), as the kubelet derives it from requests, limits and QoS class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinuxResources {
    /// `cpu.shares` (cgroup v1 units; 2 to 262144).
    pub cpu_shares: i64,
    /// CFS period in microseconds.
    pub cpu_period: i64,
    /// CFS quota in microseconds per period; 0 for none.
    pub cpu_quota: i64,
    /// Memory limit in bytes; 0 for none.
    pub memory_limit_bytes: i64,
    /// `oom_score_adj` of the container's processes.
    pub oom_score_adj: i64,
}

/// Container state as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
    /// Unknown to the runtime.
    Unknown,
}

/// One container's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    /// Runtime's container ID.
    pub id: String,
    /// State.
    pub state: ContainerState,
    /// Start time, nanoseconds since the epoch (0 = not started).
    pub started_at: i64,
    /// Finish time, nanoseconds since the epoch (0 = not finished).
    pub finished_at: i64,
    /// Exit code when exited.
    pub exit_code: i32,
    /// Short reason (`Error`, `Completed`, `OOMKilled`, `StartError`).
    pub reason: String,
    /// Longer message.
    pub message: String,
    /// Image reference as the runtime resolved it.
    pub image: String,
    /// Image ID (digest).
    pub image_ref: String,
}

/// A sandbox as listed by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Runtime's sandbox ID.
    pub id: String,
    /// Pod UID from the sandbox metadata.
    pub uid: String,
    /// Pod namespace from the sandbox metadata.
    pub namespace: String,
    /// Pod name from the sandbox metadata.
    pub name: String,
    /// Whether the sandbox is ready.
    pub ready: bool,
    /// Made by edged-shim ([`MANAGED_LABEL`]); the others were made by another kubelet-style
    /// agent on this runtime (KubeEdge's edged on the same `edgecore.db`): they are adopted
    /// for a pod of ours, never removed as orphans.
    pub managed: bool,
}

/// Which standard streams a streaming call carries, and whether it is a terminal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamIo {
    /// Standard input.
    pub stdin: bool,
    /// Standard output.
    pub stdout: bool,
    /// Standard error (never with `tty`: a terminal merges it into stdout).
    pub stderr: bool,
    /// A terminal.
    pub tty: bool,
}

/// A streaming call (CRI `Exec`, `Attach`, `PortForward`): the runtime answers with a URL on
/// its streaming server, which the client's upgraded connection is then proxied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    /// Run a command in a running container.
    Exec {
        /// Runtime's container ID.
        container_id: String,
        /// The command and its arguments.
        cmd: Vec<String>,
        /// Streams.
        io: StreamIo,
    },
    /// Attach to a running container's process.
    Attach {
        /// Runtime's container ID.
        container_id: String,
        /// Streams.
        io: StreamIo,
    },
    /// Forward ports of a pod's network namespace.
    PortForward {
        /// Runtime's sandbox ID.
        sandbox_id: String,
        /// The ports asked for in the URL (may be empty: SPDY names them per stream).
        ports: Vec<i32>,
    },
}

/// A container as listed by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Runtime's container ID.
    pub id: String,
    /// Container name in the pod (from the metadata).
    pub name: String,
    /// Attempt number from the metadata.
    pub attempt: u32,
    /// State.
    pub state: ContainerState,
}

/// Label edged-shim puts on its sandboxes; only those are adopted or garbage-collected.
pub const MANAGED_LABEL: &str = "edgecore.kubeedge.io/managed";

/// What the pod worker needs from a container runtime. Every call may be slow; callers
/// bound each with a timeout.
pub trait Runtime: Send + Sync + 'static {
    /// `<runtime name>://<version>`, e.g. `containerd://1.6.20`.
    fn version(&self) -> RuntimeFuture<'_, String>;
    /// The image's ID when present locally, `None` when it must be pulled.
    fn image_status<'a>(&'a self, image: &'a str) -> RuntimeFuture<'a, Option<String>>;
    /// Pull an image, with registry credentials when given; returns its reference.
    fn pull_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a RegistryAuth>,
    ) -> RuntimeFuture<'a, String>;
    /// Create and start a pod sandbox; returns its ID.
    fn run_sandbox<'a>(&'a self, config: &'a SandboxConfig) -> RuntimeFuture<'a, String>;
    /// Stop a sandbox and everything in it.
    fn stop_sandbox<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()>;
    /// Remove a stopped sandbox.
    fn remove_sandbox<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()>;
    /// Sandboxes edged-shim created (labelled [`MANAGED_LABEL`]) that exist in the runtime.
    fn list_sandboxes(&self) -> RuntimeFuture<'_, Vec<SandboxInfo>>;
    /// The pod IP the runtime's network setup gave sandbox `id`; `None` for a host-network
    /// sandbox or when it has none.
    fn sandbox_ip<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<String>>;
    /// Containers of one sandbox.
    fn list_containers<'a>(&'a self, sandbox_id: &'a str) -> RuntimeFuture<'a, Vec<ContainerInfo>>;
    /// Create a container in a sandbox; returns its ID.
    fn create_container<'a>(
        &'a self,
        sandbox_id: &'a str,
        sandbox: &'a SandboxConfig,
        config: &'a ContainerConfig,
    ) -> RuntimeFuture<'a, String>;
    /// Start a created container.
    fn start_container<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()>;
    /// Stop a container, killing it after `grace`.
    fn stop_container<'a>(&'a self, id: &'a str, grace: Duration) -> RuntimeFuture<'a, ()>;
    /// Remove a container.
    fn remove_container<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()>;
    /// A container's status.
    fn container_status<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ContainerStatus>;
    /// Runs `cmd` in a running container and waits for it, at most `timeout`; returns its
    /// exit code and output (stdout, then stderr).
    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        cmd: &'a [String],
        timeout: Duration,
    ) -> RuntimeFuture<'a, (i32, String)>;
    /// The runtime's streaming URL for an exec, attach or port-forward.
    fn stream_url<'a>(&'a self, request: &'a StreamRequest) -> RuntimeFuture<'a, String>;
}

/// The runtime's health as the pod worker last saw it; the node's Ready condition follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeState {
    /// Not probed yet.
    Unknown,
    /// Answering; its version string.
    Up {
        /// `containerd://1.6.20`.
        version: String,
    },
    /// Not answering, with the reason.
    Down {
        /// The error text.
        reason: String,
    },
}

impl RuntimeState {
    /// `Ok` when the runtime answers, else the reason it does not.
    pub fn ready(&self) -> Result<(), &str> {
        match self {
            RuntimeState::Up { .. } => Ok(()),
            RuntimeState::Unknown => Err("runtime not probed yet"),
            RuntimeState::Down { reason } => Err(reason),
        }
    }

    /// The version string, empty unless up.
    pub fn version(&self) -> &str {
        match self {
            RuntimeState::Up { version } => version,
            _ => "",
        }
    }
}
