//! containerd's task API (`containerd.task.v2.Task`) for the tasks of one
//! pod: the first task boots the pod's microVM, later ones (CRI pod
//! containers) join it. Each call becomes agent calls through [`crate::vm`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::types::task::{ProcessInfo, Status};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use ttrpc::r#async::TtrpcContext;
use ttrpc::{Code, Error as TtrpcError};

use crate::cleanup;
use crate::events::{now, Events};
use crate::io::{ProcessIo, StdioPaths};
use crate::oom::{self, OomGate, Verdict};
use crate::pids;
use crate::process::{exit_status, vm_death_status};
use crate::start::{self, config_path_from_options};
use crate::stats;
use crate::status::{not_found, status, vm_error, Op};
use crate::vm::{self, Pod, VmError};
use ampoule_runtime::container::rootfs::{self, MountSpec};
use ampoule_runtime::container::{self, ContainerError};
use ampoule_runtime::pod::share_fs;

type TtrpcResult<T> = ttrpc::Result<T>;

/// How a process ended.
#[derive(Debug, Clone)]
struct ExitInfo {
    status: u32,
    at: Timestamp,
}

/// Where a process's exit is published (first writer wins).
type ExitTx = Arc<watch::Sender<Option<ExitInfo>>>;

/// A process's lifecycle: the runtime's status, with its rules (`Paused`
/// is kept per container, as containerd's pause is).
use ampoule_runtime::state::Status as ProcState;

/// A container's init process or one of its execs.
struct Proc {
    /// What containerd is told: the host pid of the pod's VM process
    /// (see [`crate::pids`]).
    host_pid: u32,
    /// The agent's pid of the process, in the guest (logs only; `Pids`
    /// asks the agent).
    guest_pid: u32,
    stdio: StdioPaths,
    state: ProcState,
    exit: ExitTx,
    io: Arc<tokio::sync::Mutex<Option<ProcessIo>>>,
    /// OCI process JSON of an exec not started yet.
    spec: Option<Vec<u8>>,
}

impl Proc {
    fn new(stdio: StdioPaths, host_pid: u32) -> Proc {
        let (tx, _) = watch::channel(None);
        Proc {
            host_pid,
            guest_pid: 0,
            stdio,
            state: ProcState::Created,
            exit: Arc::new(tx),
            io: Arc::new(tokio::sync::Mutex::new(None)),
            spec: None,
        }
    }
    fn exited(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }
}

struct Container {
    bundle: String,
    /// This task booted the VM (standalone task, or a CRI pod's sandbox).
    owns_vm: bool,
    init: Proc,
    execs: HashMap<String, Proc>,
    paused: bool,
}

struct Inner {
    namespace: String,
    /// The id the shim was started for (the pod's group id).
    shim_id: String,
    events: Events,
    config_path: Mutex<Option<String>>,
    exit: Arc<Notify>,
    /// Serialises boots and pod teardown.
    boot: tokio::sync::Mutex<()>,
    pod: Mutex<Option<Arc<Pod>>>,
    containers: Mutex<HashMap<String, Container>>,
    /// Waiters and watchers, aborted before the VM stops.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    host_cgroups: Mutex<Vec<PathBuf>>,
    /// Bind sources images of containers, removed at their Delete.
    bind_images: Mutex<HashMap<String, PathBuf>>,
    /// Which OOM events from the guest reach containerd.
    oom: Mutex<OomGate>,
}

/// The task service of one shim (one pod).
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `linux.cgroupsPath` of an OCI spec, if any.
fn cgroups_path(spec: &serde_json::Value) -> Option<String> {
    spec.get("linux")?
        .get("cgroupsPath")?
        .as_str()
        .map(str::to_string)
}

