//! A sandbox: one microVM (hypervisor processes) plus a connected agent client.
//!
//! Start: validate, choose the backend, create the sandbox directory, listen
//! for the agent's readiness on `<vsock>_1023`, launch the VM, wait for
//! readiness (bounded; the VM's processes dying ends the wait at once), then
//! connect ttrpc to the agent. Any failure kills what was started, keeps the
//! serial log in the log directory (named in the error) and removes the
//! sandbox directory.
//!
//! Stop: the agent's Shutdown, a bounded wait for the VM to exit, then kill;
//! in every case the processes are reaped and the directory removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ampoule_agent_api::CheckResponse;
use tokio::net::UnixStream;

use crate::agent_client::{self, AgentClient, AgentError};
use crate::config::{self, Config, ConfigError, HypervisorKind};
use crate::host::{self, BackendChoice, HostError, HostFacts};
use crate::hypervisor::{self, log_block, Drive, HypervisorError, VmConfig, VM_PROCESS};
use crate::pod::guest::Guest;
use crate::pod::network::{NetworkError, PodNetwork};
use crate::pod::share_fs::{self, SharedDir};
use crate::process::{ExitEvent, ProcessGroup};
use crate::vsock::{self, ReadyListener, StdioStream, VsockError};

/// Kernel parameters of every sandbox, before backend and user ones.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1";
/// Deadline of the Shutdown call when stopping.
const SHUTDOWN_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a guest gets to power off after Shutdown before it is killed.
const SHUTDOWN_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of connecting to the agent once it announced readiness.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of the serial log quoted in a boot error.
const SERIAL_TAIL: usize = 3000;

/// Errors of the sandbox layer.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("guest {what} {path}: {reason}")]
    GuestImage {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("invalid sandbox id {0:?}: use 1-64 characters from [A-Za-z0-9_.-]")]
    BadId(String),
    #[error("sandbox {id} already exists ({path})")]
    Exists { id: String, path: PathBuf },
    #[error("cannot create sandbox directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("cannot start the VM: {0}")]
    Launch(#[from] HypervisorError),
    #[error("the guest did not become ready: {reason}; serial log: {}{details}", serial_log.display())]
    BootFailed {
        reason: String,
        /// Where the guest's console output was kept.
        serial_log: PathBuf,
        /// Tails of the serial log and the VM processes' logs.
        details: String,
    },
    #[error(
        "{} not found: the pod's shared directory needs virtiofsd (cargo install virtiofsd, \
         set virtiofsd in the config, or rootfs_sharing = \"erofs\")",
        .0.display()
    )]
    NoVirtiofsd(PathBuf),
    #[error("pod network: {0}")]
    Network(#[from] NetworkError),
    #[error("the pod's shared directory: {0}")]
    SharedDir(#[from] share_fs::ShareFsError),
    #[error("the VM is gone: {0}")]
    VmExited(ExitEvent),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// What to start. `None` takes the configuration's default.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    /// Sandbox id (names its directory); random when `None`.
    pub id: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// Overrides the configured hypervisor.
    pub hypervisor: Option<HypervisorKind>,
    /// virtio-blk drives attached at boot.
    pub drives: Vec<Drive>,
    /// Empty drive slots (ampoule backend only).
    pub drive_slots: Vec<String>,
    /// Extra kernel parameters, after the configured ones.
    pub kernel_params: Vec<String>,
    /// Overrides the configured boot timeout.
    pub boot_timeout: Option<Duration>,
    /// Give the sandbox a shared directory over virtio-fs (one virtiofsd).
    pub shared_fs: bool,
    /// The pod's `linux.cgroupsPath`: a jailed sandbox's memory cgroup is
    /// made inside the pod's memory cgroup (see [`crate::pod::cgroups`]).
    pub cgroups_path: Option<String>,
    /// The pod's network namespace on the host: its interfaces become the
    /// guest's NICs (tc redirect), configured in the pod's guest network
    /// namespace.
    pub network: Option<PathBuf>,
}

/// Where the boot time went, measured from the start of [`Sandbox::start`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootTimings {
    /// The VM's processes were spawned (vhost-device-vsock socket ready, VMM started).
    pub launched: Duration,
    /// The agent announced readiness.
    pub ready: Duration,
    /// The ttrpc connection to the agent is open.
    pub connected: Duration,
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// The guest powered off by itself after Shutdown (not killed).
    pub graceful: bool,
    /// How the VM process ended.
    pub vm_exit: Option<ExitEvent>,
}

