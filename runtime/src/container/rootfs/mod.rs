//! Rootfs images: container filesystems turned into read-only erofs images
//! (`mkfs.erofs`, run from [`mkfs_erofs`] only) that the guest mounts from
//! virtio-blk drives.
//!
//! Two callers, two cache rules:
//! - the OCI CLI: a bundle's `rootfs/` directory, built into a private image
//!   and cached by the hash of that image's bytes ([`rootfs_image`]), so an
//!   unchanged rootfs is stored once whatever its path; bind sources copied
//!   into one image ([`binds_image`]);
//! - the containerd shim: the snapshot layers containerd mounts
//!   ([`layers`]: overlay `lowerdir`s or one bind), cached per snapshot chain
//!   by path, inode and ctime (hashing every layer's content on every task
//!   would cost more than the snapshotter's own guarantee that a committed
//!   snapshot does not change); the spec's bind mounts packed into an image
//!   ([`layers::bind_sources_image`]); and the drive slots ([`slots`]) that
//!   bring images into a running microVM without hotplug.

pub mod layers;
pub mod slots;

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub use layers::{
    bind_sources_image, cache_key, erofs_image, layers_image, parse_mounts, split_lowerdir, Layers,
    MountSpec,
};
pub use slots::{create_slot, fill_slot, slot_count, SLOT_BYTES};

/// `mkfs.erofs` binary.
pub const MKFS_EROFS: &str = "mkfs.erofs";

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("no rootfs mount in the task request")]
    NoMount,
    #[error("unsupported rootfs mount type {0:?} (overlay or bind expected)")]
    UnsupportedType(String),
    #[error("overlay rootfs mount without lowerdir: options {0:?}")]
    NoLowerdir(Vec<String>),
    #[error("rootfs layer {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{MKFS_EROFS} failed for {dir}: {reason}")]
    Mkfs { dir: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bind mount source {0} does not exist")]
    NoBindSource(PathBuf),
    #[error(
        "image {path} ({size} bytes) does not fit a drive slot of {} bytes",
        slots::SLOT_BYTES
    )]
    TooBig { path: PathBuf, size: u64 },
    #[error("all drive slots of the sandbox are used ({} virtio devices at most on microvm): no room for another container image", slots::VIRTIO_TRANSPORTS)]
    NoFreeSlot,
}

pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Hex SHA-256 of `parts` joined with `/`.
pub fn hash_hex(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.join("/").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// File timestamps inside an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamps {
    /// As on the host.
    Keep,
    /// All zero (`-T0`): the image depends only on content, matching a
    /// content-hash cache key.
    Zero,
}

/// Builds `dir` into an erofs image at `out`, through a temporary file next
/// to it that is renamed into place, so a half-built image is never used.
pub fn mkfs_erofs(dir: &Path, out: &Path, timestamps: Timestamps) -> Result<(), RootfsError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut cmd = Command::new(MKFS_EROFS);
    cmd.arg("--quiet");
    if timestamps == Timestamps::Zero {
        cmd.arg("-T0");
    }
    let output = cmd
        .arg(&tmp)
        .arg(dir)
        .output()
        .map_err(|e| RootfsError::Mkfs {
            dir: dir.to_path_buf(),
            reason: format!("running {MKFS_EROFS} (apt-get install erofs-utils): {e}"),
        })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(RootfsError::Mkfs {
            dir: dir.to_path_buf(),
            reason: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("renaming image", out)(e)
    })?;
    tracing::info!(dir = %dir.display(), image = %out.display(), "erofs image built");
    Ok(())
}

