//! Typed calls into a sandbox's agent: the one place that builds the
//! agent's requests and reads its answers. Nothing outside the runtime
//! sees the agent's protobuf types: the CLI and the shim call these.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ampoule_agent_api as api;
use tokio::sync::watch;

use crate::agent_client::{self, connect_agent, AgentClient, AgentError, DEFAULT_CALL_TIMEOUT};
use crate::pod::network::PodNetwork;
use crate::process::ExitEvent;
use crate::sandbox::SandboxError;

/// WaitProcess and GetOomEvent block until something happens.
const WAIT_FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// CreateContainer may wait for a drive or mount the rootfs.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which stdio streams the host attaches to a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
    /// Descriptors beyond stdio (3, 4, ...), each a stream of its own.
    pub extra: Vec<(u32, FdMode)>,
}

/// How a process uses an extra descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdMode {
    /// It reads: host bytes flow in.
    Read,
    /// It writes: its bytes flow out.
    Write,
    /// Both ways.
    ReadWrite,
}

impl From<Stdio> for api::StdioConfig {
    fn from(s: Stdio) -> Self {
        api::StdioConfig {
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr,
            terminal: s.terminal,
            extra_fds: s
                .extra
                .iter()
                .map(|(fd, mode)| api::ExtraFd {
                    fd: *fd,
                    mode: match mode {
                        FdMode::Read => api::ExtraFdMode::EXTRA_FD_READ,
                        FdMode::Write => api::ExtraFdMode::EXTRA_FD_WRITE,
                        FdMode::ReadWrite => api::ExtraFdMode::EXTRA_FD_READ_WRITE,
                    }
                    .into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// Where a container's files are in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerFiles {
    /// erofs images on virtio-blk drives, found by serial: the rootfs
    /// layers (lowest first) and the copied bind sources.
    Images {
        layers: Vec<String>,
        binds: Option<String>,
    },
    /// In the shared directory: the rootfs and each bind source, as paths
    /// relative to it (see [`crate::pod::share_fs`]).
    Shared {
        rootfs: String,
        binds: HashMap<String, String>,
    },
}

fn erofs(serial: &str) -> api::BlockDevice {
    api::BlockDevice {
        serial: serial.to_string(),
        fstype: "erofs".into(),
        options: vec!["ro".into()],
        ..Default::default()
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessExit {
    /// Exit code, or 128 + the signal number.
    pub exit_status: i32,
    /// The signal that ended it, 0 if it exited.
    pub signal: i32,
    pub oom_killed: bool,
}

/// A process of a container, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestProcess {
    /// pid in the guest.
    pub pid: u32,
    /// The exec id, empty for the container's init.
    pub exec_id: String,
    pub args: Vec<String>,
}

/// cgroup v2 figures of a container in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub cpu_nr_periods: u64,
    pub cpu_nr_throttled: u64,
    pub cpu_throttled_usec: u64,
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_swap_usage: u64,
    pub memory_swap_limit: u64,
    pub memory_stat: HashMap<String, u64>,
    pub pids_current: u64,
    pub pids_limit: u64,
    pub oom_events: u64,
    pub oom_kill_events: u64,
}

impl From<api::StatsResponse> for Stats {
    fn from(s: api::StatsResponse) -> Self {
        Stats {
            cpu_usage_usec: s.cpu_usage_usec,
            cpu_user_usec: s.cpu_user_usec,
            cpu_system_usec: s.cpu_system_usec,
            cpu_nr_periods: s.cpu_nr_periods,
            cpu_nr_throttled: s.cpu_nr_throttled,
            cpu_throttled_usec: s.cpu_throttled_usec,
            memory_usage: s.memory_usage,
            memory_limit: s.memory_limit,
            memory_swap_usage: s.memory_swap_usage,
            memory_swap_limit: s.memory_swap_limit,
            memory_stat: s.memory_stat,
            pids_current: s.pids_current,
            pids_limit: s.pids_limit,
            oom_events: s.oom_events,
            oom_kill_events: s.oom_kill_events,
        }
    }
}

/// The agent of one sandbox. Cheap to clone.
#[derive(Clone)]
pub struct Guest {
    agent: AgentClient,
    /// The VM's first process exit, when this process supervises the VM: a
    /// call then fails as soon as the VM is gone instead of timing out.
    vm_exit: Option<watch::Receiver<Option<ExitEvent>>>,
}

impl Guest {
    pub(crate) fn supervised(
        agent: AgentClient,
        vm_exit: watch::Receiver<Option<ExitEvent>>,
    ) -> Guest {
        Guest {
            agent,
            vm_exit: Some(vm_exit),
        }
    }

    /// Connects to the agent of a running sandbox through its vsock socket
    /// (from another process than the one supervising the VM).
    pub async fn connect(vsock_uds: &Path, timeout: Duration) -> Result<Guest, AgentError> {
        Ok(Guest {
            agent: connect_agent(vsock_uds, timeout).await?,
            vm_exit: None,
        })
    }

    fn exited(&self) -> Option<ExitEvent> {
        self.vm_exit.as_ref().and_then(|rx| rx.borrow().clone())
    }

    async fn wait_vm_exit(&self) -> ExitEvent {
        let Some(rx) = &self.vm_exit else {
            return std::future::pending().await;
        };
        let mut rx = rx.clone();
        let event = match rx.wait_for(|e| e.is_some()).await {
            Ok(e) => e.clone(),
            Err(_) => None,
        };
        event.unwrap_or_else(gone)
    }

    /// Runs one agent call; fails at once with [`SandboxError::VmExited`]
    /// when the VM ends first.
    pub(crate) async fn call<T, F>(&self, call: &'static str, fut: F) -> Result<T, SandboxError>
    where
        F: std::future::Future<Output = ttrpc::Result<T>>,
    {
        if let Some(e) = self.exited() {
            return Err(SandboxError::VmExited(e));
        }
        tokio::select! {
            r = fut => r.map_err(|source| match self.exited() {
                Some(e) => SandboxError::VmExited(e),
                None => AgentError::Call { call, source }.into(),
            }),
            e = self.wait_vm_exit() => Err(SandboxError::VmExited(e)),
        }
    }

    fn ctx(timeout: Duration) -> ttrpc::context::Context {
        agent_client::ctx(timeout)
    }

    fn container_req(id: &str) -> api::ContainerRequest {
        api::ContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        }
    }

    fn process_req(id: &str, exec_id: &str) -> api::ProcessRequest {
        api::ProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        }
    }

    /// The agent's health answer.
    pub async fn check(&self) -> Result<api::CheckResponse, SandboxError> {
        let req = api::CheckRequest::new();
        self.call(
            "Check",
            self.agent.check(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
        )
        .await
    }

    /// Creates container `id` from `oci_spec` (config.json) on `files`.
    /// Returns the init's guest pid.
    pub async fn create_container(
        &self,
        id: &str,
        oci_spec: Vec<u8>,
        files: ContainerFiles,
        stdio: Stdio,
    ) -> Result<u32, SandboxError> {
        let mut req = api::CreateContainerRequest {
            container_id: id.to_string(),
            oci_spec,
            stdio: Some(api::StdioConfig::from(stdio)).into(),
            ..Default::default()
        };
        match files {
            ContainerFiles::Images { layers, binds } => {
                req.rootfs_layers = layers.iter().map(|s| erofs(s)).collect();
                req.bind_sources = binds.as_deref().map(erofs).into();
            }
            ContainerFiles::Shared { rootfs, binds } => {
                req.shared_rootfs = rootfs;
                req.shared_binds = binds;
            }
        }
        let r = self
            .call(
                "CreateContainer",
                self.agent.create_container(Self::ctx(CREATE_TIMEOUT), &req),
            )
            .await?;
        Ok(r.pid)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), SandboxError> {
        let req = Self::container_req(id);
        self.call(
            "StartContainer",
            self.agent
                .start_container(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn delete_container(&self, id: &str, force: bool) -> Result<(), SandboxError> {
        let req = api::DeleteContainerRequest {
            container_id: id.to_string(),
            force,
            ..Default::default()
        };
        self.call(
            "DeleteContainer",
            self.agent
                .delete_container(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> Result<(), SandboxError> {
        let req = Self::container_req(id);
        self.call(
            "PauseContainer",
            self.agent
                .pause_container(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<(), SandboxError> {
        let req = Self::container_req(id);
        self.call(
            "ResumeContainer",
            self.agent
                .resume_container(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    /// `resources`: OCI linux.resources as JSON.
    pub async fn update(&self, id: &str, resources: Vec<u8>) -> Result<(), SandboxError> {
        let req = api::UpdateContainerRequest {
            container_id: id.to_string(),
            resources,
            ..Default::default()
        };
        self.call(
            "UpdateContainer",
            self.agent
                .update_container(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<Stats, SandboxError> {
        let req = Self::container_req(id);
        let r = self
            .call(
                "StatsContainer",
                self.agent
                    .stats_container(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(r.into())
    }

    pub async fn list_processes(&self, id: &str) -> Result<Vec<GuestProcess>, SandboxError> {
        let req = Self::container_req(id);
        let r = self
            .call(
                "ListProcesses",
                self.agent
                    .list_processes(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(r.processes
            .into_iter()
            .map(|p| GuestProcess {
                pid: p.pid,
                exec_id: p.exec_id,
                args: p.args,
            })
            .collect())
    }

    /// Starts `process` (the OCI process as JSON) in container `id`.
    /// Returns its guest pid.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: Stdio,
    ) -> Result<u32, SandboxError> {
        let req = api::ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            process,
            stdio: Some(api::StdioConfig::from(stdio)).into(),
            ..Default::default()
        };
        let r = self
            .call(
                "ExecProcess",
                self.agent
                    .exec_process(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(r.pid)
    }

    /// Signals a process (`exec_id` empty: the init); `all`: every process
    /// of the container.
    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), SandboxError> {
        let req = api::SignalProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.call(
            "SignalProcess",
            self.agent
                .signal_process(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    /// Blocks until the process ended and its output was sent.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ProcessExit, SandboxError> {
        let req = Self::process_req(id, exec_id);
        let r = self
            .call(
                "WaitProcess",
                self.agent.wait_process(Self::ctx(WAIT_FOREVER), &req),
            )
            .await?;
        Ok(ProcessExit {
            exit_status: r.exit_status,
            signal: r.signal,
            oom_killed: r.oom_killed,
        })
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), SandboxError> {
        let req = Self::process_req(id, exec_id);
        self.call(
            "CloseStdin",
            self.agent
                .close_stdin(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    pub async fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), SandboxError> {
        let req = api::ResizeTtyRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            rows,
            cols,
            ..Default::default()
        };
        self.call(
            "ResizeTty",
            self.agent.resize_tty(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    /// Blocks until a container of the pod is hit by the OOM killer;
    /// returns its id.
    pub async fn oom_event(&self) -> Result<String, SandboxError> {
        let req = api::Empty::default();
        let r = self
            .call(
                "GetOomEvent",
                self.agent.get_oom_event(Self::ctx(WAIT_FOREVER), &req),
            )
            .await?;
        Ok(r.container_id)
    }

    /// Gives the pod's guest network namespace the NICs of `net` (found by
    /// MAC) with their addresses, and the routes.
    pub async fn setup_network(&self, net: &PodNetwork) -> Result<(), SandboxError> {
        let req = api::SetupNetworkRequest {
            interfaces: net
                .endpoints
                .iter()
                .map(|e| api::Interface {
                    name: e.interface.name.clone(),
                    mac: e.interface.mac.clone(),
                    mtu: e.interface.mtu,
                    addresses: e
                        .interface
                        .addresses
                        .iter()
                        .map(|(address, prefix_len)| api::IPAddress {
                            address: address.clone(),
                            prefix_len: *prefix_len,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            routes: net
                .routes
                .iter()
                .map(|r| api::Route {
                    destination: r.destination.clone(),
                    gateway: r.gateway.clone(),
                    device: r.device.clone(),
                    source: r.source.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        self.call(
            "SetupNetwork",
            self.agent
                .setup_network(Self::ctx(DEFAULT_CALL_TIMEOUT), &req),
        )
        .await?;
        Ok(())
    }

    /// Asks the guest to power off (or reboot).
    pub(crate) async fn shutdown(&self, timeout: Duration) -> ttrpc::Result<api::Empty> {
        let req = api::ShutdownRequest::new();
        self.agent.shutdown(Self::ctx(timeout), &req).await
    }
}

fn gone() -> ExitEvent {
    ExitEvent {
        process: "?".into(),
        pid: 0,
        status: "supervisor gone".into(),
        code: None,
        killed_by_us: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_and_files_map_onto_the_agents_request_fields() {
        let s: api::StdioConfig = Stdio {
            stdin: true,
            stdout: true,
            stderr: false,
            terminal: true,
            extra: vec![(3, FdMode::Read), (4, FdMode::ReadWrite)],
        }
        .into();
        assert!(s.stdin && s.stdout && !s.stderr && s.terminal);
        assert_eq!(s.extra_fds.len(), 2);
        assert_eq!(s.extra_fds[1].fd, 4);
        assert_eq!(
            s.extra_fds[1].mode.enum_value(),
            Ok(api::ExtraFdMode::EXTRA_FD_READ_WRITE)
        );
        let d = erofs("l0");
        assert_eq!((d.serial.as_str(), d.fstype.as_str()), ("l0", "erofs"));
        assert_eq!(d.options, vec!["ro".to_string()]);
    }
}
