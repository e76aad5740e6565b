//! Host cgroups: the VM's processes go into the pod's `linux.cgroupsPath`,
//! so the host's accounting (Kubernetes included) sees the pod's real cost.
//! cgroup v2 (unified) and v1/hybrid hierarchies; systemd-style paths
//! (`slice:prefix:name`) are left alone (no systemd here), with a warning.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup path {0:?} is not absolute or contains '..'")]
    BadPath(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cgroup directories `cgroups_path` names under `root`: one per v1
/// hierarchy, or the one unified directory.
pub fn directories(root: &Path, cgroups_path: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let rel = relative(cgroups_path)?;
    let Some(rel) = rel else {
        return Ok(Vec::new());
    };
    if root.join("cgroup.controllers").exists() {
        return Ok(vec![root.join(rel)]);
    }
    let mut out = Vec::new();
    let entries = std::fs::read_dir(root).map_err(|source| CgroupError::Io {
        what: "listing",
        path: root.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        let hier = e.path();
        // v1 hierarchies (and the hybrid unified one) have cgroup.procs at
        // their root; symlinks like cpu,cpuacct -> cpu are skipped.
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) && hier.join("cgroup.procs").exists()
        {
            out.push(hier.join(&rel));
        }
    }
    out.sort();
    Ok(out)
}

/// `None` for a systemd-style path, the path without its leading `/`
/// otherwise.
fn relative(cgroups_path: &str) -> Result<Option<PathBuf>, CgroupError> {
    if cgroups_path.is_empty() {
        return Ok(None);
    }
    if !cgroups_path.starts_with('/') {
        if cgroups_path.split(':').count() == 3 {
            tracing::warn!(
                cgroups_path,
                "systemd cgroup paths are not supported: VM processes stay in the shim's cgroup"
            );
            return Ok(None);
        }
        return Err(CgroupError::BadPath(cgroups_path.to_string()));
    }
    if cgroups_path.split('/').any(|c| c == "..") {
        return Err(CgroupError::BadPath(cgroups_path.to_string()));
    }
    let rel = cgroups_path.trim_start_matches('/');
    Ok((!rel.is_empty()).then(|| PathBuf::from(rel)))
}

/// Creates the cgroup in every hierarchy and moves `pids` there. Returns the
/// directories it created (to remove at delete). A hierarchy that refuses
/// (a v1 controller needing setup first, like cpuset) is skipped with a
/// warning.
pub fn place(root: &Path, cgroups_path: &str, pids: &[u32]) -> Result<Vec<PathBuf>, CgroupError> {
    place_except(root, cgroups_path, pids, None)
}

/// As [`place`], leaving out the hierarchy mounted at `except`.
pub fn place_except(
    root: &Path,
    cgroups_path: &str,
    pids: &[u32],
    except: Option<&Path>,
) -> Result<Vec<PathBuf>, CgroupError> {
    let mut created = Vec::new();
    for dir in directories(root, cgroups_path)? {
        if except.is_some_and(|e| dir.starts_with(e)) {
            continue;
        }
        // Every level this call creates is removed at delete.
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.exists())
            .map(Path::to_path_buf)
            .collect();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "creating cgroup");
            continue;
        }
        init_cpuset(&missing);
        created.extend(missing);
        for pid in pids {
            if let Err(e) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                tracing::warn!(dir = %dir.display(), pid, error = %e, "moving a VM process into the pod cgroup");
            }
        }
    }
    Ok(created)
}

/// A new v1 cpuset cgroup has empty cpus and mems, and refuses processes
/// (ENOSPC) until they are set: copy them from the parent, top-down.
fn init_cpuset(created_deepest_first: &[PathBuf]) {
    for dir in created_deepest_first.iter().rev() {
        let Some(parent) = dir.parent() else { continue };
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if !dir.join(file).exists() {
                continue;
            }
            if let Ok(v) = std::fs::read_to_string(parent.join(file)) {
                if let Err(e) = std::fs::write(dir.join(file), v.trim()) {
                    tracing::warn!(dir = %dir.display(), file, error = %e, "initialising cpuset");
                }
            }
        }
    }
}

/// Removes cgroup directories (deepest first). A cgroup stays busy until
/// its last process is reaped, so busy ones are retried for up to 2 s, then
/// left with a warning.
pub fn remove(dirs: &[PathBuf]) {
    let mut dirs = dirs.to_vec();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for attempt in 0..50 {
        let mut busy = Vec::new();
        for d in dirs {
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if attempt == 49 => {
                    tracing::warn!(dir = %d.display(), error = %e, "removing cgroup");
                }
                Err(_) => busy.push(d),
            }
        }
        if busy.is_empty() {
            return;
        }
        dirs = busy;
        std::thread::sleep(std::time::Duration::from_millis(40));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_hierarchy() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory").unwrap();
        assert_eq!(
            directories(d.path(), "/kubepods/pod1/abc").unwrap(),
            vec![d.path().join("kubepods/pod1/abc")]
        );
    }

    #[test]
    fn v1_hierarchies() {
        let d = tempfile::tempdir().unwrap();
        for h in ["cpu", "memory"] {
            std::fs::create_dir(d.path().join(h)).unwrap();
            std::fs::write(d.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        std::fs::create_dir(d.path().join("empty")).unwrap();
        assert_eq!(
            directories(d.path(), "/default/x").unwrap(),
            vec![
                d.path().join("cpu/default/x"),
                d.path().join("memory/default/x")
            ]
        );
    }

    #[test]
    fn place_records_every_level_it_creates() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "").unwrap();
        std::fs::create_dir(d.path().join("existing")).unwrap();
        let created = place(d.path(), "/existing/ns/id", &[]).unwrap();
        assert_eq!(
            created,
            vec![
                d.path().join("existing/ns/id"),
                d.path().join("existing/ns")
            ]
        );
        remove(&created);
        assert!(!d.path().join("existing/ns").exists());
        assert!(d.path().join("existing").exists());
    }

    #[test]
    fn odd_paths() {
        let d = tempfile::tempdir().unwrap();
        assert!(directories(d.path(), "").unwrap().is_empty());
        assert!(directories(d.path(), "system.slice:cri:abc")
            .unwrap()
            .is_empty());
        assert!(directories(d.path(), "/a/../../etc").is_err());
        assert!(directories(d.path(), "relative/path").is_err());
    }
}
