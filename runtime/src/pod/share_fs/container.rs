//! One container's files through the shared directory: its root
//! filesystem and the sources of its bind mounts, mounted into the pod's
//! shared directory, and the agent request that uses them in place.

use std::collections::HashMap;
use std::path::Path;

use crate::pod::guest::ContainerFiles;

use super::{volumes, RootfsSource, ShareFsError, SharedDir};

/// What the agent needs to find a container's files in the shared
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFiles {
    /// The spec as sent to the guest (a `/dev/shm` bind made a tmpfs).
    pub spec_json: Vec<u8>,
    /// The rootfs, relative to the shared directory.
    pub rootfs: String,
    /// Bind source as written → path relative to the shared directory.
    pub binds: HashMap<String, String>,
}

/// The spec's bind mounts, planned (sources checked for `..`; relative
/// ones taken below `bundle`), and the spec as it will reach the guest.
pub fn plan_binds(
    spec_json: &[u8],
    bundle: Option<&Path>,
) -> Result<(serde_json::Value, volumes::BindPlan), ShareFsError> {
    let mut spec: serde_json::Value = serde_json::from_slice(spec_json)
        .map_err(|e| ShareFsError::BadRootfs(format!("spec is not JSON: {e}")))?;
    let plan = volumes::plan(&mut spec, bundle)?;
    Ok((spec, plan))
}

/// Mounts container `id`'s rootfs and bind sources into `shared`. On
/// error nothing of the container is left mounted.
pub fn share(
    shared: &SharedDir,
    id: &str,
    rootfs: &RootfsSource,
    spec_json: &[u8],
    bundle: Option<&Path>,
) -> Result<SharedFiles, ShareFsError> {
    let (spec, plan) = plan_binds(spec_json, bundle)?;
    let spec_json = serde_json::to_vec(&spec)
        .map_err(|e| ShareFsError::BadRootfs(format!("spec cannot be written: {e}")))?;
    let rootfs = shared.add_rootfs(id, rootfs)?;
    let binds = match shared.add_volumes(id, &plan) {
        Ok(b) => b,
        Err(e) => {
            shared.remove_container(id);
            return Err(e);
        }
    };
    Ok(SharedFiles {
        spec_json,
        rootfs,
        binds,
    })
}

impl SharedFiles {
    /// The spec to send and where the agent finds the files.
    pub fn into_request_parts(self) -> (Vec<u8>, ContainerFiles) {
        (
            self.spec_json,
            ContainerFiles::Shared {
                rootfs: self.rootfs,
                binds: self.binds,
            },
        )
    }
}
