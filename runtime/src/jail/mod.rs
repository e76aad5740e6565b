//! The jail: every host process that touches guest data (QEMU,
//! vhost-device-vsock, ampoule-vmm) runs confined, as Firecracker's jailer
//! does it.
//!
//! Per sandbox ([`SandboxJail`]): one uid/gid from a configured pool (an
//! `flock`ed lease, [`uid_pool`]; the shared `nobody` 65534 when the pool is
//! configured empty) and one memory cgroup limited to the guest's memory
//! plus a measured overhead ([`cgroup`]). Per process ([`plan`], applied in
//! the child between fork and exec by [`child`]): new mount, IPC, UTS and
//! network namespaces; a private tmpfs root holding bind mounts of only
//! what the process needs (`/usr` read-only for the binary and its
//! libraries, the sandbox directory, the kernel, initrd and drives for the
//! VMM, `/dev/null`, `/dev/zero`, `/dev/urandom`, `/dev/kvm` for a QEMU
//! using KVM; ampoule-vmm is handed an open descriptor of `/dev/kvm`
//! instead), `pivot_root` into it; RLIMIT_NOFILE, RLIMIT_FSIZE, RLIMIT_CORE=0;
//! no capabilities (empty bounding, ambient, inheritable, permitted and
//! effective sets); `PR_SET_NO_NEW_PRIVS`; and a seccomp filter: QEMU's own
//! `-sandbox` ([`QEMU_SANDBOX`]), our allowlist for vhost-device-vsock
//! ([`seccomp`]).
//!
//! The sandbox directory becomes `root:<jail gid>` mode 1770: the jailed
//! processes create their sockets and the serial log in it, but cannot
//! remove or replace the runtime's files (sticky bit).

pub mod cgroup;
pub mod child;
pub mod plan;
pub mod seccomp;
pub mod status;
pub mod uid_pool;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::config::Config;
use crate::hypervisor::VmConfig;
use cgroup::{MemoryCgroup, MemoryController};
use plan::{JailedProcess, Limits, PlanInput};

/// QEMU's own seccomp sandbox, turned on for a jailed QEMU. With `-runas`
/// it dies of SIGSYS at start (QEMU 7.2); started already unprivileged it
/// runs.
pub const QEMU_SANDBOX: [&str; 2] = [
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
];

/// Where uid leases are kept: host-wide, whatever the run directory.
pub const UID_LOCK_DIR: &str = "/run/ampoule/jail-uids";
/// Root of the cgroup filesystems.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Errors while setting up a jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("path {0} cannot be used in a jail (it must be absolute, without '..' or NUL)")]
    Path(PathBuf),
    #[error("every jail uid in {base}..{} is in use", u64::from(*base) + u64::from(*count))]
    UidsExhausted { base: u32, count: u32 },
    #[error("invalid jail cgroup {0:?}")]
    CgroupPath(String),
    #[error("no memory cgroup controller under {0}: the jail needs one (or set jail = false)")]
    NoMemoryController(PathBuf),
    #[error(
        "the jail needs root (uid 0) to start its processes; set jail = false to run unjailed"
    )]
    NotRoot,
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    #[error("binary {0} not found")]
    Binary(PathBuf),
}

/// The jail configuration (from [`Config`]'s `jail_*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSettings {
    pub uid_base: u32,
    /// 0: every sandbox runs as `nobody` (65534).
    pub uid_count: u32,
    pub uid_lock_dir: PathBuf,
    pub nofile: u64,
    pub fsize_bytes: u64,
    pub cgroup_root: PathBuf,
    /// Parent of the sandboxes' cgroups inside the memory hierarchy.
    pub cgroup_parent: String,
    pub memory_overhead_mib: u32,
    /// Test hook: calls removed from vhost-device-vsock's allowlist.
    pub vsock_seccomp_deny: Vec<String>,
}

impl JailSettings {
    /// The settings of `config`, or `None` when `jail = false`.
    pub fn from_config(config: &Config) -> Option<JailSettings> {
        config.jail.then(|| JailSettings {
            uid_base: config.jail_uid_base,
            uid_count: config.jail_uid_count,
            uid_lock_dir: PathBuf::from(UID_LOCK_DIR),
            nofile: config.jail_nofile,
            fsize_bytes: config.jail_fsize_mib.saturating_mul(1024 * 1024),
            cgroup_root: PathBuf::from(CGROUP_ROOT),
            cgroup_parent: config.jail_cgroup_parent.clone(),
            memory_overhead_mib: config.jail_memory_overhead_mib,
            vsock_seccomp_deny: config.jail_vsock_seccomp_deny.clone(),
        })
    }

