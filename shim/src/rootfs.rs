//! A task's rootfs as containerd hands it over (overlay or bind mounts of
//! snapshot directories), turned into one read-only erofs image per
//! container, cached per snapshot chain; and the drive slots that bring
//! images into a running microVM without hotplug.
//!
//! One image per container, not one per layer: QEMU's microvm machine has
//! 8 virtio-mmio transports in all (vsock, drives, later the NIC), so a
//! drive per layer would cap a pod at a handful of layers. A single-layer
//! rootfs uses that layer's image; several layers are merged first (a
//! read-only overlay of the lower dirs, mounted briefly on the host, with
//! whiteouts applied) and the merged image is cached by the chain.
//!
//! Drive slots: every sandbox boots with `slot_count()` extra read-only
//! virtio-blk drives, each backed by a sparse file of `SLOT_BYTES`. Filling
//! a slot writes an image into its file in place (same inode, which the VM
//! process holds open; its reads go through the host page cache, so they
//! see the new bytes). The guest has never mounted the slot; the page cache
//! of a block device is dropped on its last close (after the boot-time
//! partition scan), so its first mount reads the image. This needs nothing
//! from the hypervisor beyond drives at boot, so it works on QEMU microvm
//! (no virtio-mmio hotplug, no medium change on virtio-blk) and on
//! ampoule-vmm alike. A slot is used once per sandbox: reusing one after its
//! container is gone would depend on the guest having dropped its cache.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::start::hash_hex;

/// virtio-mmio transports of QEMU's microvm machine: every virtio device
/// of a sandbox (vsock, drives, a NIC) takes one.
pub const VIRTIO_TRANSPORTS: usize = 8;
/// Transports kept for devices other than drives: vsock, and a NIC.
pub const RESERVED_TRANSPORTS: usize = 2;

/// Drive slots to declare at boot for containers added later to the pod,
/// when `boot_drives` drives are attached at boot: whatever transports are
/// left (5 with one rootfs image, 4 with a bind sources image too).
pub fn slot_count(boot_drives: usize) -> usize {
    VIRTIO_TRANSPORTS.saturating_sub(RESERVED_TRANSPORTS + boot_drives)
}
/// Apparent size of a slot file (sparse: costs only what is written).
pub const SLOT_BYTES: u64 = 4 << 30;

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
    #[error("mkfs.erofs failed for {dir}: {reason}")]
    Mkfs { dir: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {path} ({size} bytes) does not fit a drive slot of {SLOT_BYTES} bytes")]
    TooBig { path: PathBuf, size: u64 },
    #[error("all drive slots of the sandbox are used ({VIRTIO_TRANSPORTS} virtio devices at most on microvm): no room for another container image")]
    NoFreeSlot,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

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
/// layers), else built with `mkfs.erofs` into a temporary file and renamed
/// into place, so a half-built image is never used.
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
    erofs_image_named(dir, &image, cache, &key)?;
    Ok(image)
}

/// Builds `image` from `dir` through a temporary file in `cache`.
fn erofs_image_named(dir: &Path, image: &Path, cache: &Path, key: &str) -> Result<(), RootfsError> {
    let tmp = cache.join(format!(".{key}.{}.tmp", std::process::id()));
    let out = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&tmp)
        .arg(dir)
        .output()
        .map_err(|e| RootfsError::Mkfs {
            dir: dir.to_path_buf(),
            reason: format!("running mkfs.erofs (package erofs-utils): {e}"),
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(RootfsError::Mkfs {
            dir: dir.to_path_buf(),
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    std::fs::rename(&tmp, image).map_err(io("renaming image", image))?;
    tracing::info!(dir = %dir.display(), image = %image.display(), "erofs image built");
    Ok(())
}

/// The one erofs image of a container's rootfs (see the module doc).
pub fn rootfs_image(layers: &Layers, cache: &Path) -> Result<PathBuf, RootfsError> {
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
            let built = erofs_image_named(&mnt, &image, cache, &key);
            let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&mnt);
            built.map(|()| image)
        }
    }
}

/// Creates a sparse slot file of `SLOT_BYTES`.
pub fn create_slot(path: &Path) -> Result<(), RootfsError> {
    let f = File::create(path).map_err(io("creating drive slot", path))?;
    f.set_len(SLOT_BYTES)
        .map_err(io("sizing drive slot", path))?;
    Ok(())
}

