//! [`Runtime`] over CRI v1 gRPC on a unix socket (`containerRuntimeEndpoint`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::cri_api as api;
use crate::cri_api::image_service_client::ImageServiceClient;
use crate::cri_api::runtime_service_client::RuntimeServiceClient;
use crate::runtime::{
    ContainerConfig, ContainerInfo, ContainerState, ContainerStatus, MANAGED_LABEL, RegistryAuth,
    Runtime, RuntimeError, RuntimeFuture, SandboxConfig, SandboxInfo, StreamRequest,
};

/// How long to wait for the socket to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A CRI client for containerd, CRI-O or any CRI v1 runtime on a unix socket.
#[derive(Debug, Clone)]
pub struct CriRuntime {
    endpoint: String,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeout: Duration,
}

/// A channel that dials the unix socket of `endpoint` on first use.
fn lazy_channel(endpoint: &str, request_timeout: Duration) -> Result<Channel, RuntimeError> {
    let path = socket_path(endpoint)?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(RuntimeError::Endpoint {
            endpoint: endpoint.to_owned(),
            why: "the CRI client must be created inside a Tokio runtime",
        });
    }
    // The URI is required by tonic but unused: the connector dials the socket.
    Ok(Endpoint::from_static("http://[::]:50051")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(request_timeout)
        .connect_with_connector_lazy(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        })))
}

/// The socket path of `unix:///path` (or a bare absolute path).
fn socket_path(endpoint: &str) -> Result<PathBuf, RuntimeError> {
    let bad = |why| RuntimeError::Endpoint {
        endpoint: endpoint.to_owned(),
        why,
    };
    let path = match endpoint.strip_prefix("unix://") {
        Some(p) => p,
        None if endpoint.contains("://") => {
            return Err(bad("only unix:// endpoints are supported"));
        }
        None => endpoint,
    };
    if !path.starts_with('/') {
        return Err(bad("the socket path must be absolute"));
    }
    Ok(PathBuf::from(path))
}

impl CriRuntime {
    /// A client for `endpoint` (`unix:///run/containerd/containerd.sock`). Connects lazily,
    /// so a runtime that is not up yet is not an error here; calls fail with
    /// [`RuntimeError::Unavailable`] until it is. Every call is bounded by `request_timeout`.
    /// Must be called inside a Tokio runtime.
    pub fn new(endpoint: &str, request_timeout: Duration) -> Result<Self, RuntimeError> {
        let channel = lazy_channel(endpoint, request_timeout)?;
        Ok(Self {
            endpoint: endpoint.to_owned(),
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            timeout: request_timeout,
        })
    }

    /// Image calls (status, pull) go to `endpoint` instead (`imageServiceEndpoint`, for a
    /// runtime that serves images on another socket); an empty one keeps the runtime's.
    pub fn with_image_endpoint(mut self, endpoint: &str) -> Result<Self, RuntimeError> {
        if !endpoint.is_empty() && endpoint != self.endpoint {
            self.images = ImageServiceClient::new(lazy_channel(endpoint, self.timeout)?);
        }
        Ok(self)
    }

    fn error(&self, call: &'static str, status: tonic::Status) -> RuntimeError {
        use tonic::Code;
        match status.code() {
            Code::Unavailable => RuntimeError::Unavailable {
                endpoint: self.endpoint.clone(),
                source: Box::new(status),
            },
            // Transport failures (socket missing, connection refused) surface as Unknown
            // with a source; the runtime's own Unknown answers have none.
            Code::Unknown if std::error::Error::source(&status).is_some() => {
                RuntimeError::Unavailable {
                    endpoint: self.endpoint.clone(),
                    source: Box::new(status),
                }
            }
            Code::DeadlineExceeded | Code::Cancelled => RuntimeError::Timeout {
                call,
                timeout: self.timeout,
            },
            Code::NotFound => RuntimeError::NotFound {
                call,
                what: status.message().to_owned(),
            },
            _ => RuntimeError::Call {
                call,
                message: status.message().to_owned(),
            },
        }
    }

    async fn bounded<T>(
        &self,
        call: &'static str,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RuntimeError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(self.error(call, status)),
            Err(_) => Err(RuntimeError::Timeout {
                call,
                timeout: self.timeout,
            }),
        }
    }
}

