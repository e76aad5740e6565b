//! Host cgroups: the VM's processes go into the pod's `linux.cgroupsPath`,
//! so the host's accounting (Kubernetes included) sees the pod's real cost,
//! and the CPU and memory limits of `linux.resources` are set there.
//! cgroup v2 (unified) and v1/hybrid hierarchies; an absolute path is taken
//! from each hierarchy's root, a relative one from the cgroup this process
//! is in (as runc does); systemd-style paths (`slice:prefix:name`) are left
//! alone (no systemd here), with a warning.
//!
//! What a VM-isolated container's limits mean on the host
//! ([`resource_files`]): the CPU shares, quota and period and the cpuset
//! apply as written (they bound the vCPU threads, which is what the
//! container runs on); the memory limit cannot be the container's own (the
//! guest kernel, the agent and the VMM live beside it), so the host cgroup
//! gets the sandbox's whole budget: guest memory, sized from that limit,
//! plus the VMM's overhead; `pids.limit` counts the container's processes,
//! which are in the guest, and is applied there only (on the host the
//! hierarchy would count the VMM's threads).

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
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    directories_from(root, cgroups_path, &own)
}

/// [`directories`], with this process's `/proc/self/cgroup` given.
pub fn directories_from(
    root: &Path,
    cgroups_path: &str,
    proc_self_cgroup: &str,
) -> Result<Vec<PathBuf>, CgroupError> {
    let Some(path) = parse_path(cgroups_path)? else {
        return Ok(Vec::new());
    };
    let at = |hier: &Path, key: &str| match &path {
        CgroupsPath::Absolute(rel) => hier.join(rel),
        CgroupsPath::Relative(rel) => hier
            .join(own_cgroup(proc_self_cgroup, key).trim_start_matches('/'))
            .join(rel),
    };
    if root.join("cgroup.controllers").exists() {
        return Ok(vec![at(root, "")]);
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
            let name = e.file_name().to_string_lossy().into_owned();
            out.push(at(&hier, &hierarchy_key(&name)));
        }
    }
    out.sort();
    Ok(out)
}

/// A `linux.cgroupsPath` the host can take.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CgroupsPath {
    /// From each hierarchy's root.
    Absolute(PathBuf),
    /// From the cgroup this process is in, in each hierarchy.
    Relative(PathBuf),
}

/// `None` for an empty or systemd-style path.
fn parse_path(cgroups_path: &str) -> Result<Option<CgroupsPath>, CgroupError> {
    if cgroups_path.is_empty() {
        return Ok(None);
    }
    if cgroups_path.split(':').count() == 3 && !cgroups_path.starts_with('/') {
        tracing::warn!(
            cgroups_path,
            "systemd cgroup paths are not supported: VM processes stay in the runtime's cgroup"
        );
        return Ok(None);
    }
    let bad = cgroups_path
        .split('/')
        .any(|c| c == ".." || c == "." || c.contains(':'))
        || cgroups_path.contains('\0');
    if bad {
        return Err(CgroupError::BadPath(cgroups_path.to_string()));
    }
    let rel = PathBuf::from(cgroups_path.trim_start_matches('/'));
    if rel.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(if cgroups_path.starts_with('/') {
        CgroupsPath::Absolute(rel)
    } else {
        CgroupsPath::Relative(rel)
    }))
}

/// The key of a hierarchy mounted as `name` in `/proc/self/cgroup`'s
/// controller lists: "" for the unified one.
fn hierarchy_key(name: &str) -> String {
    match name {
        "unified" => String::new(),
        "systemd" => "name=systemd".into(),
        n => n.split(',').next().unwrap_or(n).to_string(),
    }
}

/// The cgroup this process is in, in the hierarchy `key` ("" unified), from
/// `/proc/self/cgroup` lines `ID:CONTROLLERS:PATH`; "/" when not listed.
fn own_cgroup<'a>(proc_self_cgroup: &'a str, key: &str) -> &'a str {
    proc_self_cgroup
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let hit = if key.is_empty() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == key)
            };
            hit.then_some(path)
        })
        .unwrap_or("/")
}

/// Creates the cgroup in every hierarchy and moves `pids` there. Returns the
/// directories it created (to remove at delete). A hierarchy that refuses
/// (a v1 controller needing setup first, like cpuset) is skipped with a
/// warning.
pub fn place(root: &Path, cgroups_path: &str, pids: &[u32]) -> Result<Vec<PathBuf>, CgroupError> {
    place_except(root, cgroups_path, pids, None, &[])
}

