//! The pod's shared directory: one host directory per sandbox, served into
//! the guest by one `virtiofsd` over virtio-fs (tag
//! [`ampoule_agent_api::SHARED_FS_TAG`]). Nothing is copied: the container
//! root filesystems and the sources of bind mounts are *mounted* into it.
//!
//! Layout under `<run_dir>/.shared/<sandbox id>` ([`dir_for`]; outside the
//! sandbox directory, which the hypervisor's jail sees):
//! - `containers/<id>/rootfs`: the container's root (the bundle's `rootfs/`
//!   bound, or containerd's snapshot mounts mounted there);
//! - `volumes/<key>`: one bind mount per host source and access mode
//!   (`volumes.rs`), shared by every container of the pod that mounts that
//!   source, so one host directory in two containers is one directory in
//!   the guest.
//!
//! The directory is a mount point of its own with a private peer group made
//! shared, so what is mounted under it after virtiofsd started (which makes
//! its own namespace a slave) reaches virtiofsd, and nothing propagates to
//! the rest of the host.
//!
//! Teardown never removes recursively: it detaches the whole tree, then
//! removes only the entries it created, each with `rmdir`/`unlink`, so a
//! mount that is somehow still there keeps the user's data.

pub mod container;
pub mod rootfs;
pub mod virtiofsd;
pub mod volumes;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};

pub use rootfs::RootfsSource;
pub use volumes::{BindPlan, Volume};

/// Directory under the run directory that holds the shared directories
/// (sandbox ids cannot start with '.').
pub const SHARED_PARENT: &str = ".shared";

#[derive(Debug, thiserror::Error)]
pub enum ShareFsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bind mount source {source_path:?}{}: {reason}", if destination.is_empty() { String::new() } else { format!(" (destination {destination})") })]
    BadBindSource {
        source_path: String,
        destination: String,
        reason: String,
    },
    #[error("container rootfs {0}")]
    BadRootfs(String),
    #[error("invalid container id {0:?} for the shared directory")]
    BadId(String),
}

pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ShareFsError + 'a {
    move |source| ShareFsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The shared directory of the sandbox whose directory is `sandbox_dir`
/// (`<run_dir>/<id>` → `<run_dir>/.shared/<id>`).
pub fn dir_for(sandbox_dir: &Path) -> PathBuf {
    let id = sandbox_dir.file_name().unwrap_or_default();
    sandbox_dir
        .parent()
        .unwrap_or(Path::new("/"))
        .join(SHARED_PARENT)
        .join(id)
}

/// `/proc/self/fd/N`: mounting from it mounts exactly the object `fd` was
/// opened on, whatever happened to its path since.
pub(crate) fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), ShareFsError> {
    nix::mount::mount(source, target, fstype, flags, data).map_err(|e| ShareFsError::Io {
        what: "mount on",
        path: target.to_path_buf(),
        source: std::io::Error::from(e),
    })
}

/// A volume mounted in the shared directory and the containers using it.
#[derive(Debug)]
struct Mounted {
    rel: String,
    users: Vec<String>,
}

/// A sandbox's shared directory on the host.
#[derive(Debug)]
pub struct SharedDir {
    root: PathBuf,
    volumes: Mutex<HashMap<Volume, Mounted>>,
}

