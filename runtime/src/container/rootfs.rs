//! Rootfs images: a bundle's `rootfs/` becomes a read-only erofs image
//! (`mkfs.erofs`), cached by the hash of the tree's content so an unchanged
//! rootfs is built once.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::ContainerError;

/// `mkfs.erofs` binary.
pub const MKFS_EROFS: &str = "mkfs.erofs";

/// Hash of a directory tree: names, types, modes, owners, symlink targets,
/// device numbers and file contents (not timestamps), in sorted order.
pub fn hash_tree(root: &Path) -> Result<String, ContainerError> {
    let mut h = Sha256::new();
    hash_dir(root, Path::new(""), &mut h)?;
    let digest = h.finalize();
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

fn io_err(p: &Path, e: std::io::Error) -> ContainerError {
    ContainerError::Image(format!("{}: {e}", p.display()))
}

fn hash_dir(abs: &Path, rel: &Path, h: &mut Sha256) -> Result<(), ContainerError> {
    let mut entries: Vec<_> = std::fs::read_dir(abs)
        .map_err(|e| io_err(abs, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(abs, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let m = std::fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?;
        h.update(name.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(m.mode().to_le_bytes());
        h.update(m.uid().to_le_bytes());
        h.update(m.gid().to_le_bytes());
        let ft = m.file_type();
        if ft.is_symlink() {
            let t = std::fs::read_link(&path).map_err(|e| io_err(&path, e))?;
            h.update(t.as_os_str().as_encoded_bytes());
        } else if ft.is_dir() {
            hash_dir(&path, &name, h)?;
        } else if ft.is_file() {
            h.update(m.len().to_le_bytes());
            let mut f = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).map_err(|e| io_err(&path, e))?;
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

/// Builds `dir` into an erofs image at `out` (through a temporary file).
pub fn mkfs_erofs(dir: &Path, out: &Path) -> Result<(), ContainerError> {
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let result = Command::new(MKFS_EROFS)
        .arg("--quiet")
        .arg("-T0")
        .arg(&tmp)
        .arg(dir)
        .output();
    let output = match result {
        Ok(o) => o,
        Err(e) => {
            return Err(ContainerError::Image(format!(
                "cannot run {MKFS_EROFS} (apt-get install erofs-utils): {e}"
            )))
        }
    };
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(ContainerError::Image(format!(
            "{MKFS_EROFS} {} failed ({}): {}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(out, e)
    })
}

/// The cached erofs image of `rootfs`, built if needed.
pub fn rootfs_image(rootfs: &Path, cache_dir: &Path) -> Result<PathBuf, ContainerError> {
    let key = hash_tree(rootfs)?;
    let img = cache_dir.join(format!("{key}.erofs"));
    if img.is_file() {
        tracing::debug!(image = %img.display(), "rootfs image cached");
        return Ok(img);
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| io_err(cache_dir, e))?;
    let t = std::time::Instant::now();
    mkfs_erofs(rootfs, &img)?;
    tracing::info!(image = %img.display(), ms = t.elapsed().as_millis() as u64, "rootfs image built");
    Ok(img)
}

/// Builds an image holding each bind mount source at its spec path
/// (`<image>/<source>`), at `out`. `sources` are (spec path, host path).
pub fn binds_image(
    sources: &[(PathBuf, PathBuf)],
    staging: &Path,
    out: &Path,
) -> Result<(), ContainerError> {
    std::fs::create_dir_all(staging).map_err(|e| io_err(staging, e))?;
    let result = (|| {
        for (spec, host) in sources {
            if std::fs::symlink_metadata(host).is_err() {
                return Err(ContainerError::NoBindSource(host.clone()));
            }
            let rel = spec.strip_prefix("/").unwrap_or(spec);
            let dst = staging.join(rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
            }
            let st = Command::new("cp")
                .arg("-a")
                .arg("--")
                .arg(host)
                .arg(&dst)
                .status()
                .map_err(|e| ContainerError::Image(format!("cp: {e}")))?;
            if !st.success() {
                return Err(ContainerError::Image(format!(
                    "copying bind source {} failed ({st})",
                    host.display()
                )));
            }
        }
        mkfs_erofs(staging, out)
    })();
    let _ = std::fs::remove_dir_all(staging);
    result
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
