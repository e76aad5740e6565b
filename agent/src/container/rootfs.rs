//! The container's root filesystem in the agent's mount namespace:
//! read-only layer drives (found by virtio serial), an overlay with its
//! upper dir in a per-container tmpfs, and the bind sources drive.
//!
//! Layout under `/run/ampoule/containers/<id>` (itself a tmpfs, so deleting
//! the container frees the upper dir with one unmount):
//! `layers/<i>` each layer, `upper` + `work` the overlay's writable part,
//! `rootfs` the container's root, `binds` the bind sources drive.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};

use super::mounts::parse_options;
use crate::syscall::Syscall;

pub const CONTAINERS_DIR: &str = "/run/ampoule/containers";
/// How long a drive may take to show up (a slot filled after boot).
const DEVICE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(
        "no virtio-blk drive with serial {0:?} in the guest (looked in /sys/block/vd*/serial)"
    )]
    NoDevice(String),
    #[error("the container has no rootfs layer")]
    NoLayers,
    #[error("shared rootfs path {0:?} must be relative, without `..`")]
    BadSharedPath(String),
    #[error("invalid drive serial {0:?}")]
    BadSerial(String),
    #[error("{what} {path}: {source}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A drive to mount: device path, fs type, OCI-style options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub device: PathBuf,
    pub fstype: String,
    pub options: Vec<String>,
}

/// One mount of the rootfs plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub source: PathBuf,
    pub target: PathBuf,
    pub fstype: String,
    pub flags: MsFlags,
    pub data: Option<String>,
}

/// Directories and mounts of a container's rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub base: PathBuf,
    pub rootfs: PathBuf,
    pub binds: Option<PathBuf>,
    pub mkdirs: Vec<PathBuf>,
    pub steps: Vec<Step>,
}

pub fn base_dir(container_id: &str) -> PathBuf {
    Path::new(CONTAINERS_DIR).join(container_id)
}

fn drive_step(d: &Drive, target: PathBuf) -> Step {
    let o = parse_options(&d.options);
    Step {
        source: d.device.clone(),
        target,
        fstype: d.fstype.clone(),
        // Layers are images: always read-only.
        flags: o.flags | MsFlags::MS_RDONLY,
        data: (!o.data.is_empty()).then(|| o.data.join(",")),
    }
}

/// Plans the rootfs: an overlay of the layers (lowest first in `layers`)
/// with its upper dir in the container's tmpfs. A read-only root gets one
/// too, as with runc: mount points the image lacks (/proc, /dev, bind
/// targets) are created in it, and the helper remounts `/` read-only once
/// every mount is in place.
pub fn plan(
    container_id: &str,
    layers: &[Drive],
    binds: Option<&Drive>,
) -> Result<Plan, RootfsError> {
    if layers.is_empty() {
        return Err(RootfsError::NoLayers);
    }
    let base = base_dir(container_id);
    let rootfs = base.join("rootfs");
    let mut mkdirs = vec![rootfs.clone()];
    let mut steps = Vec::new();
    let mut lower = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let dir = base.join("layers").join(i.to_string());
        mkdirs.push(dir.clone());
        steps.push(drive_step(l, dir.clone()));
        lower.push(dir);
    }
    // overlayfs wants the top layer first.
    let lowerdir: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let upper = base.join("upper");
    let work = base.join("work");
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    mkdirs.push(upper);
    mkdirs.push(work);
    steps.push(Step {
        source: PathBuf::from("overlay"),
        target: rootfs.clone(),
        fstype: "overlay".into(),
        flags: MsFlags::empty(),
        data: Some(data),
    });
    let binds_dir = binds.map(|d| {
        let dir = base.join("binds");
        mkdirs.push(dir.clone());
        steps.push(drive_step(d, dir.clone()));
        dir
    });
    Ok(Plan {
        base,
        rootfs,
        binds: binds_dir,
        mkdirs,
        steps,
    })
}