    /// Memory cgroup limit of a sandbox with `memory_mib` of guest memory.
    pub fn memory_limit_bytes(&self, memory_mib: u32) -> u64 {
        (u64::from(memory_mib) + u64::from(self.memory_overhead_mib)) * 1024 * 1024
    }
}

/// One sandbox's jail: its uid and memory cgroup, held (by the process
/// group) until its processes are gone. Dropping it kills what is left in
/// the cgroup, removes the cgroup, then frees the uid.
#[derive(Debug)]
pub struct SandboxJail {
    // Field order is drop order: the cgroup (and its processes) goes before
    // the uid is free for another sandbox.
    cgroup: MemoryCgroup,
    lease: uid_pool::UidLease,
    settings: JailSettings,
}

/// A jailed command, ready to spawn.
pub struct Confined {
    pub program: PathBuf,
    pub prepared: child::Prepared,
}

impl Confined {
    /// The command, its jail entered between fork and exec.
    pub fn command(self) -> Command {
        let mut cmd = Command::new(&self.program);
        let prepared = self.prepared;
        // SAFETY: `child::enter` only makes system calls on data prepared
        // before the fork (no allocation, no locks): async-signal-safe.
        unsafe {
            cmd.pre_exec(move || child::enter(&prepared));
        }
        cmd
    }
}

fn sandbox_name(vm: &VmConfig) -> Result<String, JailError> {
    vm.dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| JailError::Path(vm.dir.clone()))
}

