//! An in-memory [`Runtime`] for unit tests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::{
    ContainerConfig, ContainerInfo, ContainerState, ContainerStatus, RegistryAuth, Runtime,
    RuntimeError, RuntimeFuture, SandboxConfig, SandboxInfo, StreamRequest,
};

#[derive(Debug, Clone)]
pub(crate) struct FakeContainer {
    pub(crate) sandbox: String,
    pub(crate) config: ContainerConfig,
    pub(crate) state: ContainerState,
    pub(crate) exit_code: i32,
}

#[derive(Debug, Default)]
pub(crate) struct FakeState {
    pub(crate) down: bool,
    /// RunPodSandbox fails this many more times.
    pub(crate) failing_sandboxes: u32,
    pub(crate) images: HashSet<String>,
    pub(crate) pullable: HashSet<String>,
    /// Images whose pull never ends.
    pub(crate) hanging: HashSet<String>,
    /// Container names whose process ignores SIGTERM: StopContainer takes the whole grace
    /// period, as with a real runtime, before the kill.
    pub(crate) ignore_sigterm: HashSet<String>,
    /// Exit codes of ExecSync by container name (0 when not listed).
    pub(crate) exec_codes: HashMap<String, i32>,
    /// Images that pull only with this user's credentials.
    pub(crate) private: HashMap<String, String>,
    /// The user of every PullImage's credentials (`None`: anonymous), in call order.
    pub(crate) pull_auths: Vec<Option<String>>,
    pub(crate) sandboxes: HashMap<String, SandboxConfig>,
    pub(crate) containers: HashMap<String, FakeContainer>,
    pub(crate) calls: Vec<String>,
    /// The grace period of every StopContainer, in call order.
    pub(crate) stop_graces: Vec<Duration>,
    /// Sandboxes another agent made (listed without edged-shim's label).
    pub(crate) foreign: HashSet<String>,
    /// Base of the streaming URLs handed out (a test's upstream server); `None` refuses.
    pub(crate) stream_base: Option<String>,
    /// Every streaming request, in call order.
    pub(crate) stream_requests: Vec<StreamRequest>,
    next_id: u64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct FakeRuntime(pub(crate) Arc<Mutex<FakeState>>);

impl FakeRuntime {
    pub(crate) fn with_images(images: &[&str]) -> Self {
        let rt = Self::default();
        rt.state().images = images.iter().map(|s| (*s).to_owned()).collect();
        rt
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    /// Makes the running container `name` exit with `code`.
    pub(crate) fn exit(&self, name: &str, code: i32) {
        let mut s = self.state();
        for c in s.containers.values_mut() {
            if c.config.name == name && c.state == ContainerState::Running {
                c.state = ContainerState::Exited;
                c.exit_code = code;
            }
        }
    }

    /// Adds a sandbox with one running container, as a previous edgecore run left it.
    pub(crate) fn preexisting(&self, sandbox: SandboxConfig, container: ContainerConfig) {
        self.add_running(sandbox, container, false);
    }

    /// Adds a sandbox with one running container that another agent (a kubelet) made.
    pub(crate) fn foreign(&self, sandbox: SandboxConfig, container: ContainerConfig) {
        self.add_running(sandbox, container, true);
    }

    fn add_running(&self, sandbox: SandboxConfig, container: ContainerConfig, foreign: bool) {
        let mut s = self.state();
        s.next_id += 1;
        let n = s.next_id;
        let sb = format!("old-sb{n}");
        if foreign {
            s.foreign.insert(sb.clone());
        }
        s.sandboxes.insert(sb.clone(), sandbox);
        s.containers.insert(
            format!("old-c{n}"),
            FakeContainer {
                sandbox: sb,
                config: container,
                state: ContainerState::Running,
                exit_code: 0,
            },
        );
    }

    pub(crate) fn calls_named(&self, prefix: &str) -> usize {
        self.state()
            .calls
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    fn op<T>(
        &self,
        call: &'static str,
        f: impl FnOnce(&mut FakeState) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let mut s = self.state();
        if s.down {
            return Err(RuntimeError::Unavailable {
                endpoint: "fake".to_owned(),
                source: "connection refused".into(),
            });
        }
        s.calls.push(call.to_owned());
        f(&mut s)
    }

    /// The container stops (SIGTERM obeyed, or the kill after the grace).
    fn stop_now(&self, id: &str) -> Result<(), RuntimeError> {
        self.op("StopContainer", |s| {
            let c = s
                .containers
                .get_mut(id)
                .ok_or_else(|| not_found("StopContainer", id))?;
            c.state = ContainerState::Exited;
            c.exit_code = 143;
            Ok(())
        })
    }
}

fn not_found(call: &'static str, what: &str) -> RuntimeError {
    RuntimeError::NotFound {
        call,
        what: what.to_owned(),
    }
}

impl Runtime for FakeRuntime {
    fn version(&self) -> RuntimeFuture<'_, String> {
        let r = self.op("Version", |_| Ok("fake://1.0".to_owned()));
        Box::pin(async move { r })
    }

    fn image_status<'a>(&'a self, image: &'a str) -> RuntimeFuture<'a, Option<String>> {
        let r = self.op("ImageStatus", |s| {
            Ok(s.images.contains(image).then(|| format!("sha256:{image}")))
        });
        Box::pin(async move { r })
    }

    fn pull_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a RegistryAuth>,
    ) -> RuntimeFuture<'a, String> {
        if self.state().hanging.contains(image) {
            self.state().calls.push("PullImage".to_owned());
            return Box::pin(std::future::pending());
        }
        let r = self.op("PullImage", |s| {
            s.pull_auths.push(auth.map(|a| a.username.clone()));
            let allowed = s
                .private
                .get(image)
                .is_none_or(|user| auth.is_some_and(|a| &a.username == user));
            if !allowed {
                return Err(RuntimeError::Call {
                    call: "PullImage",
                    message: format!("pulling {image:?}: 401 Unauthorized"),
                });
            }
            if s.pullable.contains(image) {
                s.images.insert(image.to_owned());
                Ok(image.to_owned())
            } else {
                Err(RuntimeError::Call {
                    call: "PullImage",
                    message: format!("failed to resolve reference {image:?}"),
                })
            }
        });
        Box::pin(async move { r })
    }