/// Plans a rootfs shared by the host: the directory `rel` of the shared
/// filesystem (mounted at `shared_root`), bound as the container's root.
/// Writes land on the host; a read-only root is remounted read-only by the
/// helper like any other.
pub fn plan_shared(container_id: &str, shared_root: &Path, rel: &str) -> Result<Plan, RootfsError> {
    let clean = super::mounts::clean_relative(&Path::new("/").join(rel))
        .filter(|c| !c.as_os_str().is_empty() && !rel.starts_with('/'))
        .ok_or_else(|| RootfsError::BadSharedPath(rel.to_string()))?;
    let base = base_dir(container_id);
    let rootfs = base.join("rootfs");
    Ok(Plan {
        base,
        rootfs: rootfs.clone(),
        binds: None,
        mkdirs: vec![rootfs.clone()],
        steps: vec![Step {
            source: shared_root.join(clean),
            target: rootfs,
            fstype: "none".into(),
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
        }],
    })
}

/// Mounts the sandbox's shared filesystem (virtio-fs) at `dir` once; later
/// calls find it mounted.
pub fn mount_shared_fs(sys: &dyn Syscall, tag: &str, dir: &Path) -> Result<(), RootfsError> {
    static MOUNTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut mounted = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
    if *mounted {
        return Ok(());
    }
    let err = |what, source| RootfsError::Mount {
        what,
        path: dir.to_path_buf(),
        source,
    };
    sys.mkdir_all(dir).map_err(|e| err("mkdir", e))?;
    sys.mount(
        Some(Path::new(tag)),
        dir,
        Some("virtiofs"),
        MsFlags::MS_NODEV,
        None,
    )
    .map_err(|e| {
        err(
            "mount virtio-fs",
            std::io::Error::new(e.kind(), format!("tag {tag:?}: {e}")),
        )
    })?;
    *mounted = true;
    Ok(())
}

/// Mounts the plan: a tmpfs on the base dir, then each step. On failure
/// what was mounted is undone.
pub fn mount(sys: &dyn Syscall, plan: &Plan) -> Result<(), RootfsError> {
    let err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Mount { what, path, source }
    };
    sys.mkdir_all(&plan.base)
        .map_err(err("mkdir", &plan.base))?;
    sys.mount(
        Some(Path::new("tmpfs")),
        &plan.base,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(err("mount tmpfs on", &plan.base))?;
    let result = (|| {
        for d in &plan.mkdirs {
            sys.mkdir_all(d).map_err(err("mkdir", d))?;
        }
        for s in &plan.steps {
            if s.source.starts_with("/dev/") {
                if let Err(e) = sys.flush_block_device(&s.source) {
                    tracing::debug!(device = %s.source.display(), error = %e, "BLKFLSBUF");
                }
            }
            sys.mount(
                Some(&s.source),
                &s.target,
                Some(&s.fstype),
                s.flags,
                s.data.as_deref(),
            )
            .map_err(|e| RootfsError::Mount {
                what: "mount",
                path: s.target.clone(),
                source: std::io::Error::new(
                    e.kind(),
                    format!(
                        "{} {} ({}): {e}",
                        s.fstype,
                        s.source.display(),
                        s.data.as_deref().unwrap_or("")
                    ),
                ),
            })?;
        }
        Ok(())
    })();
    if result.is_err() {
        unmount(sys, plan);
    }
    result
}

/// Unmounts everything of the plan (lazily: a leftover process cannot keep
/// the container's resources pinned forever) and the base tmpfs.
pub fn unmount(sys: &dyn Syscall, plan: &Plan) {
    for s in plan.steps.iter().rev() {
        let _ = sys.umount(&s.target, MntFlags::MNT_DETACH);
    }
    let _ = sys.umount(&plan.base, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&plan.base);
}