/// A number spreading sandboxes over the uid pool.
fn spread(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Removes the cgroups of sandboxes whose runtime died without cleaning up
/// (killed with SIGKILL): a cgroup named for a uid that no sandbox holds is
/// stale, and holding that uid's lock while removing it keeps a new sandbox
/// from taking the uid meanwhile. `mine` is the uid this sandbox holds.
fn remove_stale_cgroups(
    controller: &MemoryController,
    settings: &JailSettings,
    mine: u32,
    keep: &str,
) {
    for (uid, dir) in cgroup::sandbox_cgroups(controller.root(), &settings.cgroup_parent) {
        if dir.file_name().is_some_and(|n| n == keep) {
            continue;
        }
        let held = if uid == mine {
            None
        } else {
            match uid_pool::try_take(&settings.uid_lock_dir, uid) {
                Ok(Some(lease)) => Some(lease),
                // In use by a running sandbox, or not ours to judge.
                Ok(None) | Err(_) => continue,
            }
        };
        tracing::info!(cgroup = %dir.display(), "removing a stale sandbox cgroup");
        MemoryCgroup::existing(controller.clone(), dir).remove();
        drop(held);
    }
}

impl SandboxJail {
    /// Takes a uid, creates the memory cgroup, and opens the sandbox
    /// directory (and the runtime's sockets in it) to that uid.
    pub fn create(vm: &VmConfig, settings: &JailSettings) -> Result<SandboxJail, JailError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(JailError::NotRoot);
        }
        let name = sandbox_name(vm)?;
        let controller = MemoryController::probe(&settings.cgroup_root)
            .ok_or_else(|| JailError::NoMemoryController(settings.cgroup_root.clone()))?;
        let lease = uid_pool::take(
            &settings.uid_lock_dir,
            settings.uid_base,
            settings.uid_count,
            spread(&name),
        )?;
        let cgroup_name = format!("{}-{name}", lease.uid);
        if settings.uid_count > 0 {
            remove_stale_cgroups(&controller, settings, lease.uid, &cgroup_name);
        }
        let cgroup = MemoryCgroup::create(
            controller,
            &settings.cgroup_parent,
            &cgroup_name,
            settings.memory_limit_bytes(vm.memory_mib),
        )?;
        let jail = SandboxJail {
            cgroup,
            lease,
            settings: settings.clone(),
        };
        jail.open_sandbox_dir(vm)?;
        tracing::debug!(uid = jail.uid(), cgroup = %jail.cgroup.dir.display(), "sandbox jail ready");
        Ok(jail)
    }

    /// The jail of `vm`, when its configuration has one.
    pub fn for_vm(vm: &VmConfig) -> Result<Option<SandboxJail>, JailError> {
        vm.jail
            .as_ref()
            .map(|settings| SandboxJail::create(vm, settings))
            .transpose()
    }

    /// The command that starts `binary` as `process` of `vm`: confined to
    /// `jail` when there is one.
    pub fn command(
        jail: Option<&SandboxJail>,
        process: JailedProcess,
        vm: &VmConfig,
        binary: &Path,
    ) -> Result<Command, JailError> {
        Ok(match jail {
            Some(j) => j.confine(process, vm, binary)?.command(),
            None => Command::new(binary),
        })
    }

    /// The sandbox's uid (also its gid).
    pub fn uid(&self) -> u32 {
        self.lease.uid
    }

    /// The memory cgroup.
    pub fn cgroup(&self) -> &MemoryCgroup {
        &self.cgroup
    }

    fn open_sandbox_dir(&self, vm: &VmConfig) -> Result<(), JailError> {
        let gid = self.uid();
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| JailError::Io { what, path, source }
        };
        std::os::unix::fs::chown(&vm.dir, Some(0), Some(gid))
            .map_err(io("giving the jail the sandbox directory", &vm.dir))?;
        std::fs::set_permissions(&vm.dir, std::fs::Permissions::from_mode(0o1770))
            .map_err(io("giving the jail the sandbox directory", &vm.dir))?;
        // The runtime's listeners for guest-initiated connections
        // (`<vsock>_<port>`) are connected to by vhost-device-vsock.
        let prefix = format!(
            "{}_",
            vm.vsock_uds
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let entries = std::fs::read_dir(&vm.dir).map_err(io("listing", &vm.dir))?;
        for e in entries.flatten() {
            let is_sock = e.file_type().map(|t| t.is_socket()).unwrap_or(false);
            if is_sock && e.file_name().to_string_lossy().starts_with(&prefix) {
                std::os::unix::fs::chown(e.path(), Some(self.uid()), Some(gid))
                    .map_err(io("giving the jail a socket", &e.path()))?;
            }
        }
        Ok(())
    }

    /// The jail of `process` (binary `binary`) for `vm`.
    pub fn confine(
        &self,
        process: JailedProcess,
        vm: &VmConfig,
        binary: &Path,
    ) -> Result<Confined, JailError> {
        let program = crate::host::resolve_binary(binary)
            .and_then(|p| std::fs::canonicalize(p).ok())
            .ok_or_else(|| JailError::Binary(binary.to_path_buf()))?;
        let writable: Vec<u64> = vm
            .drives
            .iter()
            .filter(|d| !d.read_only)
            .filter_map(|d| std::fs::metadata(&d.path).ok().map(|m| m.len()))
            .collect();
        let input = PlanInput {
            process,
            binary: &program,
            uid: self.uid(),
            gid: self.uid(),
            limits: Limits {
                nofile: self.settings.nofile,
                fsize: self.settings.fsize_bytes,
            },
            cgroup_procs: Some(self.cgroup.procs_file()),
            writable_drive_bytes: &writable,
        };
        let plan = plan::plan(vm, &input, plan::host_entry);
        let filter = match process {
            JailedProcess::VhostVsock => Some(seccomp::vhost_vsock_filter(
                &self.settings.vsock_seccomp_deny,
            )?),
            // QEMU filters itself (-sandbox); ampoule-vmm installs its own.
            JailedProcess::Qemu | JailedProcess::AmpouleVmm => None,
        };
        let prepared = child::prepare(&plan, filter)?;
        tracing::debug!(process = process.as_str(), ?plan, "jail plan");
        Ok(Confined { program, prepared })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_is_guest_memory_plus_overhead() {
        let mut s = JailSettings::from_config(&Config::default()).expect("jail on by default");
        s.memory_overhead_mib = 100;
        assert_eq!(s.memory_limit_bytes(256), 356 * 1024 * 1024);
    }

    #[test]
    fn jail_off_gives_no_settings() {
        let c = Config {
            jail: false,
            ..Config::default()
        };
        assert!(JailSettings::from_config(&c).is_none());
    }

    #[test]
    fn spread_differs_between_sandboxes() {
        assert_ne!(spread("a1"), spread("a2"));
    }
}