/// A running microVM with its agent connected.
pub struct Sandbox {
    id: String,
    dir: PathBuf,
    vsock_uds: PathBuf,
    serial_log: PathBuf,
    choice: BackendChoice,
    vcpus: u32,
    memory_mib: u32,
    vm: ProcessGroup,
    guest: Guest,
    agent_version: String,
    boot_time: Duration,
    timings: BootTimings,
    shared: Option<SharedDir>,
    network: Option<PodNetwork>,
    jailed: bool,
    cleaned: bool,
}

/// Checks a sandbox id.
pub fn validate_id(id: &str) -> Result<(), SandboxError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::BadId(id.to_string()))
    }
}

/// A random 16-hex-digit id.
pub fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The kernel command line for a sandbox.
pub fn build_cmdline(
    backend_params: &[String],
    config_params: &str,
    spec_params: &[String],
) -> String {
    let mut parts: Vec<&str> = BASE_CMDLINE.split_whitespace().collect();
    parts.extend(backend_params.iter().map(String::as_str));
    parts.extend(config_params.split_whitespace());
    parts.extend(spec_params.iter().map(String::as_str));
    parts.join(" ")
}

fn check_guest_file(what: &'static str, path: &Path) -> Result<(), SandboxError> {
    let err = |reason: String| SandboxError::GuestImage {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Copies the serial log `serial` out of the sandbox directory before it is
/// removed: its newest `max` bytes, to
/// `<log_dir>/<id>-serial.log`, through a new file renamed into place (a
/// symlink planted there is replaced, never followed). Returns where it
/// went: `serial` itself when `log_dir` cannot be written (there is no
/// fallback to a shared directory such as /tmp, whose names others can
/// predict).
pub fn keep_serial_log(serial: &Path, log_dir: &Path, id: &str, max: u64) -> PathBuf {
    let dest = hypervisor::serial_log::kept_path(log_dir, id);
    let copied = std::fs::create_dir_all(log_dir)
        .and_then(|()| hypervisor::serial_log::copy_tail(serial, &dest, max));
    match copied {
        Ok(()) => dest,
        Err(e) => {
            tracing::warn!(log = %dest.display(), error = %e, "cannot keep the serial log");
            serial.to_path_buf()
        }
    }
}

/// Removes the sandbox directory and its shared directory (whose mounts
/// are detached first: nothing is removed through a mount).
fn remove_dir(dir: &Path) {
    share_fs::teardown(&share_fs::dir_for(dir));
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove sandbox directory")
        }
    }
}

/// What failed during boot, before the cleanup turns it into an error.
enum BootFailure {
    Exited(ExitEvent),
    Timeout(Duration),
    Other(SandboxError),
}

