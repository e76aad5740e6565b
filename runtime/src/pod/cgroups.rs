//! The pod's host cgroup (`linux.cgroupsPath`): the sandbox's host
//! processes (VMM, vhost-user backends) are moved there, so the host's
//! accounting (Kubernetes, systemd, `ctr`) sees what the pod costs. One
//! rule for the shim and the OCI CLI.
//!
//! A jailed sandbox's processes stay in the jail's memory cgroup, which
//! limits them to guest memory plus overhead: the hierarchy that holds it
//! (cgroup v1 `memory`, or the unified hierarchy on v2) is left out, with a
//! note in the log. Nesting the jail's cgroup under the pod's would give
//! both; it is not done yet.

use std::path::{Path, PathBuf};

use crate::host_cgroup::{self, CgroupError};
use crate::jail::cgroup::MemoryController;
use crate::sandbox::Sandbox;

/// The host's cgroup mount.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Moves `sandbox`'s host processes into `cgroups_path` (created where
/// missing). Returns the directories created, to remove with
/// [`host_cgroup::remove`] when the sandbox is gone.
pub fn place(sandbox: &Sandbox, cgroups_path: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let root = Path::new(CGROUP_ROOT);
    let keep_out = if sandbox.jailed() {
        MemoryController::probe(root).map(|c| c.root().to_path_buf())
    } else {
        None
    };
    if let Some(k) = &keep_out {
        tracing::info!(
            hierarchy = %k.display(),
            "the sandbox's processes stay in their jail's memory cgroup"
        );
    }
    host_cgroup::place_except(root, cgroups_path, &sandbox.pids(), keep_out.as_deref())
}