/// Copies each `(path in image, host path)` source into `staging` at its
/// path in the image and packs `staging` into an erofs image at `out`.
/// `staging` is removed afterwards, whatever happened.
pub fn pack_sources(
    sources: &[(PathBuf, PathBuf)],
    staging: &Path,
    out: &Path,
    timestamps: Timestamps,
) -> Result<(), RootfsError> {
    let result = (|| {
        std::fs::create_dir_all(staging).map_err(io("creating bind staging", staging))?;
        for (in_image, host) in sources {
            let rel = in_image.strip_prefix("/").unwrap_or(in_image);
            let dst = staging.join(rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating bind staging", parent))?;
            }
            let output = Command::new("cp")
                .arg("-a")
                .arg("-T")
                .arg("--")
                .arg(host)
                .arg(&dst)
                .output()
                .map_err(io("copying bind source", host))?;
            if !output.status.success() {
                return Err(RootfsError::Io {
                    what: "copying bind source",
                    path: host.clone(),
                    source: std::io::Error::other(
                        String::from_utf8_lossy(&output.stderr).trim().to_string(),
                    ),
                });
            }
        }
        mkfs_erofs(staging, out, timestamps)
    })();
    let _ = std::fs::remove_dir_all(staging);
    result
}

/// Filesystem UUID of cached rootfs images: with it and `-T0`, an image's
/// bytes depend only on the tree, so equal trees share one cache entry.
const CACHE_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// The cached erofs image of a bundle's `rootfs`, keyed by the image's own
/// bytes: the tree is read once, by `mkfs.erofs`, into a private temporary
/// image (an unpredictable O_EXCL name in the cache); its SHA-256 names the
/// entry, and it is renamed into place atomically (or dropped when an equal
/// image is already there). Whatever the image holds (contents, modes,
/// owners, xattrs, hard links, symlinks) is in the key, and a tree that
/// changes while it is read cannot put other bytes under a key than the
/// ones it names. `rootfs` itself must not be a symlink: it is opened with
/// O_NOFOLLOW and `mkfs.erofs` reads that open directory.
pub fn rootfs_image(rootfs: &Path, cache_dir: &Path) -> Result<PathBuf, RootfsError> {
    use std::io::Seek;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    std::fs::create_dir_all(cache_dir).map_err(io("creating cache", cache_dir))?;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(rootfs)
        .map_err(|e| {
            if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) {
                RootfsError::NotADirectory {
                    path: rootfs.to_path_buf(),
                }
            } else {
                io("opening rootfs", rootfs)(e)
            }
        })?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".build-")
        .suffix(".erofs")
        .tempfile_in(cache_dir)
        .map_err(io("creating a temporary image in", cache_dir))?;
    let t = std::time::Instant::now();
    let fd = dir.as_raw_fd();
    let mut cmd = Command::new(MKFS_EROFS);
    cmd.args(["--quiet", "-T0", "-U", CACHE_UUID])
        .arg(tmp.path())
        .arg(format!("/proc/self/fd/{fd}"));
    // SAFETY: between fork and exec the closure only calls fcntl(2), which
    // is async-signal-safe, on the child's copy of `fd` (open in the
    // parent until the command has finished).
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = cmd.output().map_err(|e| RootfsError::Mkfs {
        dir: rootfs.to_path_buf(),
        reason: format!("running {MKFS_EROFS} (apt-get install erofs-utils): {e}"),
    })?;
    drop(dir);
    if !output.status.success() {
        return Err(RootfsError::Mkfs {
            dir: rootfs.to_path_buf(),
            reason: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let file = tmp.as_file_mut();
    file.rewind().map_err(io("reading", rootfs))?;
    let mut h = Sha256::new();
    std::io::copy(file, &mut h).map_err(io("hashing the image of", rootfs))?;
    let key: String = h
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let img = cache_dir.join(format!("{key}.erofs"));
    if img.is_file() {
        tracing::debug!(image = %img.display(), "rootfs image cached");
        return Ok(img);
    }
    // The VM's (jailed, unprivileged) processes read the image.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io("making readable", tmp.path()))?;
    tmp.persist(&img)
        .map_err(|e| io("renaming image", &img)(e.error))?;
    tracing::debug!(image = %img.display(), ms = t.elapsed().as_millis() as u64, "rootfs image built");
    Ok(img)
}

/// Builds an image holding each bind mount source at its spec path
/// (`<image>/<source>`), at `out`. `sources` are (spec path, host path).
pub fn binds_image(
    sources: &[(PathBuf, PathBuf)],
    staging: &Path,
    out: &Path,
) -> Result<(), RootfsError> {
    if let Some((_, host)) = sources
        .iter()
        .find(|(_, host)| std::fs::symlink_metadata(host).is_err())
    {
        return Err(RootfsError::NoBindSource(host.clone()));
    }
    pack_sources(sources, staging, out, Timestamps::Zero)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_mkfs(test: &str) -> bool {
        let ok = crate::host::resolve_binary(Path::new(MKFS_EROFS)).is_some();
        if !ok {
            println!("SKIPPED: {test}: no mkfs.erofs");
        }
        ok
    }

    fn tree(d: &Path, name: &str) -> PathBuf {
        let r = d.join(name);
        std::fs::create_dir_all(r.join("bin")).expect("mkdir");
        std::fs::write(r.join("bin/a"), b"hello").expect("write");
        std::os::unix::fs::symlink("a", r.join("bin/b")).expect("symlink");
        r
    }

    #[test]
    fn image_key_follows_what_the_image_holds_xattrs_and_hard_links_included() {
        if !have_mkfs("image_key_follows_what_the_image_holds_xattrs_and_hard_links_included") {
            return;
        }
        let d = tempfile::tempdir().expect("tempdir");
        let cache = d.path().join("cache");
        let base = rootfs_image(&tree(d.path(), "r1"), &cache).expect("build");
        // Same content elsewhere, later: the same image.
        let same = tree(d.path(), "r2");
        assert_eq!(rootfs_image(&same, &cache).expect("build"), base);
        // Content.
        let t = tree(d.path(), "content");
        std::fs::write(t.join("bin/a"), b"hellO").expect("change");
        assert_ne!(rootfs_image(&t, &cache).expect("build"), base);
        // An xattr.
        let t = tree(d.path(), "xattr");
        let path = std::ffi::CString::new(t.join("bin/a").into_os_string().into_encoded_bytes())
            .expect("path");
        // SAFETY: NUL-terminated path and name; the value is a valid buffer
        // of the given length.
        let rc = unsafe {
            libc::setxattr(
                path.as_ptr(),
                c"user.ampoule-test".as_ptr(),
                b"1".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
        let with_xattr = rootfs_image(&t, &cache).expect("build");
        assert_ne!(with_xattr, base, "an xattr changes the key");
        // A hard link versus a copy of the same bytes.
        let copy = tree(d.path(), "copy");
        std::fs::write(copy.join("bin/c"), b"hello").expect("copy");
        let linked = tree(d.path(), "linked");
        std::fs::hard_link(linked.join("bin/a"), linked.join("bin/c")).expect("link");
        assert_ne!(
            rootfs_image(&copy, &cache).expect("build"),
            rootfs_image(&linked, &cache).expect("build"),
            "a hard link changes the key"
        );
        // The key is the hash of the bytes in the cache.
        let bytes = std::fs::read(&with_xattr).expect("read");
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(with_xattr, cache.join(format!("{digest}.erofs")));
        let names: Vec<_> = std::fs::read_dir(&cache)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.ends_with(".erofs") && !n.starts_with('.')),
            "{names:?}"
        );
    }

    #[test]
    fn a_symlinked_rootfs_is_not_followed() {
        let d = tempfile::tempdir().expect("tempdir");
        let real = tree(d.path(), "real");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let cache = d.path().join("cache");
        assert!(matches!(
            rootfs_image(&link, &cache),
            Err(RootfsError::NotADirectory { .. })
        ));
        assert_eq!(std::fs::read_dir(&cache).expect("ls").count(), 0);
    }

    #[test]
    fn image_is_built_once_and_cached() {
        if !have_mkfs("image_is_built_once_and_cached") {
            return;
        }
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path().join("r");
        std::fs::create_dir_all(&r).expect("mkdir");
        std::fs::write(r.join("f"), b"x").expect("write");
        let cache = d.path().join("cache");
        let a = rootfs_image(&r, &cache).expect("build");
        let m1 = std::fs::metadata(&a)
            .expect("meta")
            .modified()
            .expect("mtime");
        let b = rootfs_image(&r, &cache).expect("cached");
        assert_eq!(a, b);
        assert_eq!(
            std::fs::metadata(&b)
                .expect("meta")
                .modified()
                .expect("mtime"),
            m1
        );
        assert_eq!(
            std::fs::read_dir(&cache).expect("ls").count(),
            1,
            "no temporary files left"
        );
    }
}