    fn run_sandbox<'a>(&'a self, config: &'a SandboxConfig) -> RuntimeFuture<'a, String> {
        let r = self.op("RunPodSandbox", |s| {
            if s.failing_sandboxes > 0 {
                s.failing_sandboxes -= 1;
                return Err(RuntimeError::Call {
                    call: "RunPodSandbox",
                    message: "runc create failed".to_owned(),
                });
            }
            s.next_id += 1;
            let id = format!("sb{}", s.next_id);
            s.sandboxes.insert(id.clone(), config.clone());
            Ok(id)
        });
        Box::pin(async move { r })
    }

    fn stop_sandbox<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()> {
        let r = self.op("StopPodSandbox", |s| {
            for c in s.containers.values_mut().filter(|c| c.sandbox == id) {
                c.state = ContainerState::Exited;
            }
            Ok(())
        });
        Box::pin(async move { r })
    }

    fn remove_sandbox<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()> {
        let r = self.op("RemovePodSandbox", |s| {
            s.containers.retain(|_, c| c.sandbox != id);
            s.sandboxes
                .remove(id)
                .map(|_| ())
                .ok_or_else(|| not_found("RemovePodSandbox", id))
        });
        Box::pin(async move { r })
    }

    fn sandbox_ip<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<String>> {
        // A pod network hands out 10.88.0.<n>, as containerd's default CNI config does.
        let r = self.op("PodSandboxStatus", |s| {
            let sandbox = s.sandboxes.get(id).ok_or_else(|| RuntimeError::NotFound {
                call: "PodSandboxStatus",
                what: format!("sandbox {id}"),
            })?;
            Ok((!sandbox.host_network).then(|| format!("10.88.0.{}", id.trim_start_matches("sb"))))
        });
        Box::pin(async move { r })
    }