fn namespaces(host_network: bool) -> api::NamespaceOption {
    api::NamespaceOption {
        network: if host_network {
            api::NamespaceMode::Node as i32
        } else {
            api::NamespaceMode::Pod as i32
        },
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn pod_labels(c: &SandboxConfig) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = c.labels.clone().into_iter().collect();
    labels.insert("io.kubernetes.pod.name".to_owned(), c.name.clone());
    labels.insert(
        "io.kubernetes.pod.namespace".to_owned(),
        c.namespace.clone(),
    );
    labels.insert("io.kubernetes.pod.uid".to_owned(), c.uid.clone());
    labels.insert(MANAGED_LABEL.to_owned(), "true".to_owned());
    labels
}

pub(crate) fn sandbox_config(c: &SandboxConfig) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: c.name.clone(),
            uid: c.uid.clone(),
            namespace: c.namespace.clone(),
            attempt: c.attempt,
        }),
        hostname: c.hostname.clone(),
        log_directory: c.log_directory.to_string_lossy().into_owned(),
        dns_config: c.dns.as_ref().map(|d| api::DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        labels: pod_labels(c),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: c.cgroup_parent.clone().unwrap_or_default(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(c.host_network)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn container_config(s: &SandboxConfig, c: &ContainerConfig) -> api::ContainerConfig {
    let mut labels = HashMap::new();
    labels.insert("io.kubernetes.pod.name".to_owned(), s.name.clone());
    labels.insert(
        "io.kubernetes.pod.namespace".to_owned(),
        s.namespace.clone(),
    );
    labels.insert("io.kubernetes.pod.uid".to_owned(), s.uid.clone());
    labels.insert("io.kubernetes.container.name".to_owned(), c.name.clone());
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: c.name.clone(),
            attempt: c.attempt,
        }),
        image: Some(api::ImageSpec {
            image: c.image.clone(),
            ..Default::default()
        }),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs: c
            .env
            .iter()
            .map(|(key, value)| api::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts: c
            .mounts
            .iter()
            .map(|m| api::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.to_string_lossy().into_owned(),
                readonly: m.read_only,
                ..Default::default()
            })
            .collect(),
        log_path: c.log_path.clone(),
        labels,
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_period: c.resources.cpu_period,
                cpu_quota: c.resources.cpu_quota,
                cpu_shares: c.resources.cpu_shares,
                memory_limit_in_bytes: c.resources.memory_limit_bytes,
                oom_score_adj: c.resources.oom_score_adj,
                ..Default::default()
            }),
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(s.host_network)),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn state(s: i32) -> ContainerState {
    match api::ContainerState::try_from(s) {
        Ok(api::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(api::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(api::ContainerState::ContainerExited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

impl Runtime for CriRuntime {
    fn version(&self) -> RuntimeFuture<'_, String> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            let v = self
                .bounded(
                    "Version",
                    client.version(api::VersionRequest {
                        version: "v1".to_owned(),
                    }),
                )
                .await?;
            Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
        })
    }

    fn image_status<'a>(&'a self, image: &'a str) -> RuntimeFuture<'a, Option<String>> {
        Box::pin(async move {
            let mut client = self.images.clone();
            let r = self
                .bounded(
                    "ImageStatus",
                    client.image_status(api::ImageStatusRequest {
                        image: Some(api::ImageSpec {
                            image: image.to_owned(),
                            ..Default::default()
                        }),
                        verbose: false,
                    }),
                )
                .await?;
            Ok(r.image.map(|i| i.id))
        })
    }

    fn pull_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a RegistryAuth>,
    ) -> RuntimeFuture<'a, String> {
        Box::pin(async move {
            let mut client = self.images.clone();
            let r = self
                .bounded(
                    "PullImage",
                    client.pull_image(api::PullImageRequest {
                        image: Some(api::ImageSpec {
                            image: image.to_owned(),
                            ..Default::default()
                        }),
                        auth: auth.map(|a| api::AuthConfig {
                            username: a.username.clone(),
                            password: a.password.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                )
                .await?;
            Ok(r.image_ref)
        })
    }

    fn run_sandbox<'a>(&'a self, config: &'a SandboxConfig) -> RuntimeFuture<'a, String> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            let r = self
                .bounded(
                    "RunPodSandbox",
                    client.run_pod_sandbox(api::RunPodSandboxRequest {
                        config: Some(sandbox_config(config)),
                        runtime_handler: String::new(),
                    }),
                )
                .await?;
            Ok(r.pod_sandbox_id)
        })
    }

    fn stop_sandbox<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            self.bounded(
                "StopPodSandbox",
                client.stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: id.to_owned(),
                }),
            )
            .await?;
            Ok(())
        })
    }

    fn remove_sandbox<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            self.bounded(
                "RemovePodSandbox",
                client.remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: id.to_owned(),
                }),
            )
            .await?;
            Ok(())
        })
    }

    fn sandbox_ip<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<String>> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            let r = self
                .bounded(
                    "PodSandboxStatus",
                    client.pod_sandbox_status(api::PodSandboxStatusRequest {
                        pod_sandbox_id: id.to_owned(),
                        verbose: false,
                    }),
                )
                .await?;
            Ok(r.status
                .and_then(|s| s.network)
                .map(|n| n.ip)
                .filter(|ip| !ip.is_empty()))
        })
    }

    fn list_sandboxes(&self) -> RuntimeFuture<'_, Vec<SandboxInfo>> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            let r = self
                .bounded(
                    "ListPodSandbox",
                    // Every pod sandbox: ours, and a kubelet's (KubeEdge's edged) for adoption.
                    client.list_pod_sandbox(api::ListPodSandboxRequest { filter: None }),
                )
                .await?;
            Ok(r.items
                .into_iter()
                .filter_map(|s| {
                    let meta = s.metadata.filter(|m| !m.uid.is_empty())?;
                    Some(SandboxInfo {
                        uid: meta.uid,
                        namespace: meta.namespace,
                        name: meta.name,
                        ready: s.state == api::PodSandboxState::SandboxReady as i32,
                        managed: s.labels.get(MANAGED_LABEL).is_some_and(|v| v == "true"),
                        id: s.id,
                    })
                })
                .collect())
        })
    }

    fn list_containers<'a>(&'a self, sandbox_id: &'a str) -> RuntimeFuture<'a, Vec<ContainerInfo>> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            let r = self
                .bounded(
                    "ListContainers",
                    client.list_containers(api::ListContainersRequest {
                        filter: Some(api::ContainerFilter {
                            pod_sandbox_id: sandbox_id.to_owned(),
                            ..Default::default()
                        }),
                    }),
                )
                .await?;
            Ok(r.containers
                .into_iter()
                .map(|c| {
                    let (name, attempt) =
                        c.metadata.map(|m| (m.name, m.attempt)).unwrap_or_default();
                    ContainerInfo {
                        id: c.id,
                        name,
                        attempt,
                        state: state(c.state),
                    }
                })
                .collect())
        })
    }

    fn create_container<'a>(
        &'a self,
        sandbox_id: &'a str,
        sandbox: &'a SandboxConfig,
        config: &'a ContainerConfig,
    ) -> RuntimeFuture<'a, String> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            let r = self
                .bounded(
                    "CreateContainer",
                    client.create_container(api::CreateContainerRequest {
                        pod_sandbox_id: sandbox_id.to_owned(),
                        config: Some(container_config(sandbox, config)),
                        sandbox_config: Some(sandbox_config(sandbox)),
                    }),
                )
                .await?;
            Ok(r.container_id)
        })
    }

    fn start_container<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            self.bounded(
                "StartContainer",
                client.start_container(api::StartContainerRequest {
                    container_id: id.to_owned(),
                }),
            )
            .await?;
            Ok(())
        })
    }

    fn stop_container<'a>(&'a self, id: &'a str, grace: Duration) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            let secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
            let call = client.stop_container(api::StopContainerRequest {
                container_id: id.to_owned(),
                timeout: secs,
            });
            // The runtime itself waits `grace` before killing.
            match tokio::time::timeout(self.timeout.saturating_add(grace), call).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(self.error("StopContainer", status)),
                Err(_) => Err(RuntimeError::Timeout {
                    call: "StopContainer",
                    timeout: self.timeout.saturating_add(grace),
                }),
            }
        })
    }

    fn remove_container<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            self.bounded(
                "RemoveContainer",
                client.remove_container(api::RemoveContainerRequest {
                    container_id: id.to_owned(),
                }),
            )
            .await?;
            Ok(())
        })
    }

    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        cmd: &'a [String],
        timeout: Duration,
    ) -> RuntimeFuture<'a, (i32, String)> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            let r = self
                .bounded(
                    "ExecSync",
                    client.exec_sync(api::ExecSyncRequest {
                        container_id: id.to_owned(),
                        cmd: cmd.to_vec(),
                        timeout: i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX),
                    }),
                )
                .await?;
            let mut output = String::from_utf8_lossy(&r.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&r.stderr));
            Ok((r.exit_code, output))
        })
    }

    fn stream_url<'a>(&'a self, request: &'a StreamRequest) -> RuntimeFuture<'a, String> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            let url = match request {
                StreamRequest::Exec {
                    container_id,
                    cmd,
                    io,
                } => {
                    self.bounded(
                        "Exec",
                        client.exec(api::ExecRequest {
                            container_id: container_id.clone(),
                            cmd: cmd.clone(),
                            tty: io.tty,
                            stdin: io.stdin,
                            stdout: io.stdout,
                            stderr: io.stderr,
                        }),
                    )
                    .await?
                    .url
                }
                StreamRequest::Attach { container_id, io } => {
                    self.bounded(
                        "Attach",
                        client.attach(api::AttachRequest {
                            container_id: container_id.clone(),
                            stdin: io.stdin,
                            tty: io.tty,
                            stdout: io.stdout,
                            stderr: io.stderr,
                        }),
                    )
                    .await?
                    .url
                }
                StreamRequest::PortForward { sandbox_id, ports } => {
                    self.bounded(
                        "PortForward",
                        client.port_forward(api::PortForwardRequest {
                            pod_sandbox_id: sandbox_id.clone(),
                            port: ports.clone(),
                        }),
                    )
                    .await?
                    .url
                }
            };
            Ok(url)
        })
    }

    fn container_status<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ContainerStatus> {
        Box::pin(async move {
            let mut client = self.runtime.clone();
            let r = self
                .bounded(
                    "ContainerStatus",
                    client.container_status(api::ContainerStatusRequest {
                        container_id: id.to_owned(),
                        verbose: false,
                    }),
                )
                .await?;
            let Some(s) = r.status else {
                return Err(RuntimeError::NotFound {
                    call: "ContainerStatus",
                    what: format!("status of container {id}"),
                });
            };
            Ok(ContainerStatus {
                id: s.id,
                state: state(s.state),
                started_at: s.started_at,
                finished_at: s.finished_at,
                exit_code: s.exit_code,
                reason: s.reason,
                message: s.message,
                image: s.image.map(|i| i.image).unwrap_or_default(),
                image_ref: s.image_ref,
            })
        })
    }
}

