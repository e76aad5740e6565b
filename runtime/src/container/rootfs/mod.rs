//! Rootfs images: container filesystems turned into read-only erofs images
//! (`mkfs.erofs`, run from [`mkfs_erofs`] only) that the guest mounts from
//! virtio-blk drives.
//!
//! Two callers, two cache rules:
//! - the OCI CLI: a bundle's `rootfs/` directory, cached by the hash of the
//!   tree's content ([`rootfs_image`]), so an unchanged rootfs is built once
//!   whatever its path; bind sources copied into one image ([`binds_image`]);
//! - the containerd shim: the snapshot layers containerd mounts
//!   ([`layers`]: overlay `lowerdir`s or one bind), cached per snapshot chain
//!   by path, inode and ctime (hashing every layer's content on every task
//!   would cost more than the snapshotter's own guarantee that a committed
//!   snapshot does not change); the spec's bind mounts packed into an image
//!   ([`layers::bind_sources_image`]); and the drive slots ([`slots`]) that
//!   bring images into a running microVM without hotplug.

pub mod layers;
pub mod slots;

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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

/// Hash of a directory tree: names, types, modes, owners, symlink targets,
/// device numbers and file contents (not timestamps), in sorted order.
pub fn hash_tree(root: &Path) -> Result<String, RootfsError> {
    let mut h = Sha256::new();
    hash_dir(root, Path::new(""), &mut h)?;
    let digest = h.finalize();
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

fn hash_dir(abs: &Path, rel: &Path, h: &mut Sha256) -> Result<(), RootfsError> {
    let mut entries: Vec<_> = std::fs::read_dir(abs)
        .map_err(io("reading", abs))?
        .collect::<Result<_, _>>()
        .map_err(io("reading", abs))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let m = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        h.update(name.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(m.mode().to_le_bytes());
        h.update(m.uid().to_le_bytes());
        h.update(m.gid().to_le_bytes());
        let ft = m.file_type();
        if ft.is_symlink() {
            let t = std::fs::read_link(&path).map_err(io("reading", &path))?;
            h.update(t.as_os_str().as_encoded_bytes());
        } else if ft.is_dir() {
            hash_dir(&path, &name, h)?;
        } else if ft.is_file() {
            h.update(m.len().to_le_bytes());
            let mut f = std::fs::File::open(&path).map_err(io("reading", &path))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).map_err(io("reading", &path))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        } else if ft.is_block_device() || ft.is_char_device() {
            h.update(m.rdev().to_le_bytes());
        }
        h.update([0xff]);
    }
    Ok(())
}

/// The cached erofs image of a bundle's `rootfs`, keyed by its content
/// ([`hash_tree`]), built if needed.
pub fn rootfs_image(rootfs: &Path, cache_dir: &Path) -> Result<PathBuf, RootfsError> {
    let key = hash_tree(rootfs)?;
    let img = cache_dir.join(format!("{key}.erofs"));
    if img.is_file() {
        tracing::debug!(image = %img.display(), "rootfs image cached");
        return Ok(img);
    }
    std::fs::create_dir_all(cache_dir).map_err(io("creating cache", cache_dir))?;
    let t = std::time::Instant::now();
    mkfs_erofs(rootfs, &img, Timestamps::Zero)?;
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

    #[test]
    fn hash_follows_content_not_time() {
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path().join("r");
        std::fs::create_dir_all(r.join("bin")).expect("mkdir");
        std::fs::write(r.join("bin/a"), b"hello").expect("write");
        std::os::unix::fs::symlink("a", r.join("bin/b")).expect("symlink");
        let h1 = hash_tree(&r).expect("hash");
        assert_eq!(h1.len(), 32);
        std::fs::write(r.join("bin/a"), b"hello").expect("rewrite same");
        assert_eq!(hash_tree(&r).expect("hash"), h1);
        std::fs::write(r.join("bin/a"), b"hellO").expect("change");
        assert_ne!(hash_tree(&r).expect("hash"), h1);
    }

    #[test]
    fn image_is_built_once_and_cached() {
        if crate::host::resolve_binary(Path::new(MKFS_EROFS)).is_none() {
            println!("SKIPPED: image_is_built_once_and_cached: no mkfs.erofs");
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