impl SharedDir {
    /// Creates the directory for the sandbox at `sandbox_dir` and makes it a
    /// mount point of its own peer group (see the module doc).
    pub fn create(sandbox_dir: &Path) -> Result<SharedDir, ShareFsError> {
        use std::os::unix::fs::DirBuilderExt;
        let root = dir_for(sandbox_dir);
        // The parent may be removed by another sandbox's teardown between
        // the two steps: try again once.
        let mut attempt = 0;
        loop {
            if let Some(parent) = root.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(io("creating", parent))?;
            }
            match std::fs::DirBuilder::new().mode(0o755).create(&root) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt == 0 => {
                    attempt += 1;
                }
                Err(e) => return Err(io("creating shared directory", &root)(e)),
            }
        }
        let made = (|| {
            mount(Some(&root), &root, None, MsFlags::MS_BIND, None)?;
            mount(None, &root, None, MsFlags::MS_PRIVATE, None)?;
            mount(None, &root, None, MsFlags::MS_SHARED, None)?;
            for d in ["containers", "volumes"] {
                let p = root.join(d);
                std::fs::create_dir(&p).map_err(io("creating", &p))?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            teardown(&root);
            return Err(e);
        }
        tracing::debug!(dir = %root.display(), "shared directory created");
        Ok(SharedDir {
            root,
            volumes: Mutex::new(HashMap::new()),
        })
    }

    /// The directory virtiofsd serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn container_dir(&self, id: &str) -> Result<PathBuf, ShareFsError> {
        if crate::state::validate_id(id).is_err() {
            return Err(ShareFsError::BadId(id.to_string()));
        }
        Ok(self.root.join("containers").join(id))
    }

    /// Mounts the container's root filesystem into the shared directory.
    /// Returns its path relative to the shared directory.
    pub fn add_rootfs(&self, id: &str, source: &RootfsSource) -> Result<String, ShareFsError> {
        let dir = self.container_dir(id)?;
        let target = dir.join("rootfs");
        std::fs::create_dir_all(&target).map_err(io("creating", &target))?;
        if let Err(e) = rootfs::mount_at(source, &target) {
            let _ = std::fs::remove_dir(&target);
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(format!("containers/{id}/rootfs"))
    }

    /// Mounts the host sources of `plan`'s bind mounts (one mount per
    /// source and mode for the whole pod). Returns spec source → path
    /// relative to the shared directory, for the agent.
    pub fn add_volumes(
        &self,
        id: &str,
        plan: &BindPlan,
    ) -> Result<HashMap<String, String>, ShareFsError> {
        self.container_dir(id)?;
        let mut volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = HashMap::new();
        for (written, vol) in &plan.sources {
            let result = match volumes.get_mut(vol) {
                Some(m) => {
                    if !m.users.iter().any(|u| u == id) {
                        m.users.push(id.to_string());
                    }
                    Ok(m.rel.clone())
                }
                None => volumes::mount_volume(&self.root, vol).inspect(|rel| {
                    volumes.insert(
                        vol.clone(),
                        Mounted {
                            rel: rel.clone(),
                            users: vec![id.to_string()],
                        },
                    );
                }),
            };
            match result {
                Ok(rel) => {
                    map.insert(written.clone(), rel);
                }
                Err(e) => {
                    drop(volumes);
                    self.release_volumes(id);
                    return Err(e);
                }
            }
        }
        Ok(map)
    }

    fn release_volumes(&self, id: &str) {
        let mut volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        volumes.retain(|_, m| {
            m.users.retain(|u| u != id);
            if m.users.is_empty() {
                volumes::unmount_volume(&self.root, &m.rel);
                false
            } else {
                true
            }
        });
    }

    /// Unmounts the container's root filesystem and the volumes no other
    /// container uses.
    pub fn remove_container(&self, id: &str) {
        self.release_volumes(id);
        let Ok(dir) = self.container_dir(id) else {
            return;
        };
        let target = dir.join("rootfs");
        let _ = nix::mount::umount2(&target, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&target);
        let _ = std::fs::remove_dir(&dir);
    }

    /// Number of volumes mounted now.
    pub fn volume_count(&self) -> usize {
        self.volumes.lock().map(|v| v.len()).unwrap_or_default()
    }
}

/// Detaches everything mounted under the shared directory `root` and
/// removes the entries the pod service created there, never recursively.
/// Safe to call on a directory that is gone or half made.
pub fn teardown(root: &Path) {
    if !root.exists() {
        return;
    }
    if let Err(e) = nix::mount::umount2(root, MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL {
            tracing::warn!(dir = %root.display(), error = %e, "cannot detach the shared directory");
        }
    }
    for sub in ["containers", "volumes"] {
        let dir = root.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let _ = nix::mount::umount2(&p, MntFlags::MNT_DETACH);
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    if sub == "containers" {
                        let r = p.join("rootfs");
                        let _ = nix::mount::umount2(&r, MntFlags::MNT_DETACH);
                        let _ = std::fs::remove_dir(&r);
                    }
                    if let Err(e) = std::fs::remove_dir(&p) {
                        tracing::warn!(path = %p.display(), error = %e, "left in the shared directory");
                    }
                }
                _ => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    if let Err(e) = std::fs::remove_dir(root) {
        tracing::warn!(dir = %root.display(), error = %e, "cannot remove the shared directory");
    }
    // The parent goes with the last sandbox (rmdir fails while others use it).
    if let Some(parent) = root.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_directory_sits_beside_the_sandbox_directories_not_inside() {
        assert_eq!(
            dir_for(Path::new("/run/ampoule/vm/abc")),
            Path::new("/run/ampoule/vm/.shared/abc")
        );
    }
}
