//! Every call into `ampoule-runtime` and the guest agent sits here: booting
//! the pod's microVM, drive slots, agent calls, stdio streams, stopping.
//! The task service knows containerd; this module knows the sandbox.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ampoule_runtime::hypervisor::Drive;
use ampoule_runtime::pod::guest::{ContainerFiles, Guest, GuestProcess, ProcessExit, Stats, Stdio};
use ampoule_runtime::{Config, Sandbox, SandboxError, SandboxSpec};

use crate::io::{GuestStreams, StdioPaths};
use ampoule_runtime::container::rootfs::{self, RootfsError};
use ampoule_runtime::pod::share_fs::{self, RootfsSource};

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

/// The agent's view of which streams will attach.
pub fn stdio_config(paths: &StdioPaths) -> Stdio {
    Stdio {
        stdin: paths.has_stdin(),
        stdout: paths.has_stdout(),
        stderr: paths.has_stderr(),
        terminal: paths.terminal,
        extra: Vec::new(),
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
        network: Option<PathBuf>,
        cgroups_path: Option<String>,
    ) -> Result<(Pod, Vec<String>), VmError> {
        if shared_fs {
            // Container files come through the shared directory: no images,
            // no drive slots, no limit on containers.
            let spec = SandboxSpec {
                id: Some(id.to_string()),
                vcpus: sizes.0,
                memory_mib: sizes.1,
                shared_fs: true,
                network,
                cgroups_path,
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
            devices.push(serial.clone());
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
            network,
            cgroups_path,
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
    pub fn attach_layers(&self, images: &[PathBuf]) -> Result<Vec<String>, VmError> {
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
            devices.push(slot.serial.clone());
        }
        Ok(devices)
    }

    /// Host pid of the VM process (QEMU or ampoule-vmm): the pid containerd
    /// is told for every task of the pod.
    pub fn vm_pid(&self) -> Option<u32> {
        self.sandbox.vm_pid()
    }
    /// Moves the VM's host processes into the pod's host cgroup; returns
    /// the directories created.
    pub fn place_in_cgroup(
        &self,
        cgroups_path: &str,
    ) -> Result<Vec<PathBuf>, ampoule_runtime::host_cgroup::CgroupError> {
        // No limits from the sandbox container's spec: it is the pause
        // container's, while this VM runs the whole pod; the pod's limits
        // are kubelet's, on the pod cgroup above this one.
        ampoule_runtime::pod::cgroups::place(&self.sandbox, cgroups_path, &[])
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
        Ok(ampoule_runtime::container::open_each(want, &[], |kind| {
            self.sandbox.connect_stdio(container_id, exec_id, kind)
        })
        .await?)
    }

    fn guest(&self) -> &Guest {
        self.sandbox.guest()
    }

    /// Creates a container on erofs images: `layers` and `bind_sources` are
    /// the drive serials [`Pod::boot`] or [`Pod::attach_layers`] gave.
    pub async fn create_container(
        &self,
        id: &str,
        oci_spec: Vec<u8>,
        layers: Vec<String>,
        bind_sources: Option<String>,
        stdio: &StdioPaths,
    ) -> Result<u32, VmError> {
        let files = ContainerFiles::Images {
            layers,
            binds: bind_sources,
        };
        Ok(self
            .guest()
            .create_container(id, oci_spec, files, stdio_config(stdio))
            .await?)
    }

    /// Whether the pod's guest network namespace holds the pod's interfaces.
    pub fn has_network(&self) -> bool {
        self.sandbox.network().is_some()
    }

    /// What `delete` needs to clean up if this shim dies.
    pub fn record(&self) -> ampoule_runtime::pod::record::SandboxRecord {
        ampoule_runtime::pod::record::SandboxRecord::of(&self.sandbox)
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
        let (oci_spec, files) =
            share_fs::container::share(shared, id, &rootfs, &oci_spec, None)?.into_request_parts();
        match self
            .guest()
            .create_container(id, oci_spec, files, stdio_config(stdio))
            .await
        {
            Ok(pid) => Ok(pid),
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

    pub async fn start_container(&self, id: &str) -> Result<(), VmError> {
        Ok(self.guest().start_container(id).await?)
    }

    pub async fn delete_container(&self, id: &str, force: bool) -> Result<(), VmError> {
        Ok(self.guest().delete_container(id, force).await?)
    }

    pub async fn pause(&self, id: &str) -> Result<(), VmError> {
        Ok(self.guest().pause(id).await?)
    }

    pub async fn resume(&self, id: &str) -> Result<(), VmError> {
        Ok(self.guest().resume(id).await?)
    }

    /// `resources`: OCI linux.resources as JSON.
    pub async fn update(&self, id: &str, resources: Vec<u8>) -> Result<(), VmError> {
        Ok(self.guest().update(id, resources).await?)
    }

    pub async fn stats(&self, id: &str) -> Result<Stats, VmError> {
        Ok(self.guest().stats(id).await?)
    }

    pub async fn list_processes(&self, id: &str) -> Result<Vec<GuestProcess>, VmError> {
        Ok(self.guest().list_processes(id).await?)
    }

    /// `process`: the OCI process as JSON.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: &StdioPaths,
    ) -> Result<u32, VmError> {
        Ok(self
            .guest()
            .exec(id, exec_id, process, stdio_config(stdio))
            .await?)
    }

    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), VmError> {
        Ok(self.guest().signal(id, exec_id, signal, all).await?)
    }

    /// Blocks until the process ended and its output was sent.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ProcessExit, VmError> {
        Ok(self.guest().wait(id, exec_id).await?)
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), VmError> {
        Ok(self.guest().close_stdin(id, exec_id).await?)
    }

    pub async fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), VmError> {
        Ok(self.guest().resize(id, exec_id, rows, cols).await?)
    }

    /// Blocks until a container of the pod is hit by the OOM killer.
    pub async fn oom_event(&self) -> Result<String, VmError> {
        Ok(self.guest().oom_event().await?)
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
