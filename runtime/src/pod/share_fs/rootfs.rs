//! A container's root filesystem in the shared directory: the host's own
//! rootfs mounted there, so the guest uses it in place (writes land where
//! runc would put them, and nothing is copied or imaged).

use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::Mode;

use super::{fd_path, ShareFsError};
use crate::container::rootfs::MountSpec;

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// A directory: an OCI bundle's `rootfs/` (already checked by the
    /// bundle loader), or the bundle rootfs containerd prepared.
    Dir(PathBuf),
    /// containerd's snapshot mounts (`CreateTaskRequest.rootfs`): one
    /// overlay or one bind.
    Mounts(Vec<MountSpec>),
}

/// Mount flags and fs data of `mount(8)`-style options.
pub fn split_options(options: &[String]) -> (MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags -= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "defaults" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data)
}

fn mount_err(what: &'static str, path: &Path, e: nix::errno::Errno) -> ShareFsError {
    ShareFsError::Io {
        what,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn bind_dir(source: &Path, target: &Path, read_only: bool) -> Result<(), ShareFsError> {
    let fd = nix::fcntl::open(
        source,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ShareFsError::BadRootfs(format!("{}: {e}", source.display())))?;
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    nix::mount::mount(
        Some(&fd_path(&fd)),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| mount_err("binding the rootfs on", target, e))?;
    if read_only {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| mount_err("making the rootfs read-only on", target, e))?;
    }
    Ok(())
}

/// Mounts `source` at `target` (an empty directory).
pub fn mount_at(source: &RootfsSource, target: &Path) -> Result<(), ShareFsError> {
    match source {
        RootfsSource::Dir(dir) => bind_dir(dir, target, false),
        RootfsSource::Mounts(mounts) => {
            let [m] = mounts.as_slice() else {
                return Err(ShareFsError::BadRootfs(format!(
                    "has {} mounts; one overlay or one bind is supported",
                    mounts.len()
                )));
            };
            let (flags, data) = split_options(&m.options);
            match m.kind.as_str() {
                "bind" | "rbind" => bind_dir(
                    Path::new(&m.source),
                    target,
                    flags.contains(MsFlags::MS_RDONLY),
                ),
                "overlay" => {
                    if !data.iter().any(|d| d.starts_with("lowerdir=")) {
                        return Err(ShareFsError::BadRootfs(format!(
                            "overlay mount without lowerdir: {:?}",
                            m.options
                        )));
                    }
                    let data = data.join(",");
                    nix::mount::mount(
                        Some("overlay"),
                        target,
                        Some("overlay"),
                        flags,
                        Some(data.as_str()),
                    )
                    .map_err(|e| mount_err("mounting the overlay rootfs on", target, e))
                }
                other => Err(ShareFsError::BadRootfs(format!(
                    "mount type {other:?} is not supported (overlay or bind expected)"
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_overlay_data() {
        let (flags, data) = split_options(&[
            "index=off".into(),
            "workdir=/w".into(),
            "upperdir=/u".into(),
            "lowerdir=/a:/b".into(),
            "ro".into(),
            "nosuid".into(),
        ]);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(
            data,
            vec!["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"]
        );
    }

    #[test]
    fn unsupported_rootfs_mounts_are_named() {
        let t = Path::new("/nonexistent-target");
        let two = RootfsSource::Mounts(vec![
            MountSpec {
                kind: "bind".into(),
                source: "/a".into(),
                options: vec![],
            };
            2
        ]);
        assert!(mount_at(&two, t)
            .unwrap_err()
            .to_string()
            .contains("2 mounts"));
        let nfs = RootfsSource::Mounts(vec![MountSpec {
            kind: "nfs".into(),
            source: "h:/x".into(),
            options: vec![],
        }]);
        assert!(mount_at(&nfs, t)
            .unwrap_err()
            .to_string()
            .contains("\"nfs\" is not supported"));
    }
}
