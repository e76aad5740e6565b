//! Every call into `ampoule-runtime` and the guest agent sits here: booting
//! the pod's microVM, drive slots, agent calls, stdio streams, stopping.
//! The task service knows containerd; this module knows the sandbox.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ampoule_agent_api as api;
use ampoule_runtime::agent_client::{ctx, DEFAULT_CALL_TIMEOUT};
use ampoule_runtime::hypervisor::Drive;
use ampoule_runtime::{Config, Sandbox, SandboxError, SandboxSpec};

use crate::io::{GuestStreams, StdioPaths};
use ampoule_runtime::container::rootfs::{self, RootfsError};
use ampoule_runtime::pod::share_fs::{self, RootfsSource};

/// WaitProcess blocks until the process ends: no deadline of its own.
const WAIT_FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Ampoule configuration: {0}")]
    Config(#[from] ampoule_runtime::config::ConfigError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Container(#[from] ampoule_runtime::container::ContainerError),
    #[error(transparent)]
    SharedDir(#[from] share_fs::ShareFsError),
}

impl VmError {
    /// Whether the VM itself is gone (every task of the pod is then over).
    pub fn vm_gone(&self) -> bool {
        matches!(self, VmError::Sandbox(SandboxError::VmExited(_)))
    }
}

/// Loads the Ampoule configuration: the runtime options' `ConfigPath`
/// first, then `AMPOULE_CONFIG`, then the default file.
pub fn load_config(config_path: Option<&str>) -> Result<Config, VmError> {
    Ok(Config::load(config_path.map(Path::new))?)
}

/// Where the erofs images of layers are cached.
pub fn erofs_cache(config: &Config) -> PathBuf {
    config.cache_dir.join("erofs")
}

/// Where the bind sources images of containers are built.
pub fn binds_dir(config: &Config) -> PathBuf {
    config.cache_dir.join("binds")
}

/// The slot files of a sandbox (outside the sandbox directory, which the
/// runtime creates itself).
pub fn slot_dir(config: &Config, sandbox_id: &str) -> PathBuf {
    config.cache_dir.join("slots").join(sandbox_id)
}

struct Slot {
    serial: String,
    path: PathBuf,
    used: bool,
}

/// The pod's microVM.
pub struct Pod {
    sandbox: Sandbox,
    slots: Mutex<Vec<Slot>>,
    slot_dir: PathBuf,
    log_dir: PathBuf,
    serial_log_max: u64,
}

fn block_device(serial: &str) -> api::BlockDevice {
    api::BlockDevice {
        serial: serial.to_string(),
        fstype: "erofs".into(),
        options: vec!["ro".into()],
        ..Default::default()
    }
}

/// The agent's view of which streams will attach.
pub fn stdio_config(paths: &StdioPaths) -> api::StdioConfig {
    api::StdioConfig {
        stdin: paths.has_stdin(),
        stdout: paths.has_stdout(),
        stderr: paths.has_stderr(),
        terminal: paths.terminal,
        ..Default::default()
    }
}

impl Pod {
    /// Boots the pod's VM with the first container's images as drives and
    /// empty slots (`rootfs::slot_count`) for later containers. Returns the pod and the
    /// devices of `layer_images`, in order.
    pub async fn boot(
        config: &Config,
        id: &str,
        sizes: (Option<u32>, Option<u32>),
        layer_images: &[PathBuf],
        shared_fs: bool,
    ) -> Result<(Pod, Vec<api::BlockDevice>), VmError> {
        if shared_fs {
            // Container files come through the shared directory: no images,
            // no drive slots, no limit on containers.
            let spec = SandboxSpec {
                id: Some(id.to_string()),
                vcpus: sizes.0,
                memory_mib: sizes.1,
                shared_fs: true,
                ..Default::default()
            };
            let sandbox = Sandbox::start(config, spec).await?;
            return Ok((
                Pod {
                    sandbox,
                    slots: Mutex::new(Vec::new()),
                    slot_dir: slot_dir(config, id),
                    log_dir: config.log_dir.clone(),
                    serial_log_max: config.serial_log_max_bytes,
                },
                Vec::new(),
            ));
        }
        let slot_dir = slot_dir(config, id);
        let _ = std::fs::remove_dir_all(&slot_dir);
        std::fs::create_dir_all(&slot_dir).map_err(|source| RootfsError::Io {
            what: "creating slot directory",
            path: slot_dir.clone(),
            source,
        })?;
        let mut drives = Vec::new();
        let mut devices = Vec::new();
        for (n, image) in layer_images.iter().enumerate() {
            let serial = format!("l{n}");
            drives.push(Drive {
                id: serial.clone(),
                path: image.clone(),
                read_only: true,
            });
            devices.push(block_device(&serial));
        }
        let mut slots = Vec::new();
        for n in 0..rootfs::slot_count(layer_images.len()) {
            let path = slot_dir.join(format!("s{n}"));
            if let Err(e) = rootfs::create_slot(&path) {
                let _ = std::fs::remove_dir_all(&slot_dir);
                return Err(e.into());
            }
            drives.push(Drive {
                id: format!("s{n}"),
                path: path.clone(),
                read_only: true,
            });
            slots.push(Slot {
                serial: format!("s{n}"),
                path,
                used: false,
            });
        }
        let spec = SandboxSpec {
            id: Some(id.to_string()),
            vcpus: sizes.0,
            memory_mib: sizes.1,
            drives,
            ..Default::default()
        };
        let sandbox = match Sandbox::start(config, spec).await {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&slot_dir);
                return Err(e.into());
            }
        };
        Ok((
            Pod {
                sandbox,
                slots: Mutex::new(slots),
                slot_dir,
                log_dir: config.log_dir.clone(),
                serial_log_max: config.serial_log_max_bytes,
            },
            devices,
        ))
    }

    /// Brings layer images into the running VM through free drive slots.
    pub fn attach_layers(&self, images: &[PathBuf]) -> Result<Vec<api::BlockDevice>, VmError> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let free = slots.iter().filter(|s| !s.used).count();
        if free < images.len() {
            return Err(RootfsError::NoFreeSlot.into());
        }
        let mut devices = Vec::new();
        for image in images {
            let slot = slots
                .iter_mut()
                .find(|s| !s.used)
                .ok_or(RootfsError::NoFreeSlot)?;
            rootfs::fill_slot(&slot.path, image)?;
            slot.used = true;
            devices.push(block_device(&slot.serial));
        }
        Ok(devices)
    }

    /// Host pid of the VM process (QEMU or ampoule-vmm): the pid containerd
    /// is told for every task of the pod.
    pub fn vm_pid(&self) -> Option<u32> {
        self.sandbox.vm_pid()
    }
    /// Host pids of the VM's processes.
    pub fn pids(&self) -> Vec<u32> {
        self.sandbox.pids()
    }
    pub fn serial_log(&self) -> &Path {
        self.sandbox.serial_log()
    }
    /// Copies the guest console log out of the sandbox directory (which
    /// goes when the VM stops) to `<log_dir>/<sandbox id>-serial.log`, as the
    /// runtime does after a failed boot. Returns where it went.
    pub fn keep_serial_log(&self) -> PathBuf {
        ampoule_runtime::sandbox::keep_serial_log(
            self.sandbox.serial_log(),
            &self.log_dir,
            self.sandbox.id(),
            self.serial_log_max,
        )
    }

    pub fn dir(&self) -> &Path {
        self.sandbox.dir()
    }
    pub fn boot_time(&self) -> Duration {
        self.sandbox.boot_time()
    }
    pub fn backend_description(&self) -> String {
        format!(
            "{} ({})",
            self.sandbox.backend().backend,
            self.sandbox.backend().reason
        )
    }

    /// Waits until the VM's processes end; returns the signal that killed
    /// the VM process, if one did.
    pub async fn wait_exit(&self) -> (String, Option<i32>) {
        let e = self.sandbox.wait_exit().await;
        let signal = e
            .status
            .strip_prefix("killed by signal ")
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok());
        (e.to_string(), signal)
    }

    /// Opens the guest ends of a process's stdio, all at once (before the
    /// agent creates the process: the agent holds early connections until
    /// it does).
    pub async fn connect_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        paths: &StdioPaths,
    ) -> Result<GuestStreams, VmError> {
        let want = [paths.has_stdin(), paths.has_stdout(), paths.has_stderr()];
        Ok(ampoule_runtime::container::open_each(want, |kind| {
            self.sandbox.connect_stdio(container_id, exec_id, kind)
        })
        .await?)
    }

    fn agent(&self) -> &ampoule_runtime::agent_client::AgentClient {
        self.sandbox.agent()
    }

    pub async fn create_container(
        &self,
        id: &str,
        oci_spec: Vec<u8>,
        layers: Vec<api::BlockDevice>,
        bind_sources: Option<api::BlockDevice>,
        stdio: &StdioPaths,
    ) -> Result<u32, VmError> {
        let req = api::CreateContainerRequest {
            container_id: id.to_string(),
            oci_spec,
            rootfs_layers: layers,
            stdio: Some(stdio_config(stdio)).into(),
            bind_sources: bind_sources.into(),
            ..Default::default()
        };
        let r = self
            .sandbox
            .call(
                "CreateContainer",
                self.agent()
                    .create_container(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(r.pid)
    }

    /// Whether container files reach this pod through its shared directory.
    pub fn shares_files(&self) -> bool {
        self.sandbox.shared().is_some()
    }

    /// Mounts the container's rootfs and bind sources into the pod's
    /// shared directory and creates the container on them.
    pub async fn create_shared_container(
        &self,
        id: &str,
        rootfs: RootfsSource,
        oci_spec: Vec<u8>,
        stdio: &StdioPaths,
    ) -> Result<u32, VmError> {
        let shared = self.sandbox.shared().ok_or_else(|| {
            share_fs::ShareFsError::BadRootfs("the pod has no shared directory".into())
        })?;
        let files = share_fs::container::share(shared, id, &rootfs, &oci_spec, None)?;
        let req = share_fs::container::create_request(id, files, stdio_config(stdio));
        let r = self
            .sandbox
            .call(
                "CreateContainer",
                self.agent()
                    .create_container(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await;
        match r {
            Ok(r) => Ok(r.pid),
            Err(e) => {
                shared.remove_container(id);
                Err(e.into())
            }
        }
    }

    /// Unmounts what the container had in the shared directory.
    pub fn unshare_container(&self, id: &str) {
        if let Some(shared) = self.sandbox.shared() {
            shared.remove_container(id);
        }
    }

    fn container_req(id: &str) -> api::ContainerRequest {
        api::ContainerRequest {
            container_id: id.to_string(),
            ..Default::default()
        }
    }

    pub async fn start_container(&self, id: &str) -> Result<(), VmError> {
        let req = Self::container_req(id);
        self.sandbox
            .call(
                "StartContainer",
                self.agent()
                    .start_container(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(())
    }

    pub async fn delete_container(&self, id: &str, force: bool) -> Result<(), VmError> {
        let req = api::DeleteContainerRequest {
            container_id: id.to_string(),
            force,
            ..Default::default()
        };
        self.sandbox
            .call(
                "DeleteContainer",
                self.agent()
                    .delete_container(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> Result<(), VmError> {
        let req = Self::container_req(id);
        self.sandbox
            .call(
                "PauseContainer",
                self.agent()
                    .pause_container(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<(), VmError> {
        let req = Self::container_req(id);
        self.sandbox
            .call(
                "ResumeContainer",
                self.agent()
                    .resume_container(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(())
    }

    /// `resources`: OCI linux.resources as JSON.
    pub async fn update(&self, id: &str, resources: Vec<u8>) -> Result<(), VmError> {
        let req = api::UpdateContainerRequest {
            container_id: id.to_string(),
            resources,
            ..Default::default()
        };
        self.sandbox
            .call(
                "UpdateContainer",
                self.agent()
                    .update_container(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<api::StatsResponse, VmError> {
        let req = Self::container_req(id);
        Ok(self
            .sandbox
            .call(
                "StatsContainer",
                self.agent()
                    .stats_container(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?)
    }

    pub async fn list_processes(&self, id: &str) -> Result<Vec<api::ProcessInfo>, VmError> {
        let req = Self::container_req(id);
        Ok(self
            .sandbox
            .call(
                "ListProcesses",
                self.agent().list_processes(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?
            .processes)
    }

    /// `process`: the OCI process as JSON.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: &StdioPaths,
    ) -> Result<u32, VmError> {
        let req = api::ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            process,
            stdio: Some(stdio_config(stdio)).into(),
            ..Default::default()
        };
        let r = self
            .sandbox
            .call(
                "ExecProcess",
                self.agent().exec_process(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(r.pid)
    }

    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), VmError> {
        let req = api::SignalProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.sandbox
            .call(
                "SignalProcess",
                self.agent().signal_process(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(())
    }

    fn process_req(id: &str, exec_id: &str) -> api::ProcessRequest {
        api::ProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        }
    }

    /// Blocks until the process ended and its output was sent.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<api::WaitProcessResponse, VmError> {
        let req = Self::process_req(id, exec_id);
        Ok(self
            .sandbox
            .call(
                "WaitProcess",
                self.agent().wait_process(ctx(WAIT_FOREVER), &req),
            )
            .await?)
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), VmError> {
        let req = Self::process_req(id, exec_id);
        self.sandbox
            .call(
                "CloseStdin",
                self.agent().close_stdin(ctx(DEFAULT_CALL_TIMEOUT), &req),
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
    ) -> Result<(), VmError> {
        let req = api::ResizeTtyRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            rows,
            cols,
            ..Default::default()
        };
        self.sandbox
            .call(
                "ResizeTty",
                self.agent().resize_tty(ctx(DEFAULT_CALL_TIMEOUT), &req),
            )
            .await?;
        Ok(())
    }

    /// Blocks until a container of the pod is hit by the OOM killer.
    pub async fn oom_event(&self) -> Result<String, VmError> {
        let req = api::Empty::default();
        Ok(self
            .sandbox
            .call(
                "GetOomEvent",
                self.agent().get_oom_event(ctx(WAIT_FOREVER), &req),
            )
            .await?
            .container_id)
    }

    /// Shuts the guest down (or kills it) and removes its files.
    pub async fn stop(self) {
        let report = self.sandbox.stop().await;
        tracing::info!(graceful = report.graceful, "pod VM stopped");
        let _ = std::fs::remove_dir_all(&self.slot_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_config_follows_the_fifos() {
        let p = StdioPaths {
            stdin: "/i".into(),
            stdout: "/o".into(),
            stderr: "/e".into(),
            terminal: true,
        };
        let c = stdio_config(&p);
        assert!(c.stdin && c.stdout && !c.stderr && c.terminal);
    }
}
