//! The `Hypervisor` interface and its backends (`qemu`, `ampoule`).
//!
//! A backend turns a [`VmConfig`] into running host processes
//! ([`ProcessGroup`]); the readiness listener, the agent connection and the
//! cleanup are the sandbox's, identical on every backend (hybrid vsock).

pub mod ampoule;
pub mod qemu;
pub mod serial_log;
pub mod tcg_tuning;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::host::{Accel, Backend};
use crate::process::{ProcessError, ProcessGroup};

/// Errors of a backend while launching a VM.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{process} ended before the VM started: {status}{log}")]
    EarlyExit {
        process: String,
        status: String,
        /// Tail of the process's log, prefixed with a newline, or empty.
        log: String,
    },
    #[error("{what} did not appear within {secs} s{log}")]
    Timeout {
        what: String,
        secs: u64,
        log: String,
    },
    #[error("invalid VM configuration: {0}")]
    Invalid(String),
    #[error("jail: {0}")]
    Jail(#[from] crate::jail::JailError),
}

/// A virtio-blk drive. Its `id` is also its serial number in the guest
/// (`/sys/block/vdX/serial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Full kernel command line.
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub drives: Vec<Drive>,
    /// Empty drive slots (filled later through the VMM's control socket).
    pub drive_slots: Vec<String>,
    /// The sandbox's private directory (sockets, logs).
    pub dir: PathBuf,
    /// Hybrid vsock Unix socket.
    pub vsock_uds: PathBuf,
    /// Guest serial console output.
    pub serial_log: PathBuf,
    pub accel: Accel,
    /// How to jail the VM's host processes; `None` runs them unjailed.
    pub jail: Option<crate::jail::JailSettings>,
    /// The pod's shared directory over virtio-fs, if the sandbox has one.
    pub shared_fs: Option<SharedFs>,
    /// NICs: tap descriptors (open in this process, inherited by the VMM)
    /// and the guest MACs.
    pub nets: Vec<NetDevice>,
}

/// A virtio-net device on a tap the runtime opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    pub tap_fd: std::os::fd::RawFd,
    pub mac: String,
}

/// A shared directory served by `virtiofsd` into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFs {
    /// The host directory (see [`crate::pod::share_fs`]).
    pub dir: PathBuf,
    /// The `virtiofsd` binary.
    pub virtiofsd: PathBuf,
}

impl VmConfig {
    /// Stdout/stderr log of a host process of this VM.
    pub fn process_log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
}

/// The name of the VM process in the [`ProcessGroup`] a backend returns.
pub const VM_PROCESS: &str = "vmm";

/// A way to run a VM.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// Kernel parameters this backend needs before the common ones.
    fn base_cmdline(&self) -> Vec<String>;
    /// Starts the VM's processes. The VM process is named [`VM_PROCESS`].
    /// On error, everything spawned so far is killed (the group is dropped).
    async fn launch(&self, vm: &VmConfig) -> Result<ProcessGroup, HypervisorError>;
}

/// The backend object for `backend`, using the binaries found on the host.
pub fn for_backend(
    backend: Backend,
    binary: PathBuf,
    vhost_device_vsock: Option<PathBuf>,
    serial_log_max: u64,
) -> Box<dyn Hypervisor> {
    match backend {
        Backend::Qemu => Box::new(qemu::Qemu {
            qemu: binary,
            vhost_device_vsock: vhost_device_vsock
                .unwrap_or_else(|| PathBuf::from("vhost-device-vsock")),
            serial_log_max,
        }),
        Backend::Ampoule => Box::new(ampoule::AmpouleVmm {
            binary,
            serial_log_max,
        }),
    }
}

/// Lets the program `cmd` runs inherit `fds` (the serial pipe, taps, a
/// listening socket): their close-on-exec flag is cleared in the child,
/// between fork and exec. The descriptors must stay open in this process
/// until the spawn.
pub fn inherit_fds(cmd: &mut tokio::process::Command, fds: Vec<std::os::fd::RawFd>) {
    // SAFETY: between fork and exec the closure only calls fcntl(2), which
    // is async-signal-safe, on the child's copies of `fds`.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Last `max` bytes of a log file, as text, for error messages.
/// Reads only those bytes (the file may be large), without following a
/// symlink.
pub fn log_tail(path: &Path, max: usize) -> String {
    match serial_log::read_tail(path, max as u64) {
        Ok((bytes, cut)) => {
            let mut s = String::from_utf8_lossy(&bytes).into_owned();
            if cut {
                s.insert_str(0, "...");
            }
            s
        }
        Err(_) => String::new(),
    }
}

/// `log_tail` formatted as an indented block after a message, or empty.
pub fn log_block(label: &str, path: &Path, max: usize) -> String {
    let tail = log_tail(path, max);
    let tail = tail.trim_end();
    if tail.is_empty() {
        return String::new();
    }
    let mut out = format!("\n--- {label} ({}) ---", path.display());
    for line in tail.lines() {
        out.push_str("\n  ");
        out.push_str(line);
    }
    out
}
