//! A task's rootfs as containerd hands it over (overlay or bind mounts of
//! snapshot directories), turned into one read-only erofs image per
//! container, cached per snapshot chain.
//!
//! One image per container, not one per layer: QEMU's microvm machine has
//! 8 virtio-mmio transports in all (vsock, drives, later the NIC), so a
//! drive per layer would cap a pod at a handful of layers. A single-layer
//! rootfs uses that layer's image; several layers are merged first (a
//! read-only overlay of the lower dirs, mounted briefly on the host, with
//! whiteouts applied) and the merged image is cached by the chain.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{hash_hex, io, mkfs_erofs, pack_sources, RootfsError, Timestamps};
use crate::pod::share_fs::volumes;

/// One mount of CreateTaskRequest.rootfs, decoupled from the protobuf type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The layers of a rootfs, lowest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    /// Read-only directories, lowest first.
    pub lower: Vec<PathBuf>,
    /// Whether the lowest-to-highest list is a committed snapshot chain
    /// (cacheable) rather than a writable directory.
    pub immutable: bool,
}

/// Parses the rootfs mounts: overlay `lowerdir=top:...:bottom` (overlayfs
/// lists the top-most layer first) or a bind mount of one directory (native
/// snapshotter, or a bundle's own rootfs).
pub fn parse_mounts(mounts: &[MountSpec]) -> Result<Layers, RootfsError> {
    let m = mounts.first().ok_or(RootfsError::NoMount)?;
    match m.kind.as_str() {
        "overlay" => {
            let lower = m
                .options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .ok_or_else(|| RootfsError::NoLowerdir(m.options.clone()))?;
            let mut dirs: Vec<PathBuf> = split_lowerdir(lower)
                .into_iter()
                .map(PathBuf::from)
                .collect();
            dirs.reverse();
            // The upperdir (if any) is the container's writable layer on the
            // host: new and empty at create time, so the guest's tmpfs upper
            // dir replaces it.
            Ok(Layers {
                lower: dirs,
                immutable: true,
            })
        }
        "bind" | "rbind" | "none" if !m.source.is_empty() => {
            let ro = m.options.iter().any(|o| o == "ro");
            Ok(Layers {
                lower: vec![PathBuf::from(&m.source)],
                immutable: ro,
            })
        }
        other => Err(RootfsError::UnsupportedType(other.to_string())),
    }
}