/// Writes `image` at the start of the slot file `slot`, in place.
pub fn fill_slot(slot: &Path, image: &Path) -> Result<(), RootfsError> {
    let mut src = File::open(image).map_err(io("opening image", image))?;
    let size = src.metadata().map_err(io("reading image", image))?.len();
    if size > SLOT_BYTES {
        return Err(RootfsError::TooBig {
            path: image.to_path_buf(),
            size,
        });
    }
    let mut dst = OpenOptions::new()
        .write(true)
        .open(slot)
        .map_err(io("opening drive slot", slot))?;
    dst.seek(SeekFrom::Start(0))
        .map_err(io("seeking drive slot", slot))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).map_err(io("reading image", image))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])
            .map_err(io("writing drive slot", slot))?;
    }
    dst.sync_data().map_err(io("syncing drive slot", slot))?;
    Ok(())
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
    let mut any = false;
    for m in mounts.iter_mut() {
        let typ = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let opts: Vec<String> = m
            .get("options")
            .and_then(|o| o.as_array())
            .map(|o| {
                o.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let is_bind = typ == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            continue;
        }
        let dest = m.get("destination").and_then(|d| d.as_str()).unwrap_or("");
        let source = m
            .get("source")
            .and_then(|d| d.as_str())
            .unwrap_or("")
            .to_string();
        if dest == "/dev/shm" {
            *m = serde_json::json!({
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            });
            continue;
        }
        let src = Path::new(&source);
        if source.is_empty() || !src.is_absolute() || !src.exists() {
            tracing::warn!(
                source,
                dest,
                "bind source missing on the host: left to the guest"
            );
            continue;
        }
        let rel = src.strip_prefix("/").unwrap_or(src);
        let target = staging.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating bind staging", parent))?;
        }
        let out = Command::new("cp")
            .arg("-a")
            .arg("-T")
            .arg(src)
            .arg(&target)
            .output()
            .map_err(io("copying bind source", src))?;
        if !out.status.success() {
            return Err(RootfsError::Io {
                what: "copying bind source",
                path: src.to_path_buf(),
                source: std::io::Error::other(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ),
            });
        }
        any = true;
    }
    if !any {
        let _ = std::fs::remove_dir_all(&staging);
        return Ok(None);
    }
    let image = work.join(format!("{name}.binds.erofs"));
    let built = erofs_image_named(&staging, &image, work, name);
    let _ = std::fs::remove_dir_all(&staging);
    built.map(|()| Some(image))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn slots_fill_the_transports_left() {
        assert_eq!(slot_count(1), 5);
        assert_eq!(slot_count(2), 4);
        assert_eq!(slot_count(9), 0);
    }

    #[test]
    fn slot_is_filled_in_place() {
        let d = tempfile::tempdir().unwrap();
        let slot = d.path().join("slot0");
        create_slot(&slot).unwrap();
        let ino = std::fs::metadata(&slot).unwrap().ino();
        let img = d.path().join("img");
        std::fs::write(&img, b"EROFS-ish").unwrap();
        fill_slot(&slot, &img).unwrap();
        let md = std::fs::metadata(&slot).unwrap();
        assert_eq!(md.ino(), ino);
        assert_eq!(md.len(), SLOT_BYTES);
        let mut head = [0u8; 9];
        File::open(&slot).unwrap().read_exact(&mut head).unwrap();
        assert_eq!(&head, b"EROFS-ish");
    }

    #[test]
    fn several_layers_merge_into_one_image() {
        if Command::new("mkfs.erofs").arg("--help").output().is_err() {
            println!("SKIPPED: several_layers_merge_into_one_image: mkfs.erofs not installed");
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
        let img = match rootfs_image(&layers, &cache) {
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
        assert_eq!(rootfs_image(&layers, &cache).unwrap(), img, "cached");
        let leftovers: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn bind_sources_are_staged_and_shm_becomes_tmpfs() {
        if Command::new("mkfs.erofs").arg("--help").output().is_err() {
            println!(
                "SKIPPED: bind_sources_are_staged_and_shm_becomes_tmpfs: mkfs.erofs not installed"
            );
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
        if Command::new("mkfs.erofs").arg("--help").output().is_err() {
            println!("SKIPPED: erofs_images_are_cached: mkfs.erofs not installed");
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
