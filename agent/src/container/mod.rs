//! Containers and their processes in the guest.

pub mod caps;
pub mod cgroup;
pub mod helper;
pub mod hooks;
pub mod intake;
pub mod mounts;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod support;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ampoule_agent_api as api;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_vsock::VsockStream;

use crate::reaper::{Exit, Reaper};
use crate::stdio::{pump_input, pump_output, valid_id, FdStream, Router, StreamKey, StreamKind};
use crate::syscall::Linux;
use process::{ChildStdio, CreateSetup, HelperConfig, NsPlan, Setup};

/// How long a helper may take to get a process ready (TCG guests are slow).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an exec after Start may take to report its outcome.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long WaitProcess lets a process's output drain after it exited
/// before answering anyway. Pipes reach EOF as soon as the last writer
/// dies, so this is only waited in full when a process left behind (no pid
/// namespace: nothing kills it with the init) still holds the stdout or
/// stderr. The stream keeps flowing to the host after the answer: the CLI
/// and the shim drain it under their own bounds.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("process {exec_id:?} of container {container_id:?} not found")]
    ProcessNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl From<rootfs::RootfsError> for ContainerError {
    fn from(e: rootfs::RootfsError) -> Self {
        match e {
            rootfs::RootfsError::NoDevice(_)
            | rootfs::RootfsError::NoLayers
            | rootfs::RootfsError::BadSerial(_)
            | rootfs::RootfsError::BadSharedPath(_) => {
                ContainerError::InvalidArgument(e.to_string())
            }
            rootfs::RootfsError::Mount { .. } => ContainerError::Internal(e.to_string()),
        }
    }
}

impl From<cgroup::CgroupError> for ContainerError {
    fn from(e: cgroup::CgroupError) -> Self {
        match e {
            cgroup::CgroupError::File { .. } => ContainerError::Internal(e.to_string()),
            _ => ContainerError::InvalidArgument(e.to_string()),
        }
    }
}

impl From<process::ProcessError> for ContainerError {
    fn from(e: process::ProcessError) -> Self {
        match e {
            process::ProcessError::Sys { .. } => ContainerError::Internal(e.to_string()),
            // Helper failures are mostly the spec's doing (binary not found,
            // bad cwd, bad mount): report them as the caller's.
            _ => ContainerError::FailedPrecondition(e.to_string()),
        }
    }
}

impl From<seccomp::SeccompError> for ContainerError {
    fn from(e: seccomp::SeccompError) -> Self {
        ContainerError::InvalidArgument(e.to_string())
    }
}

impl From<support::Unsupported> for ContainerError {
    fn from(e: support::Unsupported) -> Self {
        ContainerError::InvalidArgument(e.to_string())
    }
}

/// Relays one extra descriptor of a process and the host's stream for it:
/// host bytes into a descriptor the process reads, its bytes out of one it
/// writes, both ways for a socket. Neither end waits for the process's
/// exit: each copy ends at its source's end.
async fn pump_extra(mode: api::ExtraFdMode, conn: oneshot::Receiver<VsockStream>, fd: FdStream) {
    match mode {
        api::ExtraFdMode::EXTRA_FD_READ => {
            // Never closed early: the host's end of the stream ends it.
            let (_keep, never) = oneshot::channel();
            pump_input(conn, fd, never).await;
        }
        api::ExtraFdMode::EXTRA_FD_WRITE => {
            pump_output(fd, conn, watch::channel(false).0).await;
        }
        api::ExtraFdMode::EXTRA_FD_READ_WRITE => {
            let Ok(mut conn) = conn.await else { return };
            let mut fd = fd;
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut fd).await;
        }
    }
}

/// Logs the fields of a spec that are present but deliberately not applied.
pub(crate) fn log_ignored(container: &str, ignored: &[support::Ignored]) {
    for i in ignored {
        tracing::warn!(
            container,
            field = i.field,
            why = i.why,
            "spec field not applied"
        );
    }
}

impl From<mounts::MountError> for ContainerError {
    fn from(e: mounts::MountError) -> Self {
        ContainerError::InvalidArgument(e.to_string())
    }
}

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |e| ContainerError::Internal(format!("{what}: {e}"))
}

/// One process of a container (its init or an exec).
pub struct Process {
    pub pid: i32,
    exit: watch::Receiver<Option<Exit>>,
    outputs: Vec<watch::Receiver<bool>>,
    stdin_close: Mutex<Option<oneshot::Sender<()>>>,
    pty: Option<OwnedFd>,
    /// The sync socket of a process held before exec (init until Start).
    sync: Mutex<Option<OwnedFd>>,
    oom_base: u64,
}

impl Process {
    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// The process's exit, once it was reaped; its output is given at most
    /// `grace` more to drain first, so a normal exit answers after the last
    /// byte was sent but a leftover holding the pipe cannot hold the exit.
    async fn wait_exit(&self, grace: Duration) -> Exit {
        let mut exit_rx = self.exit.clone();
        let exit = match exit_rx.wait_for(|e| e.is_some()).await {
            Ok(e) => e.unwrap_or(Exit::Code(255)),
            Err(_) => Exit::Code(255),
        };
        let drained = async {
            for o in &self.outputs {
                let mut o = o.clone();
                let _ = o.wait_for(|d| *d).await;
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::info!(
                pid = self.pid,
                "output still open {grace:?} after exit (a process left behind holds it); \
                 answering the exit, the output keeps flowing"
            );
        }
        exit
    }
}

pub struct Container {
    pub id: String,
    rootfs: rootfs::Plan,
    cgroup: PathBuf,
    /// `linux.seccomp`, applied to the init and to every exec.
    seccomp: Option<seccomp::Plan>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    started: Mutex<bool>,
    oom_task: tokio::task::AbortHandle,
    /// OOM kills already reported as events.
    oom_reported: Arc<AtomicU64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Stopped,
}

impl Container {
    pub fn phase(&self) -> Phase {
        if self.init.exited().is_some() {
            Phase::Stopped
        } else if *lock(&self.started) {
            Phase::Running
        } else {
            Phase::Created
        }
    }