#[cfg(test)]
mod e2e;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            socket_path("/run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert!(matches!(
            socket_path("tcp://127.0.0.1:1234"),
            Err(RuntimeError::Endpoint { .. })
        ));
        assert!(matches!(
            socket_path("relative.sock"),
            Err(RuntimeError::Endpoint { .. })
        ));
    }

    #[test]
    fn new_outside_a_runtime_is_an_error_not_a_panic() {
        let err = CriRuntime::new("unix:///nonexistent.sock", Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
    }

    #[tokio::test]
    async fn missing_socket_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("unix://{}/none.sock", dir.path().display());
        let rt = CriRuntime::new(&endpoint, Duration::from_secs(5)).unwrap();
        let err = rt.version().await.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert!(err.to_string().contains(&endpoint), "{err}");
    }

    #[test]
    fn host_network_sandbox_uses_the_node_namespace() {
        let s = SandboxConfig {
            name: "p".to_owned(),
            namespace: "ns".to_owned(),
            uid: "u".to_owned(),
            attempt: 0,
            host_network: true,
            hostname: "p".to_owned(),
            log_directory: PathBuf::from("/var/log/pods/ns_p_u"),
            cgroup_parent: None,
            labels: BTreeMap::new(),
            dns: Some(crate::runtime::DnsConfig {
                servers: vec!["10.96.0.10".to_owned()],
                searches: vec!["ns.svc.cluster.local".to_owned()],
                options: vec!["ndots:5".to_owned()],
            }),
        };
        let cfg = sandbox_config(&s);
        let dns = cfg.dns_config.clone().unwrap();
        assert_eq!(dns.servers, ["10.96.0.10"]);
        assert_eq!(dns.searches, ["ns.svc.cluster.local"]);
        assert_eq!(dns.options, ["ndots:5"]);
        let ns = cfg
            .linux
            .and_then(|l| l.security_context)
            .and_then(|c| c.namespace_options)
            .unwrap();
        assert_eq!(ns.network, api::NamespaceMode::Node as i32);
        assert_eq!(cfg.labels["io.kubernetes.pod.uid"], "u");
        let c = container_config(
            &s,
            &ContainerConfig {
                name: "c".to_owned(),
                image: "img".to_owned(),
                command: vec![],
                args: vec![],
                env: vec![("A".to_owned(), "1".to_owned())],
                mounts: vec![],
                working_dir: String::new(),
                log_path: "c/0.log".to_owned(),
                attempt: 0,
                resources: crate::runtime::LinuxResources {
                    cpu_shares: 256,
                    cpu_period: 100_000,
                    cpu_quota: 50_000,
                    memory_limit_bytes: 64 << 20,
                    oom_score_adj: 936,
                },
            },
        );
        assert_eq!(c.envs[0].key, "A");
        let r = c.linux.clone().and_then(|l| l.resources).unwrap();
        assert_eq!(
            (
                r.cpu_shares,
                r.cpu_period,
                r.cpu_quota,
                r.memory_limit_in_bytes,
                r.oom_score_adj
            ),
            (256, 100_000, 50_000, 64 << 20, 936)
        );
        assert_eq!(
            c.linux
                .and_then(|l| l.security_context)
                .and_then(|s| s.namespace_options)
                .unwrap()
                .network,
            api::NamespaceMode::Node as i32
        );
    }
}
