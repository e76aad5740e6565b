//! The pod's host cgroup (`linux.cgroupsPath`): the sandbox's host
//! processes (VMM, vhost-user backends) are moved there, so the host's
//! accounting (Kubernetes, systemd, `ctr`) sees what the pod costs. One
//! rule for the shim and the OCI CLI.
//!
//! A jailed sandbox's processes stay in the jail's memory cgroup, which
//! limits them to guest memory plus overhead; started with the pod's
//! cgroupsPath ([`crate::SandboxSpec::cgroups_path`]) that cgroup is made
//! inside the pod's memory cgroup, so the pod's accounting and limit hold
//! them too.

use std::path::{Path, PathBuf};

use crate::host_cgroup::{self, CgroupError, ResourceWrite};
use crate::jail::cgroup::MemoryController;
use crate::sandbox::Sandbox;

/// The host's cgroup mount.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Moves `sandbox`'s host processes into `cgroups_path` (created where
/// missing), whose `limits` ([`limits`]) are set first. Returns the
/// directories created, to remove with [`host_cgroup::remove`] when the
/// sandbox is gone.
pub fn place(
    sandbox: &Sandbox,
    cgroups_path: &str,
    limits: &[ResourceWrite],
) -> Result<Vec<PathBuf>, CgroupError> {
    let root = Path::new(CGROUP_ROOT);
    let keep_out = if sandbox.jailed() {
        MemoryController::probe(root).map(|c| c.root().to_path_buf())
    } else {
        None
    };
    if let Some(k) = &keep_out {
        tracing::debug!(
            hierarchy = %k.display(),
            "the sandbox's processes stay in their jail's memory cgroup"
        );
    }
    host_cgroup::place_except(
        root,
        cgroups_path,
        &sandbox.pids(),
        keep_out.as_deref(),
        limits,
    )
}

/// The host limits of a sandbox of `memory_mib` guest memory whose
/// container asks `resources`: the container's CPU limits, and when it has
/// a memory limit, guest memory plus `overhead_mib` for the VMM.
pub fn limits(
    resources: Option<&oci_spec::runtime::LinuxResources>,
    memory_mib: u32,
    overhead_mib: u32,
) -> Vec<ResourceWrite> {
    let Some(r) = resources else {
        return Vec::new();
    };
    let limited = r
        .memory()
        .as_ref()
        .and_then(|m| m.limit())
        .is_some_and(|l| l > 0);
    let budget = limited.then(|| (u64::from(memory_mib) + u64::from(overhead_mib)) << 20);
    let unified = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
    host_cgroup::resource_files(r, unified, budget)
}

/// Where a jailed sandbox's memory cgroup goes for a pod in `cgroups_path`:
/// the pod's directory in the memory hierarchy, relative to its root.
pub fn jail_parent(cgroups_path: &str) -> Option<String> {
    let root = Path::new(CGROUP_ROOT);
    let memory = MemoryController::probe(root)?;
    host_cgroup::directories(root, cgroups_path)
        .ok()?
        .into_iter()
        .find_map(|d| {
            d.strip_prefix(memory.root())
                .ok()
                .filter(|r| !r.as_os_str().is_empty())
                .map(|r| format!("/{}", r.display()))
        })
}
