//! The pod's network namespace: created by the calling thread and bound
//! to a file, as `ip netns add` does, so that it outlives the thread and
//! containers join it by path.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// The calling thread's network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("creating a network namespace (unshare CLONE_NEWNET): {0}")]
    Unshare(#[source] nix::Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding {THREAD_NETNS} onto {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NetnsError + 'a {
    move |source| NetnsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a namespace is bound at `path` (it is on nsfs).
pub fn is_bound(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Moves the calling thread into a new network namespace and binds that
/// namespace at `path` (its parent created as needed). Only for a thread
/// that runs nothing else: it stays in the new namespace.
pub fn unshare_and_bind(path: &Path) -> Result<(), NetnsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("creating", path))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
    nix::mount::mount(
        Some(THREAD_NETNS),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| NetnsError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::debug!(path = %path.display(), "pod network namespace bound");
    Ok(())
}

/// Undoes [`unshare_and_bind`] after a failed setup; the namespace goes
/// when its last user (the setup thread) does.
pub fn unbind(path: &Path) {
    if let Err(e) = nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        tracing::warn!(path = %path.display(), error = %e, "unbinding the pod network namespace");
    }
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "removing the pod network namespace file");
    }
}

/// An fd of the namespace bound at `path` (for IFLA_NET_NS_FD).
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(io_err("opening", path))
}
