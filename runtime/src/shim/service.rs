//! containerd's task API (task v2, as containerd 1.6 calls it) served over
//! a [`Pod`]: each request becomes agent calls, and the task events are
//! published to containerd in the order it requires.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};

use super::error::TaskError;
use super::io::Fifos;
use super::pod::Pod;
use super::process::Exited;
use super::rootfs::RootfsMount;
use super::socket::ShimSocket;
use super::stats;
use kata_rs_engine::ContainerStatus;
use oci_spec::runtime::LinuxResources;

/// The task service of one shim: one pod.
pub struct Service {
    pod: Arc<Mutex<Pod>>,
    events: Events,
    exit: Arc<ExitSignal>,
    socket: ShimSocket,
}

/// Publishes task events to containerd, in the shim's namespace.
#[derive(Clone)]
struct Events {
    publisher: Arc<Mutex<RemotePublisher>>,
    namespace: String,
}

impl Events {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = publisher.publish(
            containerd_shim::Context::default(),
            topic,
            &self.namespace,
            event,
        ) {
            tracing::warn!(topic, error = %e, "publish an event to containerd");
        }
    }
}

pub(crate) fn timestamp(at: SystemTime) -> MessageField<Timestamp> {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = since.as_secs() as i64;
    ts.nanos = since.subsec_nanos() as i32;
    MessageField::some(ts)
}

/// An error as containerd gets it (see `error`).
fn to_ttrpc(e: impl Into<TaskError>) -> ttrpc::Error {
    e.into().into()
}

impl Service {
    pub fn new(
        pod: Pod,
        publisher: RemotePublisher,
        namespace: &str,
        exit: Arc<ExitSignal>,
        socket: ShimSocket,
    ) -> Self {
        Self {
            pod: Arc::new(Mutex::new(pod)),
            events: Events {
                publisher: Arc::new(Mutex::new(publisher)),
                namespace: namespace.to_owned(),
            },
            exit,
            socket,
        }
    }