    fn list_sandboxes(&self) -> RuntimeFuture<'_, Vec<SandboxInfo>> {
        let r = self.op("ListPodSandbox", |s| {
            Ok(s.sandboxes
                .iter()
                .map(|(id, c)| SandboxInfo {
                    id: id.clone(),
                    uid: c.uid.clone(),
                    namespace: c.namespace.clone(),
                    name: c.name.clone(),
                    ready: true,
                    managed: !s.foreign.contains(id),
                })
                .collect())
        });
        Box::pin(async move { r })
    }

    fn list_containers<'a>(&'a self, sandbox_id: &'a str) -> RuntimeFuture<'a, Vec<ContainerInfo>> {
        let r = self.op("ListContainers", |s| {
            Ok(s.containers
                .iter()
                .filter(|(_, c)| c.sandbox == sandbox_id)
                .map(|(id, c)| ContainerInfo {
                    id: id.clone(),
                    name: c.config.name.clone(),
                    attempt: c.config.attempt,
                    state: c.state,
                })
                .collect())
        });
        Box::pin(async move { r })
    }

    fn create_container<'a>(
        &'a self,
        sandbox_id: &'a str,
        _sandbox: &'a SandboxConfig,
        config: &'a ContainerConfig,
    ) -> RuntimeFuture<'a, String> {
        let r = self.op("CreateContainer", |s| {
            if !s.sandboxes.contains_key(sandbox_id) {
                return Err(not_found("CreateContainer", sandbox_id));
            }
            if !s.images.contains(&config.image) {
                return Err(RuntimeError::Call {
                    call: "CreateContainer",
                    message: format!("image {} not present", config.image),
                });
            }
            s.next_id += 1;
            let id = format!("c{}", s.next_id);
            s.containers.insert(
                id.clone(),
                FakeContainer {
                    sandbox: sandbox_id.to_owned(),
                    config: config.clone(),
                    state: ContainerState::Created,
                    exit_code: 0,
                },
            );
            Ok(id)
        });
        Box::pin(async move { r })
    }

    fn start_container<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()> {
        let r = self.op("StartContainer", |s| {
            let c = s
                .containers
                .get_mut(id)
                .ok_or_else(|| not_found("StartContainer", id))?;
            c.state = ContainerState::Running;
            Ok(())
        });
        Box::pin(async move { r })
    }

    fn stop_container<'a>(&'a self, id: &'a str, grace: Duration) -> RuntimeFuture<'a, ()> {
        let stubborn = {
            let mut s = self.state();
            s.stop_graces.push(grace);
            s.containers
                .get(id)
                .is_some_and(|c| s.ignore_sigterm.contains(&c.config.name))
        };
        if stubborn {
            return Box::pin(async move {
                tokio::time::sleep(grace).await;
                self.stop_now(id)
            });
        }
        let r = self.stop_now(id);
        Box::pin(async move { r })
    }

    fn remove_container<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()> {
        let r = self.op("RemoveContainer", |s| {
            s.containers
                .remove(id)
                .map(|_| ())
                .ok_or_else(|| not_found("RemoveContainer", id))
        });
        Box::pin(async move { r })
    }

    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        _cmd: &'a [String],
        _timeout: Duration,
    ) -> RuntimeFuture<'a, (i32, String)> {
        let r = self.op("ExecSync", |s| {
            let c = s.containers.get(id).ok_or_else(|| RuntimeError::NotFound {
                call: "ExecSync",
                what: format!("container {id}"),
            })?;
            let code = s.exec_codes.get(&c.config.name).copied().unwrap_or(0);
            Ok((code, String::new()))
        });
        Box::pin(async move { r })
    }

    fn stream_url<'a>(&'a self, request: &'a StreamRequest) -> RuntimeFuture<'a, String> {
        let call = match request {
            StreamRequest::Exec { .. } => "Exec",
            StreamRequest::Attach { .. } => "Attach",
            StreamRequest::PortForward { .. } => "PortForward",
        };
        let r = self.op(call, |s| {
            s.stream_requests.push(request.clone());
            let base = s.stream_base.clone().ok_or_else(|| RuntimeError::Call {
                call,
                message: "streaming is not served by this runtime".to_owned(),
            })?;
            Ok(format!(
                "{base}/{}/token{}",
                call.to_ascii_lowercase(),
                s.stream_requests.len()
            ))
        });
        Box::pin(async move { r })
    }

    fn container_status<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ContainerStatus> {
        let r = self.op("ContainerStatus", |s| {
            let c = s
                .containers
                .get(id)
                .ok_or_else(|| not_found("ContainerStatus", id))?;
            Ok(ContainerStatus {
                id: id.to_owned(),
                state: c.state,
                started_at: 1_748_764_803_000_000_000,
                finished_at: if c.state == ContainerState::Exited {
                    1_748_764_809_000_000_000
                } else {
                    0
                },
                exit_code: c.exit_code,
                reason: String::new(),
                message: String::new(),
                image: c.config.image.clone(),
                image_ref: format!("sha256:{}", c.config.image),
            })
        });
        Box::pin(async move { r })
    }
}