    fn process(&self, exec_id: &str) -> Result<Arc<Process>, ContainerError> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::ProcessNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The agent-side ends of a new process's stdio.
struct StdioEnds {
    child: ChildStdio,
    stdin_w: Option<OwnedFd>,
    stdout_r: Option<OwnedFd>,
    stderr_r: Option<OwnedFd>,
    /// The agent's end of each extra descriptor, with its number and mode.
    extra: Vec<(u32, api::ExtraFdMode, OwnedFd)>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ContainerError::Internal(format!("pipe: {e}")))
}

/// The extra descriptors' ends: a pipe for one the process reads or
/// writes, a stream socket pair for one it uses both ways. They must be
/// 3, 4, ... in order (`--preserve-fds`), at most MAX_EXTRA_FDS.
fn extra_ends(want: &api::StdioConfig, ends: &mut StdioEnds) -> Result<(), ContainerError> {
    if want.extra_fds.len() > api::MAX_EXTRA_FDS as usize {
        return Err(ContainerError::InvalidArgument(format!(
            "{} extra descriptors, at most {}",
            want.extra_fds.len(),
            api::MAX_EXTRA_FDS
        )));
    }
    for (i, x) in want.extra_fds.iter().enumerate() {
        if x.fd != 3 + i as u32 {
            return Err(ContainerError::InvalidArgument(format!(
                "extra descriptor {} given where {} was due (they are 3, 4, ... in order)",
                x.fd,
                3 + i
            )));
        }
        let mode = x.mode.enum_value().map_err(|v| {
            ContainerError::InvalidArgument(format!("extra descriptor {}: mode {v}", x.fd))
        })?;
        let (child, ours) = match mode {
            // (the process's end, the agent's end)
            api::ExtraFdMode::EXTRA_FD_READ => pipe()?,
            api::ExtraFdMode::EXTRA_FD_WRITE => {
                let (r, w) = pipe()?;
                (w, r)
            }
            api::ExtraFdMode::EXTRA_FD_READ_WRITE => {
                let (a, b) = nix::sys::socket::socketpair(
                    nix::sys::socket::AddressFamily::Unix,
                    nix::sys::socket::SockType::Stream,
                    None,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                )
                .map_err(|e| ContainerError::Internal(format!("socketpair: {e}")))?;
                (a, b)
            }
        };
        ends.child.extra.push(child);
        ends.extra.push((x.fd, mode, ours));
    }
    Ok(())
}

fn stdio_ends(want: &api::StdioConfig, terminal: bool) -> Result<StdioEnds, ContainerError> {
    let mut ends = StdioEnds {
        child: ChildStdio {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
            extra: Vec::new(),
        },
        stdin_w: None,
        stdout_r: None,
        stderr_r: None,
        extra: Vec::new(),
    };
    extra_ends(want, &mut ends)?;
    if terminal {
        return Ok(ends);
    }
    if want.stdin {
        let (r, w) = pipe()?;
        ends.child.stdin = Stdio::from(r);
        ends.stdin_w = Some(w);
    }
    if want.stdout {
        let (r, w) = pipe()?;
        ends.child.stdout = Stdio::from(w);
        ends.stdout_r = Some(r);
    }
    if want.stderr {
        let (r, w) = pipe()?;
        ends.child.stderr = Stdio::from(w);
        ends.stderr_r = Some(r);
    }
    Ok(ends)
}

/// Maps OCI namespaces to clone flags (the time namespace is refused).
pub fn namespace_plan(
    namespaces: &[oci_spec::runtime::LinuxNamespace],
) -> Result<Vec<NsPlan>, ContainerError> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let mut out = Vec::new();
    for ns in namespaces {
        let flag = match ns.typ() {
            T::Mount => libc::CLONE_NEWNS,
            T::Pid => libc::CLONE_NEWPID,
            T::Network => libc::CLONE_NEWNET,
            T::Ipc => libc::CLONE_NEWIPC,
            T::Uts => libc::CLONE_NEWUTS,
            T::Cgroup => libc::CLONE_NEWCGROUP,
            T::User => libc::CLONE_NEWUSER,
            other => {
                return Err(ContainerError::InvalidArgument(format!(
                    "namespace {other:?} is not supported by the Ampoule agent"
                )))
            }
        };
        out.push(NsPlan {
            flag,
            path: ns.path().clone(),
        });
    }
    Ok(out)
}

/// The hostname and domainname to set. An empty one is not set at all, so
/// it needs no UTS namespace (kubelet gives host-network pods an empty
/// hostname and none); as runc, a non-empty one without a UTS namespace of
/// the container's own is refused, since it would rename the guest.
pub fn uts_names(
    hostname: Option<&str>,
    domainname: Option<&str>,
    namespaces: &[NsPlan],
) -> Result<(Option<String>, Option<String>), ContainerError> {
    let set = |n: Option<&str>| n.filter(|n| !n.is_empty()).map(str::to_string);
    let (hostname, domainname) = (set(hostname), set(domainname));
    if (hostname.is_some() || domainname.is_some())
        && !namespaces.iter().any(|n| n.flag == libc::CLONE_NEWUTS)
    {
        return Err(ContainerError::InvalidArgument(
            "hostname/domainname need a uts namespace in linux.namespaces".into(),
        ));
    }
    Ok((hostname, domainname))
}