    fn pod(&self) -> MutexGuard<'_, Pod> {
        self.pod.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        tracing::info!(id = %req.id, bundle = %req.bundle, "create");
        let fifos = Fifos {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let rootfs: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let config = super::options::config_path(req.options.as_ref()).map_err(to_ttrpc)?;
        let mut pod = self.pod();
        if let Some(path) = config {
            pod.use_config(Path::new(&path)).map_err(to_ttrpc)?;
        }
        pod.create(&req.id, &PathBuf::from(&req.bundle), &rootfs, fifos)
            .map_err(to_ttrpc)?;
        let pid = pod.task_pid(&req.id, "");
        drop(pod);
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint,
                pid,
                ..Default::default()
            }),
        );
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        tracing::info!(id = %req.id, exec_id = %req.exec_id, "start");
        let events = self.events.clone();
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        let mut pod = self.pod();
        // containerd wants the start event before the exit event, even of a
        // process that ends at once: the exit waits until start is out, and
        // learns the pid (known once started) from it.
        let (started_tx, started) = std::sync::mpsc::channel::<u32>();
        let on_exit = move |exited: Exited| {
            let pid = started.recv().unwrap_or_default();
            if exited.oom_killed {
                events.publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    Box::new(TaskOOM {
                        container_id: id.clone(),
                        ..Default::default()
                    }),
                );
            }
            events.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id.clone(),
                    id: if exec_id.is_empty() { id } else { exec_id },
                    pid,
                    exit_status: exited.status,
                    exited_at: timestamp(exited.at),
                    ..Default::default()
                }),
            );
        };
        pod.start(&req.id, &req.exec_id, on_exit)
            .map_err(to_ttrpc)?;
        let pid = pod.task_pid(&req.id, &req.exec_id);
        drop(pod);
        if req.exec_id.is_empty() {
            self.events.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id,
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            self.events.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id,
                    exec_id: req.exec_id,
                    pid,
                    ..Default::default()
                }),
            );
        }
        let _ = started_tx.send(pid);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        tracing::info!(id = %req.id, exec_id = %req.exec_id, "delete");
        let mut pod = self.pod();
        let pid = pod.task_pid(&req.id, &req.exec_id);
        let cell = pod
            .container(&req.id)
            .and_then(|c| c.process(&req.exec_id))
            .map(|p| Arc::clone(&p.exit));
        let exited = pod.delete(&req.id, &req.exec_id).map_err(to_ttrpc)?;
        drop(pod);
        // The exit event of a process that ran goes out before this one.
        if let (Some(_), Ok(cell)) = (exited, cell) {
            cell.wait();
        }
        let (status, at) = exited
            .map(|e| (e.status, e.at))
            .unwrap_or((0, SystemTime::now()));
        if req.exec_id.is_empty() {
            self.events.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid,
                    exit_status: status,
                    exited_at: timestamp(at),
                    ..Default::default()
                }),
            );
        }
        Ok(DeleteResponse {
            pid,
            exit_status: status,
            exited_at: timestamp(at),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        tracing::info!(id = %req.id, exec_id = %req.exec_id, "exec");
        let process = req
            .spec
            .as_ref()
            .map(|any| serde_json::from_slice(&any.value))
            .transpose()
            .map_err(|e| {
                to_ttrpc(TaskError::InvalidArgument(format!(
                    "the exec's process is not a valid OCI process: {e}"
                )))
            })?
            .ok_or_else(|| {
                to_ttrpc(TaskError::InvalidArgument(
                    "the exec carries no process".to_owned(),
                ))
            })?;
        let fifos = Fifos {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        self.pod()
            .add_exec(&req.id, &req.exec_id, process, fifos)
            .map_err(to_ttrpc)?;
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let pod = self.pod();
        let c = pod.container(&req.id).map_err(to_ttrpc)?;
        let p = c.process(&req.exec_id).map_err(to_ttrpc)?;
        let status = match p.status(c.paused) {
            ContainerStatus::Creating | ContainerStatus::Created => Status::CREATED,
            ContainerStatus::Running => Status::RUNNING,
            ContainerStatus::Paused => Status::PAUSED,
            ContainerStatus::Stopped => Status::STOPPED,
        };
        let exited = p.exit.get();
        Ok(StateResponse {
            id: if req.exec_id.is_empty() {
                req.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: pod.task_pid(&req.id, &req.exec_id),
            status: status.into(),
            stdin: p.fifos.stdin.clone(),
            stdout: p.fifos.stdout.clone(),
            stderr: p.fifos.stderr.clone(),
            terminal: p.fifos.terminal,
            exit_status: exited.map(|e| e.status).unwrap_or_default(),
            exited_at: exited.map(|e| timestamp(e.at)).unwrap_or_default(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let exit = {
            let pod = self.pod();
            let c = pod.container(&req.id).map_err(to_ttrpc)?;
            Arc::clone(&c.process(&req.exec_id).map_err(to_ttrpc)?.exit)
        };
        let exited = exit.wait();
        Ok(WaitResponse {
            exit_status: exited.status,
            exited_at: timestamp(exited.at),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        tracing::info!(id = %req.id, exec_id = %req.exec_id, signal = req.signal, "kill");
        self.pod()
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = self.pod().pids(&req.id).map_err(to_ttrpc)?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.pod().set_paused(&req.id, true).map_err(to_ttrpc)?;
        self.events.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id,
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.pod().set_paused(&req.id, false).map_err(to_ttrpc)?;
        self.events.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id,
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.pod()
            .resize(&req.id, &req.exec_id, req.width, req.height)
            .map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            self.pod()
                .close_stdin(&req.id, &req.exec_id)
                .map_err(to_ttrpc)?;
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        // containerd sends the resources as runc takes them: OCI
        // LinuxResources in JSON.
        let resources: LinuxResources = req
            .resources
            .as_ref()
            .map(|any| serde_json::from_slice(&any.value))
            .transpose()
            .map_err(|e| {
                to_ttrpc(TaskError::InvalidArgument(format!(
                    "the resources are not valid OCI resources: {e}"
                )))
            })?
            .unwrap_or_default();
        self.pod().update(&req.id, &resources).map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let raw = self.pod().stats(&req.id).map_err(to_ttrpc)?;
        Ok(StatsResponse {
            stats: MessageField::some(stats::to_metrics_any(&raw).map_err(to_ttrpc)?),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.pod().task_pid(&req.id, ""),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        let mut pod = self.pod();
        if pod.containers.is_empty() {
            pod.shut_down();
            // Before the answer: containerd may remove the bundle (and
            // with it the address file) as soon as it has it.
            self.socket.remove();
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