/// `/dev/vdX` whose `/sys/block/vdX/serial` is `serial`, waiting briefly for
/// a drive that is still appearing.
pub fn find_device(sys_block: &Path, serial: &str) -> Result<PathBuf, RootfsError> {
    if serial.is_empty() || serial.len() > 20 || serial.contains('/') {
        // virtio-blk serials are at most 20 bytes.
        return Err(RootfsError::BadSerial(serial.to_string()));
    }
    let deadline = std::time::Instant::now() + DEVICE_WAIT;
    loop {
        if let Some(dev) = scan(sys_block, serial) {
            return Ok(dev);
        }
        if std::time::Instant::now() >= deadline {
            return Err(RootfsError::NoDevice(serial.to_string()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scan(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("vd") {
            continue;
        }
        let Ok(s) = std::fs::read_to_string(e.path().join("serial")) else {
            continue;
        };
        if s.trim_end_matches(['\n', '\0']) == serial {
            return Some(Path::new("/dev").join(name.as_ref()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(dev: &str) -> Drive {
        Drive {
            device: dev.into(),
            fstype: "erofs".into(),
            options: vec!["ro".into()],
        }
    }

    #[test]
    fn one_writable_layer_gets_an_overlay_with_upper_and_work_dirs() {
        let p = plan("c1", &[drive("/dev/vda")], None).expect("plan");
        let base = Path::new("/run/ampoule/containers/c1");
        assert_eq!(p.rootfs, base.join("rootfs"));
        assert_eq!(p.steps[0].target, base.join("layers/0"));
        assert!(p.steps[0].flags.contains(MsFlags::MS_RDONLY));
        let ov = &p.steps[1];
        assert_eq!(ov.fstype, "overlay");
        assert_eq!(
            ov.data.as_deref(),
            Some("lowerdir=/run/ampoule/containers/c1/layers/0,upperdir=/run/ampoule/containers/c1/upper,workdir=/run/ampoule/containers/c1/work")
        );
        assert!(p.mkdirs.contains(&base.join("upper")));
    }

    #[test]
    fn layers_are_stacked_top_first() {
        let p = plan("c", &[drive("/dev/vda"), drive("/dev/vdb")], None).expect("plan");
        let ov = p.steps.last().expect("overlay");
        let data = ov.data.as_deref().unwrap_or_default();
        assert!(data.starts_with(
            "lowerdir=/run/ampoule/containers/c/layers/1:/run/ampoule/containers/c/layers/0,"
        ));
    }

    #[test]
    fn bind_sources_drive_is_mounted_read_only_beside_the_rootfs() {
        let p = plan("c", &[drive("/dev/vda")], Some(&drive("/dev/vdb"))).expect("plan");
        assert_eq!(
            p.binds.as_deref(),
            Some(Path::new("/run/ampoule/containers/c/binds"))
        );
        let b = p.steps.last().expect("binds step");
        assert_eq!(b.source, Path::new("/dev/vdb"));
        assert!(b.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn drives_are_flushed_before_they_are_mounted() {
        use crate::syscall::{Call, Recording};
        let rec = Recording::default();
        let p = plan("c", &[drive("/dev/vda")], None).expect("plan");
        mount(&rec, &p).expect("mount");
        let calls = rec.calls();
        let flush = calls
            .iter()
            .position(|c| *c == Call::Flush("/dev/vda".into()));
        let mount_vda = calls.iter().position(
            |c| matches!(c, Call::Mount { source: Some(s), .. } if s == Path::new("/dev/vda")),
        );
        assert!(
            matches!((flush, mount_vda), (Some(f), Some(m)) if f < m),
            "{calls:?}"
        );
        assert!(!calls.iter().any(|c| *c == Call::Flush("overlay".into())));
    }

    #[test]
    fn shared_rootfs_is_bound_from_the_shared_filesystem() {
        let p = plan_shared("c", Path::new("/run/ampoule/shared"), "containers/c/rootfs")
            .expect("plan");
        assert_eq!(p.steps.len(), 1);
        assert_eq!(
            p.steps[0].source,
            Path::new("/run/ampoule/shared/containers/c/rootfs")
        );
        assert_eq!(p.steps[0].target, p.rootfs);
        assert!(p.steps[0]
            .flags
            .contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        for bad in ["/etc", "../x", "a/../../x", ""] {
            assert!(
                matches!(
                    plan_shared("c", Path::new("/s"), bad),
                    Err(RootfsError::BadSharedPath(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn no_layer_is_an_error() {
        assert!(matches!(plan("c", &[], None), Err(RootfsError::NoLayers)));
    }

    #[test]
    fn device_is_found_by_its_serial() {
        let dir = std::env::temp_dir().join(format!("ampoule-sysblock-{}", std::process::id()));
        for (name, serial) in [("vda", "layer0\n"), ("vdb", "binds"), ("loop0", "layer1")] {
            std::fs::create_dir_all(dir.join(name)).expect("mkdir");
            std::fs::write(dir.join(name).join("serial"), serial).expect("write");
        }
        assert_eq!(
            find_device(&dir, "layer0").expect("vda"),
            Path::new("/dev/vda")
        );
        assert_eq!(
            find_device(&dir, "binds").expect("vdb"),
            Path::new("/dev/vdb")
        );
        assert!(matches!(
            find_device(&dir, "../x"),
            Err(RootfsError::BadSerial(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