/// As runc: only sysctls of a namespace the container has its own of
/// (ipc: kernel.msg*/sem/shm*, fs.mqueue.*; net: net.*; uts: hostname,
/// domainname), so a container never changes the guest's settings.
pub fn check_sysctl(key: &str, namespaces: &[NsPlan]) -> Result<(), ContainerError> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let bad = |why: &str| ContainerError::InvalidArgument(format!("sysctl {key:?}: {why}"));
    if key.is_empty()
        || key.contains("..")
        || key.starts_with(['.', '/'])
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return Err(bad("not a sysctl name"));
    }
    let norm = key.replace('/', ".");
    let has = |flag| namespaces.iter().any(|n| n.flag == flag);
    let (flag, ns) = if IPC.contains(&norm.as_str()) || norm.starts_with("fs.mqueue.") {
        (libc::CLONE_NEWIPC, "ipc")
    } else if norm.starts_with("net.") {
        (libc::CLONE_NEWNET, "network")
    } else if norm == "kernel.hostname" || norm == "kernel.domainname" {
        (libc::CLONE_NEWUTS, "uts")
    } else {
        return Err(bad("not in a separate kernel namespace"));
    };
    if has(flag) {
        Ok(())
    } else {
        Err(bad(&format!("needs a {ns} namespace in linux.namespaces")))
    }
}

pub(crate) fn container_paths(list: &Option<Vec<String>>) -> Result<Vec<PathBuf>, ContainerError> {
    let mut out = Vec::new();
    for p in list.iter().flatten() {
        let rel = mounts::clean_relative(Path::new(p)).ok_or_else(|| {
            ContainerError::InvalidArgument(format!("path {p:?} must be absolute without `..`"))
        })?;
        out.push(Path::new("/").join(rel));
    }
    Ok(out)
}

