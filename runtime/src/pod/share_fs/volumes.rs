//! Bind mounts of a spec as volumes of the shared directory.
//!
//! Every bind mount's source is a host path (kubelet's hostPath, emptyDir,
//! configMap and secret directories, CRI's hosts/hostname/resolv.conf and
//! termination-log, podman's `-v`). Each (source, access) pair is mounted
//! once per pod at `volumes/<key>` and the agent binds it into every
//! container that asks for it, so writes are live both ways and shared
//! between the pod's containers. A bind onto `/dev/shm` becomes a tmpfs in
//! the guest instead (host shared memory cannot be shared with a VM).
//!
//! Sources are resolved without escaping: a `..` component is refused, a
//! relative source is taken below the bundle, the final component must not
//! be a symlink, and what is mounted is the object opened and checked
//! (through its `/proc/self/fd` path), not a path looked up again.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{FileStat, Mode, SFlag};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{fd_path, io, ShareFsError};

/// One host source shared into the guest, with its access.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Volume {
    pub host: PathBuf,
    pub read_only: bool,
}

/// The bind mounts of one container: (source as written in the spec,
/// volume), one entry per written source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindPlan {
    pub sources: Vec<(String, Volume)>,
}

fn string_opts(m: &Value) -> Vec<String> {
    m.get("options")
        .and_then(Value::as_array)
        .map(|o| {
            o.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a spec mount (JSON) is a bind mount.
pub fn is_bind(m: &Value) -> bool {
    let typ = m.get("type").and_then(Value::as_str).unwrap_or("");
    typ == "bind" || string_opts(m).iter().any(|o| o == "bind" || o == "rbind")
}

/// Rewrites a bind mount onto `/dev/shm` (CRI's sandbox shm directory,
/// podman's) to a tmpfs in the guest; returns whether it did. Host shared
/// memory cannot be shared with a VM.
pub fn shm_becomes_tmpfs(m: &mut Value) -> bool {
    if m.get("destination").and_then(Value::as_str) != Some("/dev/shm") {
        return false;
    }
    *m = serde_json::json!({
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    });
    true
}

/// Plans the bind mounts of `spec` (a config.json as JSON). A bind onto
/// `/dev/shm` is rewritten to a guest tmpfs. Relative sources are taken
/// below `base` (the bundle) when given, else refused.
pub fn plan(spec: &mut Value, base: Option<&Path>) -> Result<BindPlan, ShareFsError> {
    let mut out = BindPlan::default();
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else {
        return Ok(out);
    };
    for m in mounts.iter_mut() {
        if !is_bind(m) {
            continue;
        }
        if shm_becomes_tmpfs(m) {
            continue;
        }
        let dest = m
            .get("destination")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let written = m
            .get("source")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let bad = |reason: &str| ShareFsError::BadBindSource {
            source_path: written.clone(),
            destination: dest.clone(),
            reason: reason.to_string(),
        };
        if written.is_empty() {
            return Err(bad("no source"));
        }
        let p = Path::new(&written);
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(bad("has a '..' component: refused, it could reach outside"));
        }
        let host = if p.is_absolute() {
            p.to_path_buf()
        } else {
            match base {
                Some(b) => b.join(p),
                None => return Err(bad("is relative; a host path must be absolute")),
            }
        };
        // Last of ro/rw wins, as for mount(8).
        let read_only = string_opts(m)
            .iter()
            .rev()
            .find(|o| *o == "ro" || *o == "rw")
            .is_some_and(|o| o == "ro");
        match out.sources.iter_mut().find(|(w, _)| *w == written) {
            // One path per written source reaches the agent: a source bound
            // twice with different modes is shared writable, and the guest
            // makes the read-only one read-only.
            Some((_, v)) => v.read_only &= read_only,
            None => out.sources.push((written, Volume { host, read_only })),
        }
    }
    Ok(out)
}

/// The name of `vol` under `volumes/`.
pub fn key(vol: &Volume) -> String {
    let mut h = Sha256::new();
    h.update(vol.host.as_os_str().as_encoded_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if vol.read_only {
        format!("{hex}-ro")
    } else {
        hex
    }
}

fn open_source(vol: &Volume) -> Result<(OwnedFd, FileStat), ShareFsError> {
    let bad = |reason: String| ShareFsError::BadBindSource {
        source_path: vol.host.display().to_string(),
        destination: String::new(),
        reason,
    };
    let fd = nix::fcntl::open(
        &vol.host,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        bad(if e == nix::errno::Errno::ENOENT {
            "does not exist on the host".into()
        } else {
            format!("cannot be opened: {e}")
        })
    })?;
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .map_err(|e| bad(format!("cannot be examined: {e}")))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
        return Err(bad(
            "is a symlink: refused, name the file or directory it points to".into(),
        ));
    }
    Ok((fd, st))
}

/// Checks that every source of `plan` exists and is not a symlink, so a
/// bad source is refused before a VM boots.
pub fn check_sources(plan: &BindPlan) -> Result<(), ShareFsError> {
    for (written, vol) in &plan.sources {
        open_source(vol).map_err(|e| match e {
            ShareFsError::BadBindSource { reason, .. } => ShareFsError::BadBindSource {
                source_path: written.clone(),
                destination: String::new(),
                reason,
            },
            other => other,
        })?;
    }
    Ok(())
}

/// Mounts `vol` at `root/volumes/<key>`; returns that path relative to
/// `root`.
pub fn mount_volume(root: &Path, vol: &Volume) -> Result<String, ShareFsError> {
    let (fd, st) = open_source(vol)?;
    let rel = format!("volumes/{}", key(vol));
    let target = root.join(&rel);
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if is_dir {
        std::fs::create_dir(&target).map_err(io("creating volume mount point", &target))?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(io("creating volume mount point", &target))?;
    }
    let src = fd_path(&fd);
    let mut r = nix::mount::mount(
        Some(&src),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    );
    if r.is_ok() && vol.read_only {
        r = nix::mount::mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
    }
    if let Err(e) = r {
        let _ = nix::mount::umount2(&target, MntFlags::MNT_DETACH);
        remove_mount_point(&target);
        return Err(ShareFsError::Io {
            what: "bind-mounting volume",
            path: vol.host.clone(),
            source: e.into(),
        });
    }
    tracing::debug!(source = %vol.host.display(), volume = %rel, ro = vol.read_only, "volume shared");
    Ok(rel)
}

fn remove_mount_point(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Unmounts the volume at `root/rel` and removes its mount point.
pub fn unmount_volume(root: &Path, rel: &str) {
    let target = root.join(rel);
    if let Err(e) = nix::mount::umount2(&target, MntFlags::MNT_DETACH) {
        tracing::warn!(volume = %target.display(), error = %e, "cannot unmount volume");
        return;
    }
    remove_mount_point(&target);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binds_are_planned_shm_becomes_tmpfs_and_other_mounts_are_left() {
        let mut spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/c/hosts", "options": ["rbind", "rprivate", "ro"]},
            {"destination": "/data", "type": "none", "source": "/srv/data", "options": ["rbind", "rw"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/c/shm", "options": ["rbind"]}
        ]});
        let p = plan(&mut spec, None).expect("plan");
        assert_eq!(
            p.sources,
            vec![
                (
                    "/var/lib/c/hosts".to_string(),
                    Volume {
                        host: "/var/lib/c/hosts".into(),
                        read_only: true
                    }
                ),
                (
                    "/srv/data".to_string(),
                    Volume {
                        host: "/srv/data".into(),
                        read_only: false
                    }
                ),
            ]
        );
        assert_eq!(spec["mounts"][3]["type"], "tmpfs");
        assert_eq!(spec["mounts"][0]["type"], "proc");
    }

    #[test]
    fn climbing_or_relative_sources_without_a_bundle_are_refused_before_anything_is_mounted() {
        for src in ["../../etc/shadow", "/a/../../etc", "rel/x", ""] {
            let mut spec =
                json!({"mounts": [{"destination": "/x", "type": "bind", "source": src}]});
            assert!(
                matches!(
                    plan(&mut spec, None),
                    Err(ShareFsError::BadBindSource { .. })
                ),
                "{src:?}"
            );
        }
        let mut spec =
            json!({"mounts": [{"destination": "/x", "type": "bind", "source": "data/x"}]});
        let p = plan(&mut spec, Some(Path::new("/bundle"))).expect("plan");
        assert_eq!(p.sources[0].1.host, Path::new("/bundle/data/x"));
    }

    #[test]
    fn a_source_bound_twice_is_one_volume_writable_if_either_is() {
        let mut spec = json!({"mounts": [
            {"destination": "/a", "type": "bind", "source": "/s", "options": ["ro"]},
            {"destination": "/b", "type": "bind", "source": "/s", "options": ["rw"]}
        ]});
        let p = plan(&mut spec, None).expect("plan");
        assert_eq!(p.sources.len(), 1);
        assert!(!p.sources[0].1.read_only);
    }

    #[test]
    fn volume_keys_differ_by_path_and_mode() {
        let a = Volume {
            host: "/s".into(),
            read_only: false,
        };
        let b = Volume {
            host: "/s".into(),
            read_only: true,
        };
        let c = Volume {
            host: "/t".into(),
            read_only: false,
        };
        assert_ne!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert_eq!(key(&a).len(), 16);
        assert!(key(&b).ends_with("-ro"));
    }

    #[test]
    fn a_symlink_source_is_refused_by_name() {
        let d = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink("/etc", d.path().join("link")).expect("symlink");
        let vol = Volume {
            host: d.path().join("link"),
            read_only: false,
        };
        let e = open_source(&vol).expect_err("symlink");
        assert!(e.to_string().contains("is a symlink"), "{e}");
        let missing = Volume {
            host: d.path().join("none"),
            read_only: false,
        };
        let e = open_source(&missing).expect_err("missing");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