fn annotations(spec: &serde_json::Value) -> HashMap<String, String> {
    spec.get("annotations")
        .and_then(|a| a.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl TaskService {
    pub fn new(
        namespace: &str,
        shim_id: &str,
        events: Events,
        config_path: Option<String>,
    ) -> TaskService {
        TaskService {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                shim_id: shim_id.to_string(),
                events,
                config_path: Mutex::new(config_path),
                exit: Arc::new(Notify::new()),
                boot: tokio::sync::Mutex::new(()),
                pod: Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
                host_cgroups: Mutex::new(Vec::new()),
                bind_images: Mutex::new(HashMap::new()),
                oom: Mutex::new(OomGate::new()),
            }),
        }
    }

    /// Notified once the shim should exit (Shutdown with no task left).
    pub fn exit_signal(&self) -> Arc<Notify> {
        self.inner.exit.clone()
    }

    fn pod(&self, op: Op<'_>) -> TtrpcResult<Arc<Pod>> {
        lock(&self.inner.pod).clone().ok_or_else(|| {
            status(
                Code::FAILED_PRECONDITION,
                format!("{op}: the pod's VM is not running"),
            )
        })
    }

    /// Guest pid of the pod's sandbox container (the task that booted the
    /// VM) while its init runs: whose namespaces `/proc/<VM pid>/ns/*`
    /// paths in a later container's spec mean.
    fn sandbox_guest_pid(&self) -> Option<u32> {
        lock(&self.inner.containers)
            .values()
            .find(|c| c.owns_vm)
            .filter(|c| c.init.guest_pid != 0 && c.init.exited().is_none())
            .map(|c| c.init.guest_pid)
    }

    fn track(&self, h: JoinHandle<()>) {
        let mut tasks = lock(&self.inner.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    /// Runs `f` on the process `exec_id` ("" = init) of container `id`.
    fn with_proc<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Proc) -> T,
    ) -> TtrpcResult<T> {
        let mut cs = lock(&self.inner.containers);
        let c = cs
            .get_mut(id)
            .ok_or_else(|| not_found(format!("container {id}")))?;
        let p = if exec_id.is_empty() {
            &mut c.init
        } else {
            c.execs
                .get_mut(exec_id)
                .ok_or_else(|| not_found(format!("exec {exec_id} of container {id}")))?
        };
        Ok(f(p))
    }

    /// The erofs image of a container's rootfs, built off the async threads.
    async fn layer_images(
        &self,
        config: &ampoule_runtime::Config,
        mounts: Vec<MountSpec>,
        bundle: &Path,
    ) -> Result<Vec<PathBuf>, VmError> {
        let cache = vm::erofs_cache(config);
        let bundle = bundle.to_path_buf();
        let r = tokio::task::spawn_blocking(move || {
            let mounts = if mounts.is_empty() {
                // No snapshotter mounts: the bundle's own rootfs directory.
                vec![MountSpec {
                    kind: "bind".into(),
                    source: bundle.join("rootfs").display().to_string(),
                    options: vec![],
                }]
            } else {
                mounts
            };
            let layers = rootfs::parse_mounts(&mounts)?;
            rootfs::layers_image(&layers, &cache).map(|i| vec![i])
        })
        .await;
        match r {
            Ok(r) => Ok(r?),
            Err(e) => Err(VmError::Rootfs(rootfs::RootfsError::Io {
                what: "building layer images",
                path: PathBuf::from("(task)"),
                source: std::io::Error::other(e.to_string()),
            })),
        }
    }

    /// Boots the pod's VM for its first task.
    async fn boot_pod(
        &self,
        id: &str,
        bundle: &Path,
        spec: &serde_json::Value,
        config: &ampoule_runtime::Config,
        images: &[PathBuf],
        shared_fs: bool,
    ) -> Result<(Arc<Pod>, Vec<String>), VmError> {
        // The pod's size: the runtime's rule (annotations io.ampoule.vcpus /
        // io.ampoule.memory_mib, else the configured default or what the
        // sandbox's linux.resources asks, whichever is larger).
        let oci: oci_spec::runtime::Spec =
            serde_json::from_value(spec.clone()).map_err(|e| ContainerError::BadSpec {
                path: bundle.join("config.json"),
                message: e.to_string(),
            })?;
        let (vcpus, memory_mib) = container::sandbox_size(&oci, config)?;
        // The pod's network namespace on the host (CNI's), if it has one.
        let network =
            ampoule_runtime::container::namespaces::pod_network_path(spec).map(PathBuf::from);
        // Levels of the pod's host cgroup the jail's memory cgroup creates.
        let mut cgroups = match cgroups_path(spec) {
            Some(path) => ampoule_runtime::host_cgroup::missing_levels(
                Path::new(ampoule_runtime::pod::cgroups::CGROUP_ROOT),
                &path,
            )
            .unwrap_or_default(),
            None => Vec::new(),
        };
        let (pod, devices) = Pod::boot(
            config,
            id,
            (Some(vcpus), Some(memory_mib)),
            images,
            shared_fs,
            network,
            cgroups_path(spec),
        )
        .await?;
        let pod = Arc::new(pod);
        tracing::info!(
            sandbox = %id,
            boot_ms = pod.boot_time().as_millis() as u64,
            backend = %pod.backend_description(),
            serial_log = %pod.serial_log().display(),
            "pod VM ready"
        );
        // The VM's processes go into the pod's cgroup on the host.
        if let Some(path) = cgroups_path(spec) {
            match pod.place_in_cgroup(&path) {
                Ok(created) => {
                    for d in created {
                        if !cgroups.contains(&d) {
                            cgroups.push(d);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "placing the VM in the pod cgroup"),
            }
        }
        *lock(&self.inner.host_cgroups) = cgroups.clone();
        // What `delete` needs if this shim is killed.
        let mut record = pod.record();
        record.dirs = vec![vm::slot_dir(config, id)];
        record.host_cgroups = cgroups;
        if let Err(e) = cleanup::write_record(bundle, &record) {
            tracing::warn!(error = %e, "writing the VM record into the bundle");
        }
        self.watch_pod(pod.clone());
        Ok((pod, devices))
    }

    /// VM death ends every process of the pod; OOM events are forwarded.
    fn watch_pod(&self, pod: Arc<Pod>) {
        let me = self.clone();
        let p = pod.clone();
        self.track(tokio::spawn(async move {
            let (what, signal) = p.wait_exit().await;
            let kept = p.keep_serial_log();
            tracing::error!(vm = %what, serial_log = %kept.display(), "the pod's VM ended");
            // Waiters see the VM gone too; give them a moment, then end
            // whatever is left (created-but-not-started processes).
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let code = vm_death_status(signal);
            let pending: Vec<(String, String, u32, ExitTx)> = {
                let mut cs = lock(&me.inner.containers);
                let mut v = Vec::new();
                for (id, c) in cs.iter_mut() {
                    for (eid, proc_) in std::iter::once((String::new(), &mut c.init))
                        .chain(c.execs.iter_mut().map(|(k, p)| (k.clone(), p)))
                    {
                        if proc_.exited().is_none() {
                            proc_.state = ProcState::Stopped;
                            v.push((id.clone(), eid, proc_.host_pid, proc_.exit.clone()));
                        }
                    }
                }
                v
            };
            for (id, eid, pid, tx) in pending {
                me.finish(&id, &eid, pid, &tx, code).await;
            }
        }));
        let me = self.clone();
        self.track(tokio::spawn(async move {
            loop {
                match pod.oom_event().await {
                    Ok(id) => me.oom_event(&id).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "OOM event stream ended");
                        break;
                    }
                }
            }
        }));
    }

    /// An OOM event from the guest: forwarded for this shim's own tasks
    /// within the rate limit, dropped (and logged, rate-limited) otherwise.
    async fn oom_event(&self, id: &str) {
        let ours = lock(&self.inner.containers).contains_key(id);
        let verdict = lock(&self.inner.oom).admit(id, ours, std::time::Instant::now());
        match verdict {
            Verdict::Forward => {
                tracing::warn!(container = %id, "OOM in the guest");
                self.inner.events.oom(id).await;
            }
            Verdict::Drop {
                reason,
                log: Some(dropped),
            } => {
                tracing::warn!(
                    container = %oom::printable(id),
                    ?reason,
                    dropped,
                    "OOM event from the guest not forwarded"
                );
            }
            Verdict::Drop { log: None, .. } => {}
        }
    }

    /// Records an exit (first one wins) and publishes it.
    async fn finish(
        &self,
        id: &str,
        exec_id: &str,
        pid: u32,
        tx: &watch::Sender<Option<ExitInfo>>,
        code: u32,
    ) {
        let info = ExitInfo {
            status: code,
            at: now(),
        };
        let mut first = false;
        tx.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(info.clone());
                first = true;
            }
            first
        });
        if first {
            let process_id = if exec_id.is_empty() { id } else { exec_id };
            tracing::info!(container = %id, exec = %exec_id, status = code, "process exited");
            self.inner
                .events
                .exit(id, process_id, pid, code, &info.at)
                .await;
        }
    }

    /// Waits for a started process in the guest, drains its output, then
    /// records and publishes the exit.
    fn spawn_waiter(&self, pod: Arc<Pod>, id: String, exec_id: String) -> TtrpcResult<()> {
        let (pid, tx, io) = self.with_proc(&id, &exec_id, |p| {
            (p.host_pid, p.exit.clone(), p.io.clone())
        })?;
        let me = self.clone();
        self.track(tokio::spawn(async move {
            let code = match pod.wait(&id, &exec_id).await {
                Ok(r) => exit_status(&r),
                Err(e) if e.vm_gone() => vm_death_status(None),
                Err(e) => {
                    tracing::error!(container = %id, exec = %exec_id, error = %e, "WaitProcess failed");
                    vm_death_status(None)
                }
            };
            if let Some(io) = io.lock().await.as_mut() {
                io.wait_output().await;
            }
            let _ = me.with_proc(&id, &exec_id, |p| p.state = ProcState::Stopped);
            me.finish(&id, &exec_id, pid, &tx, code).await;
        }));
        Ok(())
    }

    /// Stops the pod's VM: watchers and waiters end first, then the VM.
    async fn stop_pod(&self) {
        let _g = self.inner.boot.lock().await;
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.inner.tasks));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let mut pod = lock(&self.inner.pod).take();
        // A request in flight may still hold the pod for a moment.
        for _ in 0..100 {
            match pod.take().map(Arc::try_unwrap) {
                None => break,
                Some(Ok(p)) => {
                    p.stop().await;
                    pod = None;
                    break;
                }
                Some(Err(shared)) => {
                    pod = Some(shared);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
        if pod.take().is_some() {
            tracing::warn!(
                "the pod is still referenced after 2 s; its VM is killed when the last user ends"
            );
        }
        let cgroups = std::mem::take(&mut *lock(&self.inner.host_cgroups));
        let _ = tokio::task::spawn_blocking(move || ampoule_runtime::host_cgroup::remove(&cgroups))
            .await;
    }

    /// Stops the pod's VM, then lets the server exit.
    async fn stop_and_exit(&self) {
        self.stop_pod().await;
        tracing::info!(shim = %self.inner.shim_id, namespace = %self.inner.namespace, "no task left: exiting");
        self.inner.exit.notify_one();
    }

    fn stdio_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
        StdioPaths {
            stdin: stdin.to_string(),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            terminal,
        }
    }

    async fn create_inner(&self, req: api::CreateTaskRequest) -> TtrpcResult<u32> {
        let id = req.id.clone();
        let op = Op::new("create", &id, "");
        if lock(&self.inner.containers).contains_key(&id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("{op}: container {id} already exists"),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                format!("{op}: restoring from a checkpoint is not supported by Ampoule"),
            ));
        }
        if let Some(opts) = req.options.as_ref() {
            if let Some(p) = config_path_from_options(&opts.type_url, &opts.value) {
                let mut cp = lock(&self.inner.config_path);
                if cp.is_none() {
                    *cp = Some(p);
                }
            }
        }
        let bundle = PathBuf::from(&req.bundle);
        let raw_spec = std::fs::read(bundle.join("config.json")).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("{op}: reading {}/config.json: {e}", req.bundle),
            )
        })?;
        let mut spec: serde_json::Value = serde_json::from_slice(&raw_spec).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("{op}: {}/config.json: {e}", req.bundle),
            )
        })?;
        let group = start::grouping(&id, &annotations(&spec));
        // Host networking cannot be given to a VM (a hostNetwork pod).
        if let Ok(oci) = serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone()) {
            container::namespaces::check_own_network(&oci)
                .map_err(|e| status(Code::FAILED_PRECONDITION, format!("{op}: {e}")))?;
        }
        let mounts: Vec<MountSpec> = req
            .rootfs
            .iter()
            .map(|m| MountSpec {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let stdio = Self::stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let config = vm::load_config(lock(&self.inner.config_path).as_deref())
            .map_err(|e| vm_error(op, &e))?;

        // How this container's files reach the guest: a running pod
        // decided at boot; a new one by annotation or configuration.
        let existing_shares = lock(&self.inner.pod).as_ref().map(|p| p.shares_files());
        let shared_fs = match existing_shares {
            Some(s) => s,
            None => {
                let oci: oci_spec::runtime::Spec = serde_json::from_value(spec.clone())
                    .map_err(|e| status(Code::INVALID_ARGUMENT, format!("{op}: {e}")))?;
                container::rootfs_sharing(&oci, &config)
                    .map_err(|e| vm_error(op, &VmError::from(e)))?
                    == ampoule_runtime::config::RootfsSharing::VirtioFs
            }
        };
        let mut images = Vec::new();
        let mut binds = None;
        let shared_rootfs = if shared_fs {
            // A bad bind source is refused before anything boots.
            let (_, plan) = share_fs::container::plan_binds(&raw_spec, None)
                .map_err(|e| vm_error(op, &VmError::from(e)))?;
            share_fs::volumes::check_sources(&plan).map_err(|e| vm_error(op, &VmError::from(e)))?;
            Some(if mounts.is_empty() {
                // No snapshotter mounts: the bundle's own rootfs directory.
                share_fs::RootfsSource::Dir(bundle.join("rootfs"))
            } else {
                share_fs::RootfsSource::Mounts(mounts)
            })
        } else {
            // The rootfs image, and the bind sources image (the spec's bind
            // mounts are rewritten where they cannot cross into the guest).
            images = self
                .layer_images(&config, mounts, &bundle)
                .await
                .map_err(|e| vm_error(op, &e))?;
            let binds_dir = vm::binds_dir(&config);
            let binds_name = start::hash_hex(&[&self.inner.namespace, &id])[..24].to_string();
            let dir = binds_dir.clone();
            let name = binds_name.clone();
            let r = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|e| rootfs::RootfsError::Io {
                    what: "creating",
                    path: dir.clone(),
                    source: e,
                })?;
                let img = rootfs::bind_sources_image(&mut spec, &dir, &name)?;
                Ok::<_, rootfs::RootfsError>((img, spec))
            })
            .await
            .map_err(|e| status(Code::INTERNAL, format!("{op}: {e}")))?;
            let (img, s) = r.map_err(|e| vm_error(op, &VmError::from(e)))?;
            spec = s;
            binds = img;
            images.extend(binds.clone());
            None
        };
        let with_binds = binds.is_some();

        let (pod, mut devices, owns_vm) = {
            let _g = self.inner.boot.lock().await;
            let existing = lock(&self.inner.pod).clone();
            match existing {
                Some(pod) => {
                    let devices = if pod.shares_files() {
                        Vec::new()
                    } else {
                        pod.attach_layers(&images).map_err(|e| vm_error(op, &e))?
                    };
                    (pod, devices, false)
                }
                None => {
                    if group != id {
                        tracing::warn!(container = %id, sandbox = %group, "pod container without its sandbox: booting a VM for it");
                    }
                    let (pod, devices) = self
                        .boot_pod(&id, &bundle, &spec, &config, &images, shared_fs)
                        .await
                        .map_err(|e| vm_error(op, &e))?;
                    *lock(&self.inner.pod) = Some(pod.clone());
                    (pod, devices, true)
                }
            }
        };
        let bind_device = if with_binds { devices.pop() } else { None };
        if let Some(b) = &binds {
            lock(&self.inner.bind_images).insert(id.clone(), b.clone());
        }

        // Every task of the pod is reported with the VM's host pid.
        let host_pid = pod.vm_pid().unwrap_or(0);
        let sandbox_guest_pid = if owns_vm {
            None
        } else {
            self.sandbox_guest_pid()
        };
        let result: Result<(u32, ProcessIo), TtrpcError> = async {
            let joined = pids::guest_namespace_paths(
                &mut spec,
                host_pid,
                sandbox_guest_pid,
                pod.has_network(),
            )
            .map_err(|e| status(Code::FAILED_PRECONDITION, format!("{op}: {e}")))?;
            if joined > 0 {
                tracing::debug!(container = %id, joined, "namespace paths pointed at the sandbox in the guest");
            }
            let raw_spec = serde_json::to_vec(&spec)
                .map_err(|e| status(Code::INTERNAL, format!("{op}: {e}")))?;
            let streams = pod
                .connect_stdio(&id, "", &stdio)
                .await
                .map_err(|e| vm_error(op, &e))?;
            let io = ProcessIo::start(&stdio, streams, &id)
                .map_err(|e| status(Code::INTERNAL, format!("{op}: {e}")))?;
            let pid = match shared_rootfs {
                Some(rootfs) => pod.create_shared_container(&id, rootfs, raw_spec, &stdio).await,
                None => {
                    pod.create_container(&id, raw_spec, devices, bind_device, &stdio)
                        .await
                }
            }
            .map_err(|e| vm_error(op, &e))?;
            Ok((pid, io))
        }
        .await;
        let (guest_pid, io) = match result {
            Ok(v) => v,
            Err(e) => {
                drop(pod);
                if owns_vm && lock(&self.inner.containers).is_empty() {
                    self.stop_pod().await;
                }
                return Err(e);
            }
        };
        let mut init = Proc::new(stdio.clone(), host_pid);
        init.guest_pid = guest_pid;
        *init.io.lock().await = Some(io);
        lock(&self.inner.containers).insert(
            id.clone(),
            Container {
                bundle: req.bundle.clone(),
                owns_vm,
                init,
                execs: HashMap::new(),
                paused: false,
            },
        );
        tracing::info!(container = %id, host_pid, guest_pid, "container created");
        self.inner
            .events
            .create(&id, &req.bundle, &stdio, host_pid)
            .await;
        Ok(host_pid)
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        tracing::debug!(id = %req.id, bundle = %req.bundle, rootfs = req.rootfs.len(), "Create");
        let pid = self.create_inner(req).await?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        tracing::debug!(%id, exec = %exec_id, "Start");
        let op = Op::new("start", &id, &exec_id);
        let state = self.with_proc(&id, &exec_id, |p| p.state)?;
        if !state.can_start() {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{op}: already started"),
            ));
        }
        let pod = self.pod(op)?;
        let pid = if exec_id.is_empty() {
            pod.start_container(&id)
                .await
                .map_err(|e| vm_error(op, &e))?;
            let pid = self.with_proc(&id, "", |p| {
                p.state = ProcState::Running;
                p.host_pid
            })?;
            self.spawn_waiter(pod, id.clone(), String::new())?;
            self.inner.events.start(&id, pid).await;
            pid
        } else {
            let (stdio, spec, io_slot) = self.with_proc(&id, &exec_id, |p| {
                (p.stdio.clone(), p.spec.take(), p.io.clone())
            })?;
            let spec = spec.unwrap_or_default();
            let streams = pod
                .connect_stdio(&id, &exec_id, &stdio)
                .await
                .map_err(|e| vm_error(op, &e))?;
            let io = ProcessIo::start(&stdio, streams, &format!("{id}/{exec_id}"))
                .map_err(|e| status(Code::INTERNAL, format!("{op}: {e}")))?;
            *io_slot.lock().await = Some(io);
            let guest_pid = pod
                .exec(&id, &exec_id, spec, &stdio)
                .await
                .map_err(|e| vm_error(op, &e))?;
            let pid = self.with_proc(&id, &exec_id, |p| {
                p.guest_pid = guest_pid;
                p.state = ProcState::Running;
                p.host_pid
            })?;
            tracing::debug!(container = %id, exec = %exec_id, host_pid = pid, guest_pid, "exec started");
            self.spawn_waiter(pod, id.clone(), exec_id.clone())?;
            self.inner.events.exec_started(&id, &exec_id, pid).await;
            pid
        };
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        tracing::debug!(%id, exec = %exec_id, "Delete");
        let op = Op::new("delete", &id, &exec_id);
        if !exec_id.is_empty() {
            let p = {
                let mut cs = lock(&self.inner.containers);
                let c = cs
                    .get_mut(&id)
                    .ok_or_else(|| not_found(format!("container {id}")))?;
                let running = c
                    .execs
                    .get(&exec_id)
                    .map(|p| p.state == ProcState::Running && p.exited().is_none())
                    .ok_or_else(|| not_found(format!("exec {exec_id} of container {id}")))?;
                if running {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("{op}: the process is still running"),
                    ));
                }
                c.execs.remove(&exec_id)
            };
            let p = p.ok_or_else(|| not_found(format!("exec {exec_id} of container {id}")))?;
            let exit = p.exited();
            return Ok(api::DeleteResponse {
                pid: p.host_pid,
                exit_status: exit.as_ref().map(|e| e.status).unwrap_or(0),
                exited_at: exit.map(|e| e.at).into(),
                ..Default::default()
            });
        }
        let (pid, exit, state) = self.with_proc(&id, "", |p| (p.host_pid, p.exited(), p.state))?;
        if !state.can_delete() && exit.is_none() {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{op}: the container is still running"),
            ));
        }
        let (owns_vm, last) = {
            let cs = lock(&self.inner.containers);
            (
                cs.get(&id).map(|c| c.owns_vm).unwrap_or(false),
                cs.len() == 1 && cs.contains_key(&id),
            )
        };
        // The last task of the pod takes the VM with it (at Shutdown): its
        // guest-side cleanup would be wasted work.
        if !last {
            if let Ok(pod) = self.pod(op) {
                if let Err(e) = pod.delete_container(&id, true).await {
                    if !e.vm_gone() {
                        tracing::warn!(container = %id, error = %e, "DeleteContainer");
                    }
                }
                pod.unshare_container(&id);
            }
        }
        lock(&self.inner.containers).remove(&id);
        lock(&self.inner.oom).forget(&id);
        if let Some(img) = lock(&self.inner.bind_images).remove(&id) {
            let _ = std::fs::remove_file(img);
        }
        if owns_vm && !last {
            // The pod's sandbox went first: the VM goes with it.
            self.stop_pod().await;
        }
        if last {
            // containerd sends Shutdown next; should it not, do not keep an
            // empty VM running.
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                if lock(&me.inner.containers).is_empty() {
                    me.stop_and_exit().await;
                }
            });
        }
        let status_code = exit.as_ref().map(|e| e.status).unwrap_or(0);
        let at = exit.map(|e| e.at).unwrap_or_else(now);
        self.inner
            .events
            .delete(&id, pid, status_code, Some(&at))
            .await;
        Ok(api::DeleteResponse {
            pid,
            exit_status: status_code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        tracing::debug!(%id, exec = %exec_id, "Exec");
        if exec_id.is_empty() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("exec in container {id}: the exec id is empty"),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        {
            let mut cs = lock(&self.inner.containers);
            let c = cs
                .get_mut(&id)
                .ok_or_else(|| not_found(format!("container {id}")))?;
            if c.execs.contains_key(&exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {exec_id} of container {id} already exists"),
                ));
            }
            // An exec runs in the same VM: same host pid as its container.
            let mut p = Proc::new(
                Self::stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal),
                c.init.host_pid,
            );
            p.spec = Some(spec);
            c.execs.insert(exec_id.clone(), p);
        }
        self.inner.events.exec_added(&id, &exec_id).await;
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        self.with_proc(&req.id, &req.exec_id, |_| ())?;
        let op = Op::new("resize the terminal of", &req.id, &req.exec_id);
        let pod = self.pod(op)?;
        pod.resize(&req.id, &req.exec_id, req.height, req.width)
            .await
            .map_err(|e| vm_error(op, &e))?;
        Ok(Empty::new())
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let bundle = lock(&self.inner.containers)
            .get(&req.id)
            .map(|c| (c.bundle.clone(), c.paused))
            .ok_or_else(|| not_found(format!("container {}", req.id)))?;
        self.with_proc(&req.id, &req.exec_id, |p| {
            let exit = p.exited();
            let st = match (p.state, &exit) {
                (_, Some(_)) | (ProcState::Stopped, _) => Status::STOPPED,
                (ProcState::Creating | ProcState::Created, _) => Status::CREATED,
                (ProcState::Running | ProcState::Paused, _) => {
                    if bundle.1 {
                        Status::PAUSED
                    } else {
                        Status::RUNNING
                    }
                }
            };
            api::StateResponse {
                id: req.id.clone(),
                bundle: bundle.0.clone(),
                pid: p.host_pid,
                status: st.into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: exit.as_ref().map(|e| e.status).unwrap_or(0),
                exited_at: exit.map(|e| e.at).into(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        self.with_proc(&req.id, "", |_| ())?;
        let op = Op::new("list the processes of", &req.id, "");
        let procs = self
            .pod(op)?
            .list_processes(&req.id)
            .await
            .map_err(|e| vm_error(op, &e))?;
        // ps-style output: the guest's pids (the only place they appear).
        Ok(api::PidsResponse {
            processes: procs
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: p.pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.with_proc(&req.id, "", |_| ())?;
        let op = Op::new("pause", &req.id, "");
        self.pod(op)?
            .pause(&req.id)
            .await
            .map_err(|e| vm_error(op, &e))?;
        if let Some(c) = lock(&self.inner.containers).get_mut(&req.id) {
            c.paused = true;
        }
        self.inner.events.paused(&req.id).await;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.with_proc(&req.id, "", |_| ())?;
        let op = Op::new("resume", &req.id, "");
        self.pod(op)?
            .resume(&req.id)
            .await
            .map_err(|e| vm_error(op, &e))?;
        if let Some(c) = lock(&self.inner.containers).get_mut(&req.id) {
            c.paused = false;
        }
        self.inner.events.resumed(&req.id).await;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            format!("checkpoint container {}: not supported by Ampoule (the container runs in a microVM; VM snapshots are not wired to checkpoints)", req.id),
        ))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        tracing::debug!(id = %req.id, exec = %req.exec_id, signal = req.signal, all = req.all, "Kill");
        let op = Op::new("signal", &req.id, &req.exec_id);
        let exit = self.with_proc(&req.id, &req.exec_id, |p| p.exited())?;
        if exit.is_some() && !req.all {
            // As runc: a finished process is not found (containerd then
            // treats the kill as done).
            return Err(not_found(format!("{op}: the process already finished")));
        }
        let pod = match self.pod(op) {
            Ok(p) => p,
            Err(_) if exit.is_some() => return Ok(Empty::new()),
            Err(e) => return Err(e),
        };
        match pod.signal(&req.id, &req.exec_id, req.signal, req.all).await {
            Ok(()) => Ok(Empty::new()),
            Err(e) if e.vm_gone() => Ok(Empty::new()),
            Err(e) => Err(vm_error(op, &e)),
        }
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        let io = self.with_proc(&req.id, &req.exec_id, |p| p.io.clone())?;
        let guard = io.lock().await;
        match guard.as_ref() {
            Some(io) => io.close_stdin(),
            None => {
                drop(guard);
                if let Ok(pod) = self.pod(Op::new("close stdin of", &req.id, &req.exec_id)) {
                    let _ = pod.close_stdin(&req.id, &req.exec_id).await;
                }
            }
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.with_proc(&req.id, "", |_| ())?;
        let op = Op::new("update", &req.id, "");
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, format!("{op}: no resources given")))?;
        // containerd sends linux.resources as a JSON-encoded Any.
        serde_json::from_slice::<serde_json::Value>(&resources).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("{op}: the resources are not OCI JSON: {e}"),
            )
        })?;
        self.pod(op)?
            .update(&req.id, resources)
            .await
            .map_err(|e| vm_error(op, &e))?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let tx = self.with_proc(&req.id, &req.exec_id, |p| p.exit.clone())?;
        let mut rx = tx.subscribe();
        drop(tx);
        let info = loop {
            if let Some(info) = rx.borrow_and_update().clone() {
                break info;
            }
            if rx.changed().await.is_err() {
                return Err(status(
                    Code::UNAVAILABLE,
                    format!(
                        "{}: the process was deleted while waiting",
                        Op::new("wait for", &req.id, &req.exec_id)
                    ),
                ));
            }
        };
        Ok(api::WaitResponse {
            exit_status: info.status,
            exited_at: Some(info.at).into(),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        self.with_proc(&req.id, "", |_| ())?;
        let op = Op::new("read the statistics of", &req.id, "");
        let s = self
            .pod(op)?
            .stats(&req.id)
            .await
            .map_err(|e| vm_error(op, &e))?;
        let any =
            stats::metrics_any(&s).map_err(|e| status(Code::INTERNAL, format!("{op}: {e}")))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let pid = self.with_proc(&req.id, "", |p| p.host_pid)?;
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        tracing::debug!(id = %req.id, now = req.now, "Shutdown");
        if !req.now && !lock(&self.inner.containers).is_empty() {
            return Ok(Empty::new());
        }
        // Answer at once; the VM stops and the shim exits right after.
        let me = self.clone();
        tokio::spawn(async move { me.stop_and_exit().await });
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TtrpcContext {
        TtrpcContext {
            mh: ttrpc::MessageHeader::default(),
            metadata: HashMap::new(),
            timeout_nano: 0,
            connection_data: Default::default(),
        }
    }

    fn service() -> TaskService {
        TaskService::new("ns", "id", Events::new(None, "ns"), None)
    }

    /// A container as `create` leaves it (no VM needed): reported as host
    /// pid `host`, known to the agent as guest pid `guest`.
    fn insert(svc: &TaskService, id: &str, host: u32, guest: u32, state: ProcState) {
        let mut init = Proc::new(StdioPaths::default(), host);
        init.guest_pid = guest;
        init.state = state;
        lock(&svc.inner.containers).insert(
            id.to_string(),
            Container {
                bundle: format!("/b/{id}"),
                owns_vm: true,
                init,
                execs: HashMap::new(),
                paused: false,
            },
        );
    }

    fn code_and_message(e: TtrpcError) -> (Code, String) {
        match e {
            TtrpcError::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[tokio::test]
    async fn containerd_sees_the_vm_host_pid_never_the_guest_pid() {
        let svc = service();
        insert(&svc, "c1", 4242, 7, ProcState::Running);
        let state = |exec_id: &str| api::StateRequest {
            id: "c1".into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        assert_eq!(svc.state(&ctx(), state("")).await.unwrap().pid, 4242);
        let c = svc
            .connect(
                &ctx(),
                api::ConnectRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((c.task_pid, c.shim_pid), (4242, std::process::id()));
        // An exec of the container: the same VM, the same host pid.
        svc.exec(
            &ctx(),
            api::ExecProcessRequest {
                id: "c1".into(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        svc.with_proc("c1", "e1", |p| p.guest_pid = 9).unwrap();
        assert_eq!(svc.state(&ctx(), state("e1")).await.unwrap().pid, 4242);
        let d = svc
            .delete(
                &ctx(),
                api::DeleteRequest {
                    id: "c1".into(),
                    exec_id: "e1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(d.pid, 4242);
        // The exit of the init process carries it too.
        let (pid, tx) = svc
            .with_proc("c1", "", |p| (p.host_pid, p.exit.clone()))
            .unwrap();
        svc.finish("c1", "", pid, &tx, 0).await;
        let d = svc
            .delete(
                &ctx(),
                api::DeleteRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(d.pid, 4242);
    }

    #[tokio::test]
    async fn the_sandbox_guest_pid_is_known_only_while_its_init_runs() {
        let svc = service();
        assert_eq!(svc.sandbox_guest_pid(), None);
        insert(&svc, "sb", 4242, 7, ProcState::Running);
        assert_eq!(svc.sandbox_guest_pid(), Some(7));
        let tx = svc.with_proc("sb", "", |p| p.exit.clone()).unwrap();
        svc.finish("sb", "", 4242, &tx, 137).await;
        assert_eq!(svc.sandbox_guest_pid(), None);
    }

    #[tokio::test]
    async fn errors_carry_the_code_containerd_acts_on_and_name_the_task() {
        let svc = service();
        insert(&svc, "c1", 4242, 7, ProcState::Running);
        // Wrong state: FailedPrecondition.
        let e = svc
            .start(
                &ctx(),
                api::StartRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            code_and_message(e),
            (
                Code::FAILED_PRECONDITION,
                "start container c1: already started".into()
            )
        );
        let e = svc
            .delete(
                &ctx(),
                api::DeleteRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            code_and_message(e),
            (
                Code::FAILED_PRECONDITION,
                "delete container c1: the container is still running".into()
            )
        );
        // Twice the same id: AlreadyExists.
        let e = svc
            .create(
                &ctx(),
                api::CreateTaskRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code_and_message(e).0, Code::ALREADY_EXISTS);
        let exec = api::ExecProcessRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            ..Default::default()
        };
        svc.exec(&ctx(), exec.clone()).await.unwrap();
        let e = svc.exec(&ctx(), exec).await.unwrap_err();
        assert_eq!(
            code_and_message(e),
            (
                Code::ALREADY_EXISTS,
                "exec e1 of container c1 already exists".into()
            )
        );
        // Unknown ids: NotFound.
        let e = svc
            .pids(
                &ctx(),
                api::PidsRequest {
                    id: "nope".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            code_and_message(e),
            (Code::NOT_FOUND, "container nope: not found".into())
        );
        let e = svc
            .start(
                &ctx(),
                api::StartRequest {
                    id: "c1".into(),
                    exec_id: "e9".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            code_and_message(e),
            (Code::NOT_FOUND, "exec e9 of container c1: not found".into())
        );
        // An operation needing the VM when there is none: FailedPrecondition.
        let e = svc
            .pause(
                &ctx(),
                api::PauseRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            code_and_message(e),
            (
                Code::FAILED_PRECONDITION,
                "pause container c1: the pod's VM is not running".into()
            )
        );
    }

    #[test]
    fn spec_fields() {
        let spec = serde_json::json!({
            "annotations": {"a": "b", "n": 1},
            "linux": {"cgroupsPath": "/default/x"}
        });
        assert_eq!(cgroups_path(&spec).as_deref(), Some("/default/x"));
        assert_eq!(annotations(&spec).get("a").map(String::as_str), Some("b"));
        assert!(!annotations(&spec).contains_key("n"));
        assert_eq!(cgroups_path(&serde_json::json!({})), None);
    }

    #[tokio::test]
    async fn unknown_tasks_are_not_found_and_checkpoint_is_unimplemented() {
        let svc = TaskService::new("ns", "id", Events::new(None, "ns"), None);
        let code = |e: TtrpcError| match e {
            TtrpcError::RpcStatus(s) => s.code(),
            other => panic!("unexpected {other:?}"),
        };
        let e = svc
            .state(
                &ctx(),
                api::StateRequest {
                    id: "x".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::NOT_FOUND);
        let e = svc
            .kill(
                &ctx(),
                api::KillRequest {
                    id: "x".into(),
                    signal: 9,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::NOT_FOUND);
        let e = svc
            .checkpoint(
                &ctx(),
                api::CheckpointTaskRequest {
                    id: "x".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(e), Code::UNIMPLEMENTED);
    }

    #[tokio::test]
    async fn shutdown_with_no_task_signals_exit() {
        let svc = TaskService::new("ns", "id", Events::new(None, "ns"), None);
        let exit = svc.exit_signal();
        svc.shutdown(&ctx(), api::ShutdownRequest::default())
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), exit.notified())
            .await
            .expect("exit signalled");
    }
}