/// Everything about the containers of this sandbox.
pub struct Manager {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    reaper: Arc<Reaper>,
    router: Arc<Router<VsockStream>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Manager {
    pub fn new(reaper: Arc<Reaper>, router: Arc<Router<VsockStream>>) -> Manager {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Manager {
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            reaper,
            router,
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    fn check_id(what: &str, id: &str) -> Result<(), ContainerError> {
        if valid_id(id) {
            Ok(())
        } else {
            Err(ContainerError::InvalidArgument(format!(
                "invalid {what} {id:?}: 1-128 of [A-Za-z0-9_.-]"
            )))
        }
    }

    /// A container's cgroup is its own: not another container's, above or
    /// below it, nor a cgroup that already has processes (killing the
    /// container kills everything in it).
    fn check_cgroup_free(&self, cg: &Path) -> Result<(), ContainerError> {
        let taken = lock(&self.containers)
            .values()
            .find(|c| c.cgroup.starts_with(cg) || cg.starts_with(&c.cgroup))
            .map(|c| c.id.clone());
        if let Some(other) = taken {
            return Err(ContainerError::InvalidArgument(format!(
                "cgroup {} overlaps the cgroup of container {other:?}",
                cg.display()
            )));
        }
        let busy = !cgroup::procs(&Linux, cg).is_empty()
            || std::fs::read_dir(cg)
                .map(|d| d.flatten().any(|e| e.path().is_dir()))
                .unwrap_or(false);
        if busy {
            return Err(ContainerError::InvalidArgument(format!(
                "cgroup {} is already in use",
                cg.display()
            )));
        }
        Ok(())
    }

    pub async fn create(&self, req: api::CreateContainerRequest) -> Result<u32, ContainerError> {
        let id = req.container_id.clone();
        Self::check_id("container id", &id)?;
        {
            let containers = lock(&self.containers);
            let mut creating = lock(&self.creating);
            if containers.contains_key(&id) || !creating.insert(id.clone()) {
                return Err(ContainerError::Exists(format!("container {id:?}")));
            }
        }
        let r = self.create_inner(&req).await;
        lock(&self.creating).remove(&id);
        match r {
            Ok(c) => {
                let pid = c.init.pid as u32;
                lock(&self.containers).insert(id, c);
                Ok(pid)
            }
            Err(e) => {
                self.router.forget_container(&id);
                Err(e)
            }
        }
    }

    async fn create_inner(
        &self,
        req: &api::CreateContainerRequest,
    ) -> Result<Arc<Container>, ContainerError> {
        let id = req.container_id.clone();
        let intake::ContainerSpec {
            spec,
            linux,
            process: pplan,
            namespaces,
            devices,
            masked_paths,
            readonly_paths,
            readonly_root,
            hostname,
            domainname,
            resource_writes: writes,
            seccomp,
            sysctl,
            id_mappings,
        } = intake::container_spec(&id, &req.oci_spec)?;

        let shared_root = Path::new(api::SHARED_FS_GUEST_DIR);
        let (rplan, steps) = if !req.shared_rootfs.is_empty() {
            if !req.rootfs_layers.is_empty() {
                return Err(ContainerError::InvalidArgument(
                    "a shared rootfs and rootfs layers were both given".into(),
                ));
            }
            tokio::task::spawn_blocking(|| {
                rootfs::mount_shared_fs(
                    &Linux,
                    api::SHARED_FS_TAG,
                    Path::new(api::SHARED_FS_GUEST_DIR),
                )
            })
            .await
            .map_err(|e| ContainerError::Internal(e.to_string()))??;
            let rplan = rootfs::plan_shared(&id, shared_root, &req.shared_rootfs)?;
            let steps =
                intake::shared_mounts(&spec, &rplan.rootfs, shared_root, &req.shared_binds)?;
            (rplan, steps)
        } else {
            // Drives: found by serial; may wait briefly, so off the async threads.
            let layers = req.rootfs_layers.clone();
            let binds = req
                .bind_sources
                .clone()
                .into_option()
                .filter(|b| !b.serial.is_empty());
            let (drives, bind_drive) = tokio::task::spawn_blocking(move || {
                let sys_block = Path::new("/sys/block");
                let to_drive =
                    |b: &api::BlockDevice| -> Result<rootfs::Drive, rootfs::RootfsError> {
                        Ok(rootfs::Drive {
                            device: rootfs::find_device(sys_block, &b.serial)?,
                            fstype: if b.fstype.is_empty() {
                                "erofs".into()
                            } else {
                                b.fstype.clone()
                            },
                            options: b.options.clone(),
                        })
                    };
                let drives = layers.iter().map(to_drive).collect::<Result<Vec<_>, _>>()?;
                let bind_drive = binds.as_ref().map(to_drive).transpose()?;
                Ok::<_, rootfs::RootfsError>((drives, bind_drive))
            })
            .await
            .map_err(|e| ContainerError::Internal(e.to_string()))??;
            tracing::debug!(container = %id, uptime_ms = crate::sysinfo::uptime_ms(), ?drives, "drives found");
            let rplan = rootfs::plan(&id, &drives, bind_drive.as_ref())?;
            let sources = match rplan.binds.as_deref() {
                Some(root) => mounts::BindSources::Drive(root),
                None => mounts::BindSources::AsWritten,
            };
            let steps = mounts::plan(
                spec.mounts().as_deref().unwrap_or(&[]),
                &rplan.rootfs,
                sources,
            )?;
            (rplan, steps)
        };
        let populate_dev = mounts::mounts_dev(&steps, &rplan.rootfs);
        // The guest's hooks, checked now; the host runs the other kinds.
        let guest_hooks = hooks::GuestHooks::plan(
            spec.hooks().as_ref(),
            hooks::StateBase {
                id: id.clone(),
                bundle: rplan.base.clone(),
                annotations: spec
                    .annotations()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            },
        )
        .map_err(|e| ContainerError::InvalidArgument(e.to_string()))?;
        let cg = cgroup::container_dir_for(&id, linux.cgroups_path().as_deref())?;
        self.check_cgroup_free(&cg)?;
        let cfg = HelperConfig {
            setup: Setup::Create(Box::new(CreateSetup {
                rootfs: rplan.rootfs.clone(),
                mounts: steps,
                populate_dev,
                devices,
                namespaces,
                hostname,
                domainname,
                masked_paths,
                readonly_paths,
                readonly_root,
                sysctl,
                hooks: guest_hooks,
                id_mappings,
            })),
            cgroup: Some(cg.clone()),
            process: pplan.clone(),
            seccomp: seccomp.clone(),
            extra_fds: req.stdio.extra_fds.len() as u32,
        };

        // Mount, cgroup, helper; undo on failure.
        let rp = rplan.clone();
        tokio::task::spawn_blocking(move || rootfs::mount(&Linux, &rp))
            .await
            .map_err(|e| ContainerError::Internal(e.to_string()))??;
        tracing::debug!(container = %id, uptime_ms = crate::sysinfo::uptime_ms(), "rootfs mounted");
        let made = async {
            cgroup::create_dir(&Linux, &cg)?;
            cgroup::apply(&Linux, &cg, &writes)?;
            self.spawn_process(&id, "", cfg, &req.stdio, &cg).await
        }
        .await;
        // OOM kills counted before the container existed are not its own.
        let oom_reported = Arc::new(AtomicU64::new(cgroup::oom_kills(&Linux, &cg)));
        let init = match made {
            Ok(p) => p,
            Err(e) => {
                let rp = rplan.clone();
                let cgc = cg.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    kill_cgroup(&cgc);
                    remove_cgroup(&cgc);
                    rootfs::unmount(&Linux, &rp);
                })
                .await;
                return Err(e);
            }
        };
        let oom_task = tokio::spawn(watch_oom(
            id.clone(),
            cg.clone(),
            Arc::clone(&oom_reported),
            self.oom_tx.clone(),
        ))
        .abort_handle();
        tracing::info!(container = %id, pid = init.pid, "container created");
        Ok(Arc::new(Container {
            id,
            rootfs: rplan,
            cgroup: cg,
            seccomp,
            init,
            execs: Mutex::new(HashMap::new()),
            started: Mutex::new(false),
            oom_task,
            oom_reported,
        }))
    }

    /// Launches a helper for a process and wires its stdio.
    async fn spawn_process(
        &self,
        container_id: &str,
        exec_id: &str,
        cfg: HelperConfig,
        want: &protobuf::MessageField<api::StdioConfig>,
        cg: &Path,
    ) -> Result<Arc<Process>, ContainerError> {
        let want = want.clone().unwrap_or_default();
        let terminal = cfg.process.terminal;
        let ends = stdio_ends(&want, terminal)?;
        let reaper = Arc::clone(&self.reaper);
        let oom_base = cgroup::oom_kills(&Linux, cg);
        let child = ends.child;
        let launched = tokio::task::spawn_blocking(move || {
            process::launch(&reaper, cfg, child, READY_TIMEOUT)
        })
        .await
        .map_err(|e| ContainerError::Internal(e.to_string()))??;

        let key = |kind| StreamKey::new(container_id, exec_id, kind);
        let mut outputs = Vec::new();
        let mut stdin_close = None;
        let out = |src: OwnedFd,
                   kind,
                   wanted: bool,
                   outputs: &mut Vec<watch::Receiver<bool>>|
         -> Result<(), ContainerError> {
            let (done_tx, done_rx) = watch::channel(false);
            let stream = FdStream::new(src).map_err(internal("stdio"))?;
            let conn = if wanted {
                self.router.expect(key(kind))
            } else {
                oneshot::channel().1
            };
            tokio::spawn(pump_output(stream, conn, done_tx));
            outputs.push(done_rx);
            Ok(())
        };
        let mut input = |sink: OwnedFd| -> Result<(), ContainerError> {
            let (tx, rx) = oneshot::channel();
            let stream = FdStream::new(sink).map_err(internal("stdio"))?;
            tokio::spawn(pump_input(
                self.router.expect(key(StreamKind::Stdin)),
                stream,
                rx,
            ));
            stdin_close = Some(tx);
            Ok(())
        };
        let mut pty = None;
        if terminal {
            let master = launched.pty_master.ok_or_else(|| {
                ContainerError::Internal("terminal requested but no pty came back".into())
            })?;
            let dup = || master.try_clone().map_err(internal("dup pty"));
            out(dup()?, StreamKind::Stdout, want.stdout, &mut outputs)?;
            if want.stdin {
                input(dup()?)?;
            }
            pty = Some(master);
        } else {
            if let Some(r) = ends.stdout_r {
                out(r, StreamKind::Stdout, true, &mut outputs)?;
            }
            if let Some(r) = ends.stderr_r {
                out(r, StreamKind::Stderr, true, &mut outputs)?;
            }
            if let Some(w) = ends.stdin_w {
                input(w)?;
            }
        }
        for (fd, mode, ours) in ends.extra {
            let conn = self.router.expect(key(StreamKind::Extra(fd)));
            let stream = FdStream::new(ours).map_err(internal("extra descriptor"))?;
            tokio::spawn(pump_extra(mode, conn, stream));
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        let exit = launched.exit;
        let (cid, eid, pid) = (container_id.to_string(), exec_id.to_string(), launched.pid);
        tokio::spawn(async move {
            if let Ok(e) = exit.await {
                tracing::info!(container = %cid, exec = %eid, pid, status = e.status(), "process exited");
                let _ = exit_tx.send(Some(e));
            }
        });
        Ok(Arc::new(Process {
            pid: launched.pid,
            exit: exit_rx,
            outputs,
            stdin_close: Mutex::new(stdin_close),
            pty,
            sync: Mutex::new(Some(launched.sync)),
            oom_base,
        }))
    }

    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        if c.phase() != Phase::Created {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id:?} is {:?}, not created",
                c.phase()
            )));
        }
        let sync = lock(&c.init.sync).take().ok_or_else(|| {
            ContainerError::FailedPrecondition(format!("container {id:?} is already starting"))
        })?;
        tokio::task::spawn_blocking(move || process::start(&sync, START_TIMEOUT))
            .await
            .map_err(|e| ContainerError::Internal(e.to_string()))??;
        *lock(&c.started) = true;
        tracing::info!(container = %id, "container started");
        Ok(())
    }

    pub async fn exec(&self, req: api::ExecProcessRequest) -> Result<u32, ContainerError> {
        let c = self.get(&req.container_id)?;
        Self::check_id("exec id", &req.exec_id)?;
        if c.phase() != Phase::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {:?} is {:?}, not running",
                c.id,
                c.phase()
            )));
        }
        if lock(&c.execs).contains_key(&req.exec_id) {
            return Err(ContainerError::Exists(format!("exec {:?}", req.exec_id)));
        }
        let pplan = intake::process_spec(&req.container_id, &req.process)?;
        let cfg = HelperConfig {
            setup: Setup::Exec {
                init_pid: c.init.pid,
            },
            cgroup: Some(c.cgroup.clone()),
            process: pplan,
            seccomp: c.seccomp.clone(),
            extra_fds: req.stdio.extra_fds.len() as u32,
        };
        let p = self
            .spawn_process(&c.id, &req.exec_id, cfg, &req.stdio, &c.cgroup)
            .await
            .inspect_err(|_| self.router.forget_process(&c.id, &req.exec_id))?;
        let sync = lock(&p.sync).take();
        if let Some(sync) = sync {
            tokio::task::spawn_blocking(move || process::start(&sync, START_TIMEOUT))
                .await
                .map_err(|e| ContainerError::Internal(e.to_string()))??;
        }
        lock(&c.execs).insert(req.exec_id.clone(), Arc::clone(&p));
        Ok(p.pid as u32)
    }

    pub fn signal(&self, req: &api::SignalProcessRequest) -> Result<(), ContainerError> {
        let c = self.get(&req.container_id)?;
        let sig = if req.signal == 0 {
            None
        } else {
            Some(Signal::try_from(req.signal as i32).map_err(|_| {
                ContainerError::InvalidArgument(format!("invalid signal {}", req.signal))
            })?)
        };
        if req.all {
            if sig == Some(Signal::SIGKILL) {
                kill_cgroup(&c.cgroup);
            }
            for pid in cgroup::procs(&Linux, &c.cgroup) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
            return Ok(());
        }
        let p = c.process(&req.exec_id)?;
        if p.exited().is_some() {
            return Err(ContainerError::FailedPrecondition(format!(
                "process {:?} of container {:?} has already exited",
                req.exec_id, c.id
            )));
        }
        nix::sys::signal::kill(Pid::from_raw(p.pid), sig)
            .map_err(|e| ContainerError::Internal(format!("kill {}: {e}", p.pid)))
    }

    pub async fn wait(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<api::WaitProcessResponse, ContainerError> {
        let c = self.get(container_id)?;
        let p = c.process(exec_id)?;
        let exit = p.wait_exit(OUTPUT_GRACE).await;
        // Killed by the OOM killer itself (SIGKILL), or a shell reporting
        // its OOM-killed child (exit 137), while the cgroup counted a kill.
        let oom_killed = exit.status() == 128 + libc::SIGKILL
            && cgroup::oom_kills(&Linux, &c.cgroup) > p.oom_base;
        Ok(api::WaitProcessResponse {
            exit_status: exit.status(),
            signal: exit.signal(),
            oom_killed,
            ..Default::default()
        })
    }

    pub fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), ContainerError> {
        let p = self.get(container_id)?.process(exec_id)?;
        if let Some(tx) = lock(&p.stdin_close).take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    pub fn resize(&self, req: &api::ResizeTtyRequest) -> Result<(), ContainerError> {
        let p = self.get(&req.container_id)?.process(&req.exec_id)?;
        let pty = p.pty.as_ref().ok_or_else(|| {
            ContainerError::FailedPrecondition(format!("process {:?} has no terminal", req.exec_id))
        })?;
        let ws = libc::winsize {
            ws_row: req.rows.min(u16::MAX as u32) as u16,
            ws_col: req.cols.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ on the pty master we own, reading `ws` from
        // this frame.
        let r = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r != 0 {
            return Err(ContainerError::Internal(format!(
                "resize: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    pub fn list_processes(&self, id: &str) -> Result<api::ListProcessesResponse, ContainerError> {
        let c = self.get(id)?;
        let mut known: HashMap<i32, String> = HashMap::new();
        known.insert(c.init.pid, String::new());
        for (eid, p) in lock(&c.execs).iter() {
            known.insert(p.pid, eid.clone());
        }
        let mut resp = api::ListProcessesResponse::default();
        for pid in cgroup::procs(&Linux, &c.cgroup) {
            let args = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|c| *c == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            resp.processes.push(api::ProcessInfo {
                pid: pid as u32,
                exec_id: known.get(&pid).cloned().unwrap_or_default(),
                args,
                ..Default::default()
            });
        }
        Ok(resp)
    }

    pub async fn freeze(&self, id: &str, frozen: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        if c.phase() == Phase::Stopped {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id:?} is stopped"
            )));
        }
        let value = if frozen { "1" } else { "0" };
        std::fs::write(c.cgroup.join("cgroup.freeze"), value).map_err(internal("cgroup.freeze"))?;
        let want = format!("frozen {value}");
        for _ in 0..200 {
            let events =
                std::fs::read_to_string(c.cgroup.join("cgroup.events")).unwrap_or_default();
            if events.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(ContainerError::Internal(format!(
            "container {id:?} did not reach {want:?}"
        )))
    }

    pub fn update(&self, id: &str, resources: &[u8]) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let res = cgroup::parse_resources(resources)?;
        log_ignored(id, &support::check_resources(&res)?);
        let writes = cgroup::resource_writes(&res)?;
        cgroup::apply(&Linux, &c.cgroup, &writes)?;
        Ok(())
    }

    pub fn stats(&self, id: &str) -> Result<api::StatsResponse, ContainerError> {
        let c = self.get(id)?;
        let read = |f: &str| std::fs::read_to_string(c.cgroup.join(f)).unwrap_or_default();
        let single = |f: &str| cgroup::parse_single(&read(f)).unwrap_or(0);
        let cpu = cgroup::parse_flat_keyed(&read("cpu.stat"));
        let events = cgroup::parse_flat_keyed(&read("memory.events"));
        let g = |m: &HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        Ok(api::StatsResponse {
            cpu_usage_usec: g(&cpu, "usage_usec"),
            cpu_user_usec: g(&cpu, "user_usec"),
            cpu_system_usec: g(&cpu, "system_usec"),
            cpu_nr_periods: g(&cpu, "nr_periods"),
            cpu_nr_throttled: g(&cpu, "nr_throttled"),
            cpu_throttled_usec: g(&cpu, "throttled_usec"),
            memory_usage: single("memory.current"),
            memory_limit: single("memory.max"),
            memory_swap_usage: single("memory.swap.current"),
            memory_swap_limit: single("memory.swap.max"),
            memory_stat: cgroup::parse_flat_keyed(&read("memory.stat")),
            pids_current: single("pids.current"),
            pids_limit: single("pids.max"),
            oom_events: g(&events, "oom"),
            oom_kill_events: g(&events, "oom_kill"),
            ..Default::default()
        })
    }

    pub async fn next_oom_event(&self) -> Result<String, ContainerError> {
        self.oom_rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| ContainerError::Internal("OOM event channel closed".into()))
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        if c.phase() == Phase::Running && !force {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id:?} is running: stop it first or delete with force"
            )));
        }
        lock(&self.containers).remove(id);
        c.oom_task.abort();
        // An OOM kill just before the delete still gets its event.
        report_oom(&Linux, &c.id, &c.cgroup, &c.oom_reported, &self.oom_tx);
        // Kill everything, wait (bounded) for init, then undo mounts/cgroup.
        kill_cgroup(&c.cgroup);
        if c.init.exited().is_none() {
            // Not reaped yet, so the pid cannot have been reused.
            let _ = nix::sys::signal::kill(Pid::from_raw(c.init.pid), Signal::SIGKILL);
        }
        let mut exit = c.init.exit.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), exit.wait_for(|e| e.is_some())).await;
        for p in std::iter::once(Arc::clone(&c.init)).chain(lock(&c.execs).values().cloned()) {
            if let Some(tx) = lock(&p.stdin_close).take() {
                let _ = tx.send(());
            }
        }
        let cg = c.cgroup.clone();
        let plan = c.rootfs.clone();
        tokio::task::spawn_blocking(move || {
            remove_cgroup(&cg);
            rootfs::unmount(&Linux, &plan);
        })
        .await
        .map_err(|e| ContainerError::Internal(e.to_string()))?;
        self.router.forget_container(id);
        tracing::info!(container = %id, "container deleted");
        Ok(())
    }

    /// Ids of the containers (for logs and shutdown).
    pub fn ids(&self) -> Vec<String> {
        lock(&self.containers).keys().cloned().collect()
    }
}