/// Splits an overlay lowerdir list on `:`, honouring `\:` escapes.
pub fn split_lowerdir(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Cache key of a layer directory: its path plus device, inode and change
/// time, so a recreated snapshot at the same path gets a new image.
pub fn cache_key(dir: &Path) -> Result<String, RootfsError> {
    let md = std::fs::metadata(dir).map_err(io("reading layer", dir))?;
    if !md.is_dir() {
        return Err(RootfsError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    Ok(hash_hex(&[
        &dir.display().to_string(),
        &md.dev().to_string(),
        &md.ino().to_string(),
        &md.ctime().to_string(),
        &md.ctime_nsec().to_string(),
    ])[..32]
        .to_string())
}

/// The erofs image of `dir`: from `cache` when built before (immutable
/// layers), else built with [`mkfs_erofs`].
pub fn erofs_image(dir: &Path, cache: &Path, immutable: bool) -> Result<PathBuf, RootfsError> {
    std::fs::create_dir_all(cache).map_err(io("creating cache", cache))?;
    let key = cache_key(dir)?;
    let name = if immutable {
        format!("{key}.erofs")
    } else {
        format!("rw-{key}-{}.erofs", std::process::id())
    };
    let image = cache.join(name);
    if immutable && image.exists() {
        tracing::debug!(dir = %dir.display(), image = %image.display(), "erofs cache hit");
        return Ok(image);
    }
    mkfs_erofs(dir, &image, Timestamps::Keep)?;
    Ok(image)
}

/// The one erofs image of a container's rootfs (see the module doc).
pub fn layers_image(layers: &Layers, cache: &Path) -> Result<PathBuf, RootfsError> {
    match layers.lower.as_slice() {
        [] => Err(RootfsError::NoMount),
        [one] => erofs_image(one, cache, layers.immutable),
        many => {
            std::fs::create_dir_all(cache).map_err(io("creating cache", cache))?;
            let keys = many
                .iter()
                .map(|d| cache_key(d))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let key = hash_hex(&refs)[..32].to_string();
            let image = cache.join(format!("chain-{key}.erofs"));
            if layers.immutable && image.exists() {
                return Ok(image);
            }
            let mnt = cache.join(format!(".mnt-{key}-{}", std::process::id()));
            std::fs::create_dir_all(&mnt).map_err(io("creating mount point", &mnt))?;
            // overlayfs lists the top-most layer first.
            let lower: Vec<String> = many
                .iter()
                .rev()
                .map(|d| d.display().to_string().replace(':', "\\:"))
                .collect();
            let opts = format!("lowerdir={}", lower.join(":"));
            let mounted = nix::mount::mount(
                Some("overlay"),
                &mnt,
                Some("overlay"),
                nix::mount::MsFlags::MS_RDONLY,
                Some(opts.as_str()),
            );
            if let Err(e) = mounted {
                let _ = std::fs::remove_dir(&mnt);
                return Err(RootfsError::Io {
                    what: "mounting the layers to merge at",
                    path: mnt,
                    source: e.into(),
                });
            }
            let built = mkfs_erofs(&mnt, &image, Timestamps::Keep);
            let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&mnt);
            built.map(|()| image)
        }
    }
}

/// Bind mounts of a spec, brought into the guest: there is no shared
/// filesystem with the host, so each bind source (files and directories
/// like CRI's /etc/hosts, /etc/resolv.conf, /etc/hostname) is copied into a
/// staging directory at its own absolute path and packed as one erofs
/// image, which the agent mounts and takes bind sources from. A bind of a
/// CRI sandbox's shm directory onto /dev/shm becomes a guest tmpfs.
/// The copies are snapshots taken at create time and read-only in the guest.
/// Returns the image, or None when the spec has no bind mount to carry.
pub fn bind_sources_image(
    spec: &mut serde_json::Value,
    work: &Path,
    name: &str,
) -> Result<Option<PathBuf>, RootfsError> {
    let Some(mounts) = spec.get_mut("mounts").and_then(|m| m.as_array_mut()) else {
        return Ok(None);
    };
    let staging = work.join(format!("{name}.binds"));
    let mut sources = Vec::new();
    for m in mounts.iter_mut() {
        if !volumes::is_bind(m) || volumes::shm_becomes_tmpfs(m) {
            continue;
        }
        let dest = m.get("destination").and_then(|d| d.as_str()).unwrap_or("");
        let source = m
            .get("source")
            .and_then(|d| d.as_str())
            .unwrap_or("")
            .to_string();
        let src = Path::new(&source);
        if source.is_empty() || !src.is_absolute() || !src.exists() {
            tracing::warn!(
                source,
                dest,
                "bind source missing on the host: left to the guest"
            );
            continue;
        }
        sources.push((src.to_path_buf(), src.to_path_buf()));
    }
    if sources.is_empty() {
        return Ok(None);
    }
    let image = work.join(format!("{name}.binds.erofs"));
    pack_sources(&sources, &staging, &image, Timestamps::Keep)?;
    Ok(Some(image))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};

    use super::*;
    use crate::container::rootfs::MKFS_EROFS;

    /// Whether `mkfs.erofs` is installed; says the test is skipped if not.
    fn mkfs_available(test: &str) -> bool {
        let found = crate::host::resolve_binary(Path::new(MKFS_EROFS)).is_some();
        if !found {
            println!("SKIPPED: {test}: {MKFS_EROFS} not installed");
        }
        found
    }

    fn overlay(opts: &[&str]) -> MountSpec {
        MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: opts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_lowerdirs_become_lowest_first() {
        let l = parse_mounts(&[overlay(&[
            "index=off",
            "workdir=/s/9/work",
            "upperdir=/s/9/fs",
            "lowerdir=/s/3/fs:/s/2/fs:/s/1/fs",
        ])])
        .unwrap();
        assert_eq!(
            l.lower,
            vec![
                PathBuf::from("/s/1/fs"),
                PathBuf::from("/s/2/fs"),
                PathBuf::from("/s/3/fs")
            ]
        );
        assert!(l.immutable);
    }

    #[test]
    fn single_lowerdir_readonly_view() {
        let l = parse_mounts(&[overlay(&["lowerdir=/s/1/fs"])]).unwrap();
        assert_eq!(l.lower, vec![PathBuf::from("/s/1/fs")]);
    }

    #[test]
    fn lowerdir_escapes_and_empty_entries() {
        assert_eq!(split_lowerdir(r"/a\:b:/c::/d"), vec!["/a:b", "/c", "/d"]);
        assert!(split_lowerdir("").is_empty());
    }

    #[test]
    fn overlay_without_lowerdir_is_an_error() {
        let e = parse_mounts(&[overlay(&["upperdir=/u"])]).unwrap_err();
        assert!(matches!(e, RootfsError::NoLowerdir(_)), "{e}");
    }

    #[test]
    fn bind_mount_is_one_layer() {
        let l = parse_mounts(&[MountSpec {
            kind: "bind".into(),
            source: "/s/5/fs".into(),
            options: vec!["rbind".into(), "rw".into()],
        }])
        .unwrap();
        assert_eq!(l.lower, vec![PathBuf::from("/s/5/fs")]);
        assert!(!l.immutable);
    }

    #[test]
    fn no_mount_and_unknown_types_are_errors() {
        assert!(matches!(parse_mounts(&[]), Err(RootfsError::NoMount)));
        let e = parse_mounts(&[MountSpec {
            kind: "nfs".into(),
            source: "x".into(),
            options: vec![],
        }])
        .unwrap_err();
        assert!(e.to_string().contains("nfs"));
    }

    #[test]
    fn cache_key_changes_with_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let k1 = cache_key(&a).unwrap();
        assert_eq!(k1, cache_key(&a).unwrap());
        std::fs::remove_dir(&a).unwrap();
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), b"x").unwrap();
        assert_ne!(k1, cache_key(&a).unwrap());
        assert!(cache_key(&d.path().join("missing")).is_err());
    }

    #[test]
    fn several_layers_merge_into_one_image() {
        if !mkfs_available("several_layers_merge_into_one_image") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (l1, l2) = (d.path().join("l1"), d.path().join("l2"));
        std::fs::create_dir(&l1).unwrap();
        std::fs::create_dir(&l2).unwrap();
        std::fs::write(l1.join("a"), b"1").unwrap();
        std::fs::write(l2.join("b"), b"2").unwrap();
        let layers = Layers {
            lower: vec![l1, l2],
            immutable: true,
        };
        let cache = d.path().join("cache");
        let img = match layers_image(&layers, &cache) {
            Ok(i) => i,
            Err(RootfsError::Io { what, source, .. })
                if source.raw_os_error() == Some(libc::EPERM) =>
            {
                println!("SKIPPED: several_layers_merge_into_one_image: {what}: not root");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert!(img
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("chain-"));
        assert_eq!(layers_image(&layers, &cache).unwrap(), img, "cached");
        let leftovers: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn bind_sources_are_staged_and_shm_becomes_tmpfs() {
        if !mkfs_available("bind_sources_are_staged_and_shm_becomes_tmpfs") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let hosts = d.path().join("hosts");
        std::fs::write(&hosts, b"127.0.0.1 localhost\n").unwrap();
        let mut spec = serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": hosts.display().to_string(), "options": ["rbind", "rw"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/x/shm", "options": ["rbind"]}
        ]});
        let work = d.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let img = bind_sources_image(&mut spec, &work, "c1")
            .unwrap()
            .expect("an image");
        assert!(img.exists());
        assert_eq!(spec["mounts"][2]["type"], "tmpfs");
        assert_eq!(
            spec["mounts"][1]["source"],
            hosts.display().to_string(),
            "sources stay host paths"
        );
        assert!(!work.join("c1.binds").exists(), "staging removed");
        let mut none = serde_json::json!({"mounts": [{"destination": "/proc", "type": "proc"}]});
        assert!(bind_sources_image(&mut none, &work, "c2")
            .unwrap()
            .is_none());
    }

    #[test]
    fn erofs_images_are_cached() {
        if !mkfs_available("erofs_images_are_cached") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let layer = d.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        std::fs::write(layer.join("hello"), b"world").unwrap();
        let cache = d.path().join("cache");
        let a = erofs_image(&layer, &cache, true).unwrap();
        let mtime = std::fs::metadata(&a).unwrap().mtime_nsec();
        let b = erofs_image(&layer, &cache, true).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::metadata(&b).unwrap().mtime_nsec(), mtime);
        let mut magic = [0u8; 4];
        let mut f = File::open(&a).unwrap();
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.read_exact(&mut magic).unwrap();
        assert_eq!(
            u32::from_le_bytes(magic),
            0xE0F5_E1E2,
            "erofs superblock magic"
        );
    }
}