/// The levels of `cgroups_path`'s directories that do not exist yet, in
/// every hierarchy: what a sandbox placed there will create.
pub fn missing_levels(root: &Path, cgroups_path: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let mut out = Vec::new();
    for dir in directories(root, cgroups_path)? {
        out.extend(
            dir.ancestors()
                .take_while(|d| !d.exists())
                .map(Path::to_path_buf),
        );
    }
    Ok(out)
}

/// As [`place`], leaving out the hierarchy mounted at `except` for the
/// processes (its directory is still made and limited), and writing
/// `limits` into the new cgroups before the processes arrive. A limit the
/// host refuses fails the placement.
pub fn place_except(
    root: &Path,
    cgroups_path: &str,
    pids: &[u32],
    except: Option<&Path>,
    limits: &[ResourceWrite],
) -> Result<Vec<PathBuf>, CgroupError> {
    let unified = root.join("cgroup.controllers").exists();
    let mut created = Vec::new();
    for dir in directories(root, cgroups_path)? {
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
        if unified {
            enable_controllers(root, &dir, limits);
        }
        let hierarchy = hierarchy_of(root, &dir);
        for w in limits {
            if !unified && !hierarchy.split(',').any(|c| c == w.controller) {
                continue;
            }
            let path = dir.join(&w.file);
            std::fs::write(&path, &w.value).map_err(|source| CgroupError::Io {
                what: "setting a limit in",
                path: path.clone(),
                source,
            })?;
            tracing::debug!(path = %path.display(), value = %w.value, "host cgroup limit");
        }
        if except.is_some_and(|e| dir.starts_with(e)) {
            continue;
        }
        for pid in pids {
            if let Err(e) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                tracing::warn!(dir = %dir.display(), pid, error = %e, "moving a VM process into the pod cgroup");
            }
        }
    }
    Ok(created)
}

/// The v1 hierarchy `dir` is in: its first component under `root`.
fn hierarchy_of(root: &Path, dir: &Path) -> String {
    dir.strip_prefix(root)
        .ok()
        .and_then(|r| r.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// On cgroup v2 a controller's files exist in a cgroup only when every
/// ancestor delegates it (`cgroup.subtree_control`): turn on those the
/// limits need, top-down. Refusals are left to the write of the limit.
fn enable_controllers(root: &Path, dir: &Path, limits: &[ResourceWrite]) {
    let mut wanted: Vec<&str> = limits.iter().map(|w| w.controller).collect();
    wanted.sort_unstable();
    wanted.dedup();
    if wanted.is_empty() {
        return;
    }
    let line = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut levels: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|a| a.starts_with(root))
        .collect();
    levels.reverse();
    for level in levels {
        let f = level.join("cgroup.subtree_control");
        if let Err(e) = std::fs::write(&f, &line) {
            tracing::debug!(file = %f.display(), error = %e, "enabling controllers");
        }
    }
}

/// One write into a host cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceWrite {
    /// The controller (the v1 hierarchy that holds the file).
    pub controller: &'static str,
    pub file: String,
    pub value: String,
}

fn write(controller: &'static str, file: &str, value: impl ToString) -> ResourceWrite {
    ResourceWrite {
        controller,
        file: file.into(),
        value: value.to_string(),
    }
}

/// The host cgroup writes for a sandbox whose container asks `res`, in
/// order, on cgroup v2 (`unified`) or v1. `memory_bytes` is the sandbox's
/// memory budget (guest memory plus VMM overhead), set when the container
/// has a memory limit; see the module documentation for why it is not the
/// container's own.
pub fn resource_files(
    res: &oci_spec::runtime::LinuxResources,
    unified: bool,
    memory_bytes: Option<u64>,
) -> Vec<ResourceWrite> {
    let mut w = Vec::new();
    if let Some(cpu) = res.cpu() {
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            w.push(if unified {
                write("cpu", "cpu.weight", weight_from_shares(shares))
            } else {
                write("cpu", "cpu.shares", shares)
            });
        }
        let period = cpu.period().filter(|p| *p > 0);
        let quota = cpu.quota().filter(|q| *q != 0);
        if unified {
            if quota.is_some() || period.is_some() {
                let q = match quota {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".into(),
                };
                w.push(write(
                    "cpu",
                    "cpu.max",
                    format!("{q} {}", period.unwrap_or(100_000)),
                ));
            }
        } else {
            // The period first: a quota is checked against the period in place.
            if let Some(p) = period {
                w.push(write("cpu", "cpu.cfs_period_us", p));
            }
            if let Some(q) = quota {
                w.push(write("cpu", "cpu.cfs_quota_us", q.max(-1)));
            }
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            w.push(write("cpuset", "cpuset.cpus", cpus));
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            w.push(write("cpuset", "cpuset.mems", mems));
        }
    }
    if let Some(bytes) = memory_bytes {
        w.push(if unified {
            write("memory", "memory.max", bytes)
        } else {
            write("memory", "memory.limit_in_bytes", bytes)
        });
    }
    w
}