/// SIGKILL to every process of a cgroup (cgroup.kill, or one by one).
fn kill_cgroup(cg: &Path) {
    if std::fs::write(cg.join("cgroup.kill"), "1").is_err() {
        for pid in cgroup::procs(&Linux, cg) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// rmdir of a cgroup, retried while its killed processes go away.
fn remove_cgroup(cg: &Path) {
    for _ in 0..100 {
        match std::fs::remove_dir(cg) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    tracing::warn!(cgroup = %cg.display(), "cgroup still busy; left behind");
}

struct InotifyFd(nix::sys::inotify::Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

/// Sends one OOM event for `id` if its cgroup counted more OOM kills than
/// `reported` says were already reported.
fn report_oom(
    sys: &dyn crate::syscall::Syscall,
    id: &str,
    cg: &Path,
    reported: &AtomicU64,
    tx: &mpsc::UnboundedSender<String>,
) {
    let now = cgroup::oom_kills(sys, cg);
    let before = reported.fetch_max(now, Ordering::SeqCst);
    if now > before {
        tracing::warn!(container = %id, oom_kills = now, "OOM kill in container");
        let _ = tx.send(id.to_string());
    }
}

/// Reports OOM kills of a container as they happen: inotify on its
/// memory.events (the kernel signals a modification on every event), with
/// a check right after the watch is in place so nothing before it is lost.
async fn watch_oom(
    id: String,
    cg: PathBuf,
    reported: Arc<AtomicU64>,
    tx: mpsc::UnboundedSender<String>,
) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let events = cg.join("memory.events");
    let Ok(ino) = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) else {
        return;
    };
    if ino.add_watch(&events, AddWatchFlags::IN_MODIFY).is_err() {
        return;
    }
    // SAFETY: the AsyncFd owns the Inotify, whose fd stays open and the
    // same until the AsyncFd is dropped.
    let Ok(fd) = (unsafe { tokio::io::unix::AsyncFd::register(InotifyFd(ino)) }) else {
        return;
    };
    loop {
        report_oom(&Linux, &id, &cg, &reported, &tx);
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        let _ = guard.get_inner().0.read_events();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sysctls_of_the_containers_own_namespaces_are_accepted() {
        let ns = |flags: &[i32]| -> Vec<NsPlan> {
            flags
                .iter()
                .map(|&flag| NsPlan { flag, path: None })
                .collect()
        };
        let all = ns(&[libc::CLONE_NEWNET, libc::CLONE_NEWIPC, libc::CLONE_NEWUTS]);
        for ok in [
            "net.ipv4.ip_forward",
            "net/ipv4/ping_group_range",
            "kernel.shmmax",
            "fs.mqueue.msg_max",
            "kernel.hostname",
        ] {
            assert!(check_sysctl(ok, &all).is_ok(), "{ok}");
        }
        for bad in [
            "vm.swappiness",
            "kernel.panic",
            "net..x",
            "../x",
            "",
            "net.a b",
        ] {
            assert!(check_sysctl(bad, &all).is_err(), "{bad:?}");
        }
        let no_net = ns(&[libc::CLONE_NEWIPC]);
        let e = check_sysctl("net.ipv4.ip_forward", &no_net);
        assert!(
            matches!(e, Err(ContainerError::InvalidArgument(m)) if m.contains("network namespace"))
        );
        assert!(check_sysctl("kernel.sem", &ns(&[libc::CLONE_NEWNET])).is_err());
    }

    #[test]
    fn empty_hostname_needs_no_uts_namespace_but_a_real_one_does() {
        let uts = [NsPlan {
            flag: libc::CLONE_NEWUTS,
            path: None,
        }];
        let no_uts = [NsPlan {
            flag: libc::CLONE_NEWPID,
            path: None,
        }];
        // kubelet, host-network pod: "hostname": "" and no uts namespace.
        assert_eq!(
            uts_names(Some(""), Some(""), &no_uts).expect("empty accepted"),
            (None, None)
        );
        assert_eq!(
            uts_names(None, None, &[]).expect("absent accepted"),
            (None, None)
        );
        for (h, d) in [(Some("pod-a"), None), (None, Some("example.com"))] {
            assert!(
                matches!(
                    uts_names(h, d, &no_uts),
                    Err(ContainerError::InvalidArgument(m)) if m.contains("uts namespace")
                ),
                "{h:?} {d:?}"
            );
        }
        assert_eq!(
            uts_names(Some("pod-a"), Some(""), &uts).expect("with uts"),
            (Some("pod-a".to_string()), None)
        );
    }

    #[test]
    fn namespaces_map_to_clone_flags_and_time_ns_is_refused() {
        let ns: Vec<oci_spec::runtime::LinuxNamespace> = serde_json::from_str(
            r#"[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"},{"type":"mount"},{"type":"ipc"},{"type":"uts"},{"type":"cgroup"}]"#,
        )
        .expect("ns");
        let p = namespace_plan(&ns).expect("plan");
        assert_eq!(
            p[0],
            NsPlan {
                flag: libc::CLONE_NEWPID,
                path: None
            }
        );
        assert_eq!(p[1].path.as_deref(), Some(Path::new("/proc/1/ns/net")));
        assert_eq!(p.len(), 6);
        let user: Vec<oci_spec::runtime::LinuxNamespace> =
            serde_json::from_str(r#"[{"type":"user"}]"#).expect("ns");
        assert_eq!(
            namespace_plan(&user).expect("user")[0].flag,
            libc::CLONE_NEWUSER
        );
        let time: Vec<oci_spec::runtime::LinuxNamespace> =
            serde_json::from_str(r#"[{"type":"time"}]"#).expect("ns");
        assert!(matches!(
            namespace_plan(&time),
            Err(ContainerError::InvalidArgument(_))
        ));
    }

    #[test]
    fn stdio_pipes_exist_only_for_requested_streams_and_never_with_a_terminal() {
        let want = api::StdioConfig {
            stdin: true,
            stdout: true,
            stderr: false,
            ..Default::default()
        };
        let e = stdio_ends(&want, false).expect("pipes");
        assert!(e.stdin_w.is_some() && e.stdout_r.is_some() && e.stderr_r.is_none());
        let e = stdio_ends(&want, true).expect("terminal");
        assert!(e.stdin_w.is_none() && e.stdout_r.is_none() && e.stderr_r.is_none());
        let e = stdio_ends(&api::StdioConfig::default(), false).expect("none");
        assert!(e.stdin_w.is_none() && e.stdout_r.is_none() && e.stderr_r.is_none());
    }

    #[test]
    fn extra_descriptors_are_3_4_in_order_each_a_pipe_its_way_or_a_socket_pair() {
        use std::io::{Read, Write};
        let x = |fd: u32, mode: api::ExtraFdMode| api::ExtraFd {
            fd,
            mode: mode.into(),
            ..Default::default()
        };
        let want = api::StdioConfig {
            extra_fds: vec![
                x(3, api::ExtraFdMode::EXTRA_FD_READ),
                x(4, api::ExtraFdMode::EXTRA_FD_WRITE),
                x(5, api::ExtraFdMode::EXTRA_FD_READ_WRITE),
            ],
            ..Default::default()
        };
        let mut e = stdio_ends(&want, true).expect("ends, with a terminal too");
        assert_eq!(e.child.extra.len(), 3);
        let numbers: Vec<u32> = e.extra.iter().map(|(fd, _, _)| *fd).collect();
        assert_eq!(numbers, [3, 4, 5]);
        // fd 3: the agent writes, the process reads.
        let (_, _, ours) = e.extra.remove(0);
        std::fs::File::from(ours).write_all(b"in").expect("write");
        let mut got = [0u8; 2];
        std::fs::File::from(e.child.extra.remove(0))
            .read_exact(&mut got)
            .expect("read");
        assert_eq!(&got, b"in");
        // fd 4: the process writes, the agent reads.
        let (_, _, ours) = e.extra.remove(0);
        std::fs::File::from(e.child.extra.remove(0))
            .write_all(b"out")
            .expect("write");
        let mut got = [0u8; 3];
        std::fs::File::from(ours)
            .read_exact(&mut got)
            .expect("read");
        assert_eq!(&got, b"out");
        // Out of order or too many: refused.
        let gap = api::StdioConfig {
            extra_fds: vec![x(4, api::ExtraFdMode::EXTRA_FD_READ)],
            ..Default::default()
        };
        assert!(stdio_ends(&gap, false).is_err());
        let many = api::StdioConfig {
            extra_fds: (0..=api::MAX_EXTRA_FDS)
                .map(|i| x(3 + i, api::ExtraFdMode::EXTRA_FD_READ))
                .collect(),
            ..Default::default()
        };
        assert!(stdio_ends(&many, false).is_err());
    }

    #[test]
    fn each_new_oom_kill_is_reported_once() {
        let rec = crate::syscall::Recording::default();
        let cg = Path::new("/cg");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reported = AtomicU64::new(0);
        rec.set_file("/cg/memory.events", "oom 1\noom_kill 1\n");
        report_oom(&rec, "c", cg, &reported, &tx);
        report_oom(&rec, "c", cg, &reported, &tx);
        assert_eq!(rx.try_recv().ok().as_deref(), Some("c"));
        assert!(
            rx.try_recv().is_err(),
            "the same kill is not reported twice"
        );
        rec.set_file("/cg/memory.events", "oom 2\noom_kill 2\n");
        report_oom(&rec, "c", cg, &reported, &tx);
        assert_eq!(rx.try_recv().ok().as_deref(), Some("c"));
    }

    #[test]
    fn unknown_namespace_types_fail_to_parse() {
        let r: Result<Vec<oci_spec::runtime::LinuxNamespace>, _> =
            serde_json::from_str(r#"[{"type":"bogus"}]"#);
        assert!(r.is_err());
    }

    #[test]
    fn masked_paths_must_be_absolute_and_stay_inside() {
        let ok = container_paths(&Some(vec!["/proc/kcore".into()])).expect("ok");
        assert_eq!(ok, vec![PathBuf::from("/proc/kcore")]);
        assert!(container_paths(&Some(vec!["/proc/../../x".into()])).is_err());
        assert!(container_paths(&Some(vec!["proc".into()])).is_err());
    }

    #[test]
    fn the_shared_namespace_table_is_exactly_what_namespace_plan_accepts() {
        use ampoule_agent_api::features::NAMESPACES;
        for typ in [
            "mount", "pid", "network", "ipc", "uts", "cgroup", "user", "time",
        ] {
            let ns: oci_spec::runtime::LinuxNamespace =
                serde_json::from_value(serde_json::json!({ "type": typ })).expect("namespace");
            assert_eq!(
                namespace_plan(&[ns]).is_ok(),
                NAMESPACES.contains(&typ),
                "{typ}"
            );
        }
    }

    fn process_with(exit: Option<Exit>, outputs: Vec<watch::Receiver<bool>>) -> Process {
        Process {
            pid: 42,
            exit: watch::channel(exit).1,
            outputs,
            stdin_close: Mutex::new(None),
            pty: None,
            sync: Mutex::new(None),
            oom_base: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_exit_is_answered_while_a_leftover_still_holds_the_output_open() {
        // The writer side never finishes: a background process of the
        // container still holds its stdout.
        let (_held_open, out) = watch::channel(false);
        let p = process_with(Some(Exit::Code(3)), vec![out]);
        let exit = tokio::time::timeout(Duration::from_secs(3600), p.wait_exit(OUTPUT_GRACE))
            .await
            .expect("WaitProcess must not wait for output that never ends");
        assert_eq!(exit.status(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn output_that_ends_soon_after_the_exit_is_drained_before_the_answer() {
        let (done_tx, out) = watch::channel(false);
        let probe = out.clone();
        let p = process_with(Some(Exit::Signal(libc::SIGTERM)), vec![out]);
        tokio::spawn(async move {
            tokio::time::sleep(OUTPUT_GRACE / 4).await;
            let _ = done_tx.send(true);
        });
        let exit = p.wait_exit(OUTPUT_GRACE).await;
        assert_eq!(exit.status(), 128 + libc::SIGTERM);
        assert!(*probe.borrow(), "answered before the output was drained");
    }

    #[tokio::test(start_paused = true)]
    async fn no_exit_is_answered_before_the_process_is_reaped() {
        let (exit_tx, exit_rx) = watch::channel(None);
        let mut p = process_with(None, Vec::new());
        p.exit = exit_rx;
        let early =
            tokio::time::timeout(Duration::from_secs(3600), p.wait_exit(OUTPUT_GRACE)).await;
        assert!(early.is_err(), "answered an exit for a running process");
        exit_tx.send(Some(Exit::Code(0))).expect("send");
        assert_eq!(p.wait_exit(OUTPUT_GRACE).await.status(), 0);
    }
}
