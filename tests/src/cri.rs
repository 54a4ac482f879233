//! A blocking client of the Kubernetes CRI (runtime.v1) over containerd's
//! socket: the calls a kubelet makes, for tests that drive containerd's CRI
//! plugin. cri-tools is not packaged here; k8s-cri has the generated types.

use std::future::Future;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

/// No CRI call takes this long, a pod's boot in the emulated KVM host
/// included; one that does fails, naming itself, instead of hanging a test.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(240);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// What a CRI call answered when it failed.
pub type Status = Box<tonic::Status>;

impl Cri {
    pub fn connect(socket: &Path) -> Result<Self, tonic::transport::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let socket = socket.to_owned();
        let channel = rt.block_on(
            // The URI is required but unused: the connector dials the socket.
            Endpoint::from_static("http://[::]:0")
                .timeout(CALL_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket: PathBuf = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                })),
        )?;
        Ok(Self {
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// One call: `f` gets a client of its own and returns the call's future.
    pub fn call<T, Fut>(
        &self,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt
            .block_on(f(self.client.clone()))
            .map(tonic::Response::into_inner)
            .map_err(Box::new)
    }

    /// Whether the runtime and its network report ready.
    pub fn ready(&self) -> Result<bool, Status> {
        let status =
            self.call(|mut c| async move { c.status(StatusRequest { verbose: false }).await })?;
        Ok(status
            .status
            .is_some_and(|s| s.conditions.iter().all(|c| c.status)))
    }

    pub fn run_pod(&self, config: &PodSandboxConfig, handler: &str) -> Result<String, Status> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_owned(),
        };
        Ok(self
            .call(|mut c| async move { c.run_pod_sandbox(req).await })?
            .pod_sandbox_id)
    }

    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, Status> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        Ok(self
            .call(|mut c| async move { c.create_container(req).await })?
            .container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), Status> {
        let req = StartContainerRequest {
            container_id: id.to_owned(),
        };
        self.call(|mut c| async move { c.start_container(req).await })
            .map(drop)
    }

    /// Runs `cmd` in container `id`: its exit code, stdout and stderr.
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse, Status> {
        let req = ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 120,
        };
        self.call(|mut c| async move { c.exec_sync(req).await })
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, Status> {
        let req = ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        let resp = self.call(|mut c| async move { c.container_status(req).await })?;
        Ok(resp.status.unwrap_or_default())
    }

    pub fn container_stats(&self, id: &str) -> Result<ContainerStats, Status> {
        let req = ContainerStatsRequest {
            container_id: id.to_owned(),
        };
        let resp = self.call(|mut c| async move { c.container_stats(req).await })?;
        Ok(resp.stats.unwrap_or_default())
    }

    pub fn pod_status(&self, id: &str) -> Result<PodSandboxStatus, Status> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        };
        let resp = self.call(|mut c| async move { c.pod_sandbox_status(req).await })?;
        Ok(resp.status.unwrap_or_default())
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), Status> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call(|mut c| async move { c.stop_pod_sandbox(req).await })
            .map(drop)
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), Status> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call(|mut c| async move { c.remove_pod_sandbox(req).await })
            .map(drop)
    }

    /// The ids of the pods CRI knows of.
    pub fn pods(&self) -> Result<Vec<String>, Status> {
        let req = ListPodSandboxRequest { filter: None };
        let resp = self.call(|mut c| async move { c.list_pod_sandbox(req).await })?;
        Ok(resp.items.into_iter().map(|p| p.id).collect())
    }

    /// The ids of the containers CRI knows of.
    pub fn containers(&self) -> Result<Vec<String>, Status> {
        let req = ListContainersRequest { filter: None };
        let resp = self.call(|mut c| async move { c.list_containers(req).await })?;
        Ok(resp.containers.into_iter().map(|c| c.id).collect())
    }
}

/// A pod as a kubelet asks for it: named `name` (its hostname too), its
/// logs under `log_directory`, its own network, DNS settings of a cluster.
pub fn pod_config(name: &str, log_directory: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.to_string_lossy().into_owned(),
        dns_config: Some(DnsConfig {
            servers: vec!["10.213.255.254".into()],
            searches: vec!["kata-rs.test".into()],
            options: Vec::new(),
        }),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Container `name` of `image` running `cmd`, logging to `<name>.log` in
/// its pod's log directory.
pub fn container_config(name: &str, image: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}