/// cgroup v1 `cpu.shares` (2..262144) as v2 `cpu.weight` (1..10000), the
/// conversion runc and crun use.
pub fn weight_from_shares(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
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
    fn a_relative_path_is_taken_from_the_runtimes_own_cgroup_in_each_hierarchy() {
        let d = tempfile::tempdir().unwrap();
        for h in ["cpu", "memory", "unified", "systemd"] {
            std::fs::create_dir(d.path().join(h)).unwrap();
            std::fs::write(d.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        let own = "9:name=systemd:/user.slice\n4:memory:/jobs/j1\n1:cpu:/\n0::/u\n";
        assert_eq!(
            directories_from(d.path(), "pod/c1", own).unwrap(),
            vec![
                d.path().join("cpu/pod/c1"),
                d.path().join("memory/jobs/j1/pod/c1"),
                d.path().join("systemd/user.slice/pod/c1"),
                d.path().join("unified/u/pod/c1"),
            ]
        );
        assert_eq!(
            directories_from(d.path(), "/pod/c1", own).unwrap()[1],
            d.path().join("memory/pod/c1"),
            "absolute: from the hierarchy's root"
        );
    }

    fn resources(json: serde_json::Value) -> oci_spec::runtime::LinuxResources {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn cpu_limits_apply_as_written_and_memory_is_the_sandboxs_budget() {
        let r = resources(serde_json::json!({
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
            "memory": {"limit": 67108864},
            "pids": {"limit": 10}
        }));
        let v1: Vec<(&str, String, String)> = resource_files(&r, false, Some(300 << 20))
            .into_iter()
            .map(|w| (w.controller, w.file, w.value))
            .collect();
        let e = |c, f: &str, v: &str| (c, f.to_string(), v.to_string());
        assert_eq!(
            v1,
            vec![
                e("cpu", "cpu.shares", "512"),
                e("cpu", "cpu.cfs_period_us", "100000"),
                e("cpu", "cpu.cfs_quota_us", "50000"),
                e("cpuset", "cpuset.cpus", "0-1"),
                e("cpuset", "cpuset.mems", "0"),
                e("memory", "memory.limit_in_bytes", "314572800"),
            ],
            "pids.limit stays in the guest"
        );
        let v2: Vec<(String, String)> = resource_files(&r, true, Some(300 << 20))
            .into_iter()
            .map(|w| (w.file, w.value))
            .collect();
        assert_eq!(v2[0], ("cpu.weight".into(), "20".into()));
        assert_eq!(v2[1], ("cpu.max".into(), "50000 100000".into()));
        assert_eq!(v2[4], ("memory.max".into(), "314572800".into()));
        let unlimited = resources(serde_json::json!({"cpu": {"quota": -1, "period": 50000}}));
        assert_eq!(resource_files(&unlimited, true, None)[0].value, "max 50000");
        assert!(resource_files(&resources(serde_json::json!({})), false, None).is_empty());
    }

    #[test]
    fn limits_are_written_in_their_own_v1_hierarchy_before_the_processes_arrive() {
        let d = tempfile::tempdir().unwrap();
        for h in ["cpu", "memory", "cpuset"] {
            std::fs::create_dir(d.path().join(h)).unwrap();
            std::fs::write(d.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        let r = resources(serde_json::json!({"cpu": {"shares": 256}}));
        let limits = resource_files(&r, false, Some(1 << 30));
        let created = place_except(d.path(), "/p/c", &[], None, &limits).unwrap();
        let read = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(read("cpu/p/c/cpu.shares"), "256");
        assert_eq!(read("memory/p/c/memory.limit_in_bytes"), "1073741824");
        assert!(!d.path().join("cpuset/p/c/cpu.shares").exists());
        assert_eq!(created.len(), 6);
        assert_eq!(
            missing_levels(d.path(), "/p/c/d").unwrap().len(),
            3,
            "one level missing in each hierarchy"
        );
    }

    #[test]
    fn odd_paths() {
        let d = tempfile::tempdir().unwrap();
        assert!(directories(d.path(), "").unwrap().is_empty());
        assert!(directories(d.path(), "system.slice:cri:abc")
            .unwrap()
            .is_empty());
        assert!(directories(d.path(), "/a/../../etc").is_err());
        assert!(directories(d.path(), "/a/./b").is_err());
    }
}