impl Sandbox {
    /// Boots a sandbox and connects to its agent.
    pub async fn start(config: &Config, spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        let t0 = Instant::now();
        let vcpus = spec.vcpus.unwrap_or(config.vcpus);
        let memory_mib = spec.memory_mib.unwrap_or(config.memory_mib);
        config::validate_vcpus(vcpus)?;
        config::validate_memory(memory_mib)?;
        let id = match spec.id {
            Some(id) => {
                validate_id(&id)?;
                id
            }
            None => random_id(),
        };
        check_guest_file("kernel", &config.kernel)?;
        check_guest_file("initrd", &config.initrd)?;

        let facts = HostFacts::probe(config);
        let requested = spec.hypervisor.unwrap_or(config.hypervisor);
        let choice = host::choose_backend(requested, config, &facts)?;
        tracing::info!(
            sandbox = %id,
            backend = %choice.backend,
            accel = choice.accel.as_str(),
            reason = %choice.reason,
            "hypervisor chosen"
        );
        let binary = match choice.backend {
            host::Backend::Qemu => facts.qemu.clone(),
            host::Backend::Ampoule => facts.ampoule_vmm.clone(),
        }
        .ok_or_else(|| HostError::NotAvailable {
            backend: choice.backend.as_str(),
            reason: "binary not found".into(),
        })?;
        let hv = hypervisor::for_backend(
            choice.backend,
            binary,
            facts.vhost_device_vsock.clone(),
            config.serial_log_max_bytes,
        );

        std::fs::create_dir_all(&config.run_dir).map_err(|source| SandboxError::Dir {
            path: config.run_dir.clone(),
            source,
        })?;
        let dir = config.run_dir.join(&id);
        if let Err(source) = std::fs::create_dir(&dir) {
            return Err(if source.kind() == std::io::ErrorKind::AlreadyExists {
                SandboxError::Exists { id, path: dir }
            } else {
                SandboxError::Dir { path: dir, source }
            });
        }
        let mut backend_params = hv.base_cmdline();
        if choice.accel == host::Accel::Tcg {
            let tsc_khz = hypervisor::tcg_tuning::host_tsc_khz();
            backend_params.extend(hypervisor::tcg_tuning::tcg_kernel_params(vcpus, tsc_khz));
        }
        let shared = if spec.shared_fs {
            let made = facts
                .virtiofsd
                .clone()
                .ok_or_else(|| SandboxError::NoVirtiofsd(config.virtiofsd.clone()))
                .and_then(|bin| {
                    SharedDir::create(&dir)
                        .map(|d| (d, bin))
                        .map_err(SandboxError::SharedDir)
                });
            match made {
                Ok(d) => Some(d),
                Err(e) => {
                    remove_dir(&dir);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let mut network = match &spec.network {
            Some(netns) => match PodNetwork::attach(netns) {
                Ok(n) => Some(n),
                Err(e) => {
                    remove_dir(&dir);
                    return Err(e.into());
                }
            },
            None => None,
        };
        let nets = network
            .as_ref()
            .map(|n| {
                n.tap_fds()
                    .into_iter()
                    .map(|(tap_fd, mac)| hypervisor::NetDevice { tap_fd, mac })
                    .collect()
            })
            .unwrap_or_default();
        let vm = VmConfig {
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            cmdline: build_cmdline(&backend_params, &config.kernel_params, &spec.kernel_params),
            vcpus,
            memory_mib,
            drives: spec.drives,
            drive_slots: spec.drive_slots,
            vsock_uds: dir.join("vsock.sock"),
            serial_log: dir.join("serial.log"),
            dir: dir.clone(),
            accel: choice.accel,
            jail: crate::jail::JailSettings::from_config(config).map(|mut j| {
                if let Some(parent) = spec
                    .cgroups_path
                    .as_deref()
                    .and_then(crate::pod::cgroups::jail_parent)
                {
                    j.cgroup_parent = parent;
                }
                j
            }),
            shared_fs: shared.as_ref().map(|(d, bin)| hypervisor::SharedFs {
                dir: d.root().to_path_buf(),
                virtiofsd: bin.clone(),
            }),
            nets,
        };
        let shared = shared.map(|(d, _)| d);
        let timeout = spec
            .boot_timeout
            .unwrap_or(Duration::from_millis(config.boot_timeout_ms));

        let booted = Self::boot(&*hv, &vm, timeout, t0).await;
        // The VM process holds the taps now: they go when it goes.
        if let Some(n) = network.as_mut() {
            n.release_taps();
        }
        if booted.is_err() {
            if let Some(n) = network.as_mut() {
                n.detach();
            }
        }
        match booted {
            Ok((group, agent, agent_version, timings)) => {
                // The ampoule backend does not jail ampoule-vmm yet.
                let jailed = vm.jail.is_some() && choice.backend == host::Backend::Qemu;
                let group_exit = group.exit_watch();
                let boot_time = t0.elapsed();
                tracing::info!(sandbox = %id, boot_ms = boot_time.as_millis() as u64, %agent_version, "sandbox ready");
                let sandbox = Sandbox {
                    id,
                    dir,
                    vsock_uds: vm.vsock_uds,
                    serial_log: vm.serial_log,
                    choice,
                    vcpus,
                    memory_mib,
                    vm: group,
                    guest: Guest::supervised(agent, group_exit),
                    agent_version,
                    boot_time,
                    timings,
                    shared,
                    network,
                    jailed,
                    cleaned: false,
                };
                if let Some(net) = &sandbox.network {
                    if let Err(e) = sandbox.guest.setup_network(net).await {
                        sandbox.kill().await;
                        return Err(e);
                    }
                }
                Ok(sandbox)
            }
            Err((group, failure)) => {
                if let Some(g) = &group {
                    g.kill_all().await;
                }
                let err = match failure {
                    BootFailure::Other(e) => {
                        remove_dir(&dir);
                        return Err(e);
                    }
                    BootFailure::Exited(e) => format!("{e} before the agent was ready"),
                    BootFailure::Timeout(t) => {
                        format!("no readiness from the agent within {} ms", t.as_millis())
                    }
                };
                let kept = keep_serial_log(
                    &vm.serial_log,
                    &config.log_dir,
                    &id,
                    config.serial_log_max_bytes,
                );
                let mut details = log_block("serial log tail", &kept, SERIAL_TAIL);
                for name in ["qemu", "vhost-device-vsock", "ampoule-vmm"] {
                    details.push_str(&log_block(name, &vm.process_log(name), 1500));
                }
                remove_dir(&dir);
                Err(SandboxError::BootFailed {
                    reason: err,
                    serial_log: kept,
                    details,
                })
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn boot(
        hv: &dyn hypervisor::Hypervisor,
        vm: &VmConfig,
        timeout: Duration,
        t0: Instant,
    ) -> Result<(ProcessGroup, AgentClient, String, BootTimings), (Option<ProcessGroup>, BootFailure)>
    {
        let mut timings = BootTimings::default();
        let other = |e: SandboxError| (None, BootFailure::Other(e));
        for p in [
            &vm.vsock_uds,
            &vsock::guest_port_path(&vm.vsock_uds, ampoule_agent_api::READY_PORT),
        ] {
            vsock::check_socket_path(p).map_err(|e| other(e.into()))?;
        }
        // Listen before the VM exists: the agent's announcement is the only
        // signal we wait for (never poll the guest before it is ready).
        let ready = ReadyListener::bind(&vm.vsock_uds).map_err(|e| other(e.into()))?;
        let group = hv.launch(vm).await.map_err(|e| other(e.into()))?;
        timings.launched = t0.elapsed();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let version = tokio::select! {
            r = ready.accept() => match r {
                Ok(v) => v,
                Err(e) => return Err((Some(group), BootFailure::Other(e.into()))),
            },
            e = group.wait_first_exit() => return Err((Some(group), BootFailure::Exited(e))),
            _ = &mut deadline => return Err((Some(group), BootFailure::Timeout(timeout))),
        };
        drop(ready);
        timings.ready = t0.elapsed();
        let agent = tokio::select! {
            r = agent_client::connect_agent(&vm.vsock_uds, AGENT_CONNECT_TIMEOUT) => match r {
                Ok(a) => a,
                Err(e) => return Err((Some(group), BootFailure::Other(e.into()))),
            },
            e = group.wait_first_exit() => return Err((Some(group), BootFailure::Exited(e))),
        };
        timings.connected = t0.elapsed();
        tracing::debug!(?timings, "boot timings");
        Ok((group, agent, version, timings))
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    /// The sandbox's private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Hybrid vsock socket of the VM.
    pub fn vsock_uds(&self) -> &Path {
        &self.vsock_uds
    }
    /// The guest console log (inside [`Sandbox::dir`]).
    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }
    /// Backend, accelerator and why.
    pub fn backend(&self) -> &BackendChoice {
        &self.choice
    }
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }
    pub fn memory_mib(&self) -> u32 {
        self.memory_mib
    }
    /// The agent version from its readiness line.
    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }
    /// From `start` to the agent connected.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }
    /// The phases of the boot.
    pub fn boot_timings(&self) -> BootTimings {
        self.timings
    }
    /// The pod's shared directory, when the sandbox has one.
    pub fn shared(&self) -> Option<&SharedDir> {
        self.shared.as_ref()
    }

    /// The pod's network, when the sandbox has one.
    pub fn network(&self) -> Option<&PodNetwork> {
        self.network.as_ref()
    }

    /// Whether the sandbox's host processes run in the jail.
    pub fn jailed(&self) -> bool {
        self.jailed
    }

    /// The agent, through typed calls that fail as soon as the VM is gone.
    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// pid of the VM process (QEMU or ampoule-vmm).
    pub fn vm_pid(&self) -> Option<u32> {
        self.vm.pid_of(VM_PROCESS)
    }
    /// pids of every host process of this sandbox.
    pub fn pids(&self) -> Vec<u32> {
        self.vm.pids()
    }
    /// How the VM's processes ended, if they did.
    pub fn exited(&self) -> Option<ExitEvent> {
        self.vm.first_exit()
    }
    /// Waits until a process of the VM ends (for any reason).
    pub async fn wait_exit(&self) -> ExitEvent {
        self.vm.wait_first_exit().await
    }

    /// The agent's Check.
    pub async fn check(&self) -> Result<CheckResponse, SandboxError> {
        self.guest.check().await
    }

    /// Opens one stdio stream of a process (see `StdioConfig` in agent.proto).
    pub async fn connect_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        stream: StdioStream,
    ) -> Result<UnixStream, SandboxError> {
        if let Some(e) = self.vm.first_exit() {
            return Err(SandboxError::VmExited(e));
        }
        Ok(vsock::connect_stdio(
            &self.vsock_uds,
            container_id,
            exec_id,
            stream,
            AGENT_CONNECT_TIMEOUT,
        )
        .await?)
    }

    /// Shuts the guest down (Shutdown, bounded wait, then kill) and removes
    /// every trace of the sandbox. Works on a hung guest or a dead VM too.
    pub async fn stop(mut self) -> StopReport {
        let mut graceful = false;
        if self.vm.first_exit().is_none() {
            let call = self.guest.shutdown(SHUTDOWN_CALL_TIMEOUT);
            match tokio::time::timeout(SHUTDOWN_CALL_TIMEOUT, call).await {
                Ok(r) => {
                    if let Err(e) = r {
                        // The connection may close before the answer: the
                        // guest acts right after answering.
                        tracing::debug!(sandbox = %self.id, error = %e, "Shutdown call");
                    }
                    graceful = self.vm.wait_member(VM_PROCESS, SHUTDOWN_EXIT_TIMEOUT).await;
                }
                Err(_) => {
                    tracing::warn!(sandbox = %self.id, "Shutdown call timed out; killing the VM")
                }
            }
            if !graceful {
                tracing::warn!(sandbox = %self.id, "guest did not power off in time; killing the VM");
            }
        }
        let vm_exit = self.vm.first_exit();
        self.vm.kill_all().await;
        if let Some(n) = self.network.as_mut() {
            n.detach();
        }
        remove_dir(&self.dir);
        self.cleaned = true;
        tracing::info!(sandbox = %self.id, graceful, "sandbox stopped");
        StopReport {
            graceful: graceful && vm_exit.as_ref().map(|e| !e.killed_by_us).unwrap_or(true),
            vm_exit: self.vm.first_exit(),
        }
    }

    /// Kills the VM at once (no Shutdown) and removes every trace of the
    /// sandbox: for a guest that holds nothing worth syncing (e.g. after its
    /// only container exited).
    pub async fn kill(mut self) -> StopReport {
        self.vm.kill_all().await;
        if let Some(n) = self.network.as_mut() {
            n.detach();
        }
        remove_dir(&self.dir);
        self.cleaned = true;
        tracing::info!(sandbox = %self.id, "sandbox killed");
        StopReport {
            graceful: false,
            vm_exit: self.vm.first_exit(),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.cleaned {
            // ProcessGroup's drop kills the processes (its tasks reap them);
            // the redirects and the directory go now.
            if let Some(n) = self.network.as_mut() {
                n.detach();
            }
            remove_dir(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_order_is_base_backend_config_spec() {
        let c = build_cmdline(
            &["reboot=t".into()],
            " loglevel=3  ",
            &["init=/nonexistent".into()],
        );
        assert_eq!(
            c,
            "console=ttyS0 quiet panic=-1 reboot=t loglevel=3 init=/nonexistent"
        );
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("abc-1_2.3").is_ok());
        assert!(validate_id(&"a".repeat(64)).is_ok());
        for bad in ["", ".hidden", "a/b", "a b", "..", &"a".repeat(65)] {
            assert!(
                matches!(validate_id(bad), Err(SandboxError::BadId(_))),
                "{bad:?}"
            );
        }
        let id = random_id();
        assert_eq!(id.len(), 16);
        assert!(validate_id(&id).is_ok());
        assert_ne!(random_id(), random_id());
    }

    fn test_config(dir: &Path) -> Config {
        Config {
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd.img"),
            run_dir: dir.join("run"),
            log_dir: dir.join("log"),
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn missing_kernel_or_initrd_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(dir.path());
        let err = Sandbox::start(&config, SandboxSpec::default())
            .await
            .err()
            .expect("fails");
        let msg = err.to_string();
        assert!(
            msg.contains("guest kernel") && msg.contains("vmlinux"),
            "{msg}"
        );
        std::fs::write(&config.kernel, b"x").expect("write kernel");
        let msg = Sandbox::start(&config, SandboxSpec::default())
            .await
            .err()
            .expect("fails")
            .to_string();
        assert!(
            msg.contains("guest initrd") && msg.contains("initrd.img"),
            "{msg}"
        );
        assert!(!config.run_dir.exists(), "nothing created");
    }

    #[tokio::test]
    async fn zero_vcpus_is_refused_before_anything_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(dir.path());
        let spec = SandboxSpec {
            vcpus: Some(0),
            ..Default::default()
        };
        let msg = Sandbox::start(&config, spec)
            .await
            .err()
            .expect("fails")
            .to_string();
        assert!(msg.contains("vcpus must be at least 1"), "{msg}");
    }

    #[test]
    fn serial_log_is_kept_in_log_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let serial = dir.path().join("serial.log");
        std::fs::write(&serial, b"Kernel panic").expect("write");
        let kept = keep_serial_log(&serial, &dir.path().join("logs"), "abc", 4096);
        assert_eq!(kept, dir.path().join("logs/abc-serial.log"));
        assert_eq!(std::fs::read(&kept).expect("read"), b"Kernel panic");
    }

    #[test]
    fn only_the_serial_logs_tail_is_kept_and_never_in_a_shared_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let serial = dir.path().join("serial.log");
        let mut data = vec![b'.'; 50_000];
        data.extend_from_slice(b"Kernel panic");
        std::fs::write(&serial, &data).expect("write");
        let kept = keep_serial_log(&serial, &dir.path().join("logs"), "t", 4096);
        assert_eq!(
            std::fs::read(&kept).expect("read"),
            &data[data.len() - 4096..]
        );
        // A log_dir that cannot be created: no copy anywhere else.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").expect("file");
        let unique = format!("t{}", std::process::id());
        let kept = keep_serial_log(&serial, &file.join("logs"), &unique, 4096);
        assert_eq!(kept, serial);
        assert!(!std::env::temp_dir()
            .join(format!("{unique}-serial.log"))
            .exists());
    }
}
