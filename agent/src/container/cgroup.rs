//! cgroup v2 of the containers: `/sys/fs/cgroup/ampoule/<id>`, filled from
//! the OCI `linux.resources`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use crate::syscall::Syscall;

pub const ROOT: &str = "/sys/fs/cgroup";
pub const PARENT: &str = "/sys/fs/cgroup/ampoule";
/// Controllers the containers use, in the order they are enabled.
const WANTED: [&str; 4] = ["cpuset", "cpu", "memory", "pids"];
/// Default CFS period when a quota comes without one (µs).
const DEFAULT_PERIOD: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("linux.resources.unified key {0:?} is not a cgroup file name")]
    BadUnifiedKey(String),
    #[error("linux.resources is not valid JSON: {0}")]
    Json(String),
    #[error("linux.cgroupsPath {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("linux.resources.cpu.{field} {value:?} is not a CPU or node list")]
    BadCpuList { field: &'static str, value: String },
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// The cgroup directory of a container.
pub fn container_dir(container_id: &str) -> PathBuf {
    Path::new(PARENT).join(container_id)
}

/// The cgroup directory of a container from OCI `linux.cgroupsPath`:
/// a path (absolute or not) under the agent's cgroup root, without `..`; a
/// systemd-style `slice:prefix:name` mapped as runc's systemd driver names
/// it (`a-b.slice:cri:id` -> `a.slice/a-b.slice/cri-id.scope`); none or
/// empty: `ampoule/<id>`.
pub fn container_dir_for(id: &str, cgroups_path: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let Some(raw) = cgroups_path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(container_dir(id));
    };
    let text = raw.to_string_lossy();
    let bad = |reason| CgroupError::BadPath {
        path: text.to_string(),
        reason,
    };
    let rel = if !text.starts_with('/') && text.contains(':') {
        let parts: Vec<&str> = text.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(bad("systemd form is slice:prefix:name"));
        };
        if name.is_empty() || name.contains('/') || prefix.contains('/') {
            return Err(bad("name and prefix must be non-empty file names"));
        }
        let mut rel = expand_slice(if slice.is_empty() {
            "system.slice"
        } else {
            slice
        })
        .ok_or_else(|| bad("slice must be a name ending in .slice, without '/' or '--'"))?;
        rel.push(if name.ends_with(".slice") {
            name.to_string()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        });
        rel
    } else {
        super::mounts::clean_relative(&Path::new("/").join(raw))
            .ok_or_else(|| bad("must not contain `..`"))?
    };
    if rel.as_os_str().is_empty() {
        return Err(bad("the root cgroup cannot be a container's cgroup"));
    }
    Ok(Path::new(ROOT).join(rel))
}

/// systemd's slice hierarchy: `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice`,
/// `-.slice` -> the root.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let base = slice.strip_suffix(".slice")?;
    if slice.contains('/') {
        return None;
    }
    if base == "-" {
        return Some(PathBuf::new());
    }
    if base.is_empty() || base.starts_with('-') || base.ends_with('-') || base.contains("--") {
        return None;
    }
    let mut out = PathBuf::new();
    let mut prefix = String::new();
    for part in base.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Some(out)
}

/// Creates a container's cgroup directory with our controllers enabled in
/// every ancestor below the root (the root and `ampoule` are set up at
/// boot).
pub fn create_dir(sys: &dyn Syscall, dir: &Path) -> Result<(), CgroupError> {
    sys.mkdir_all(dir).map_err(file_err(dir))?;
    let root = Path::new(ROOT);
    let avail_path = root.join("cgroup.controllers");
    let avail = sys.read_to_string(&avail_path).unwrap_or_default();
    let wanted = controllers_to_enable(&avail);
    let mut ancestors: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|a| *a != root && a.starts_with(root))
        .collect();
    ancestors.reverse();
    for a in ancestors {
        let ctl = a.join("cgroup.subtree_control");
        for c in &wanted {
            if let Err(e) = sys.write_file(&ctl, &format!("+{c}")) {
                tracing::debug!(controller = c, path = %ctl.display(), error = %e, "enabling cgroup controller");
            }
        }
    }
    Ok(())
}

/// Which of our controllers `cgroup.controllers` offers.
pub fn controllers_to_enable(available: &str) -> Vec<&'static str> {
    let have: Vec<&str> = available.split_ascii_whitespace().collect();
    WANTED
        .iter()
        .copied()
        .filter(|c| have.contains(c))
        .collect()
}

/// Enables the controllers at the root and in the `ampoule` parent.
pub fn setup_parent(sys: &dyn Syscall) -> Result<(), CgroupError> {
    let root = Path::new(ROOT);
    let avail_path = root.join("cgroup.controllers");
    let avail = sys
        .read_to_string(&avail_path)
        .map_err(file_err(&avail_path))?;
    let wanted = controllers_to_enable(&avail);
    let parent = Path::new(PARENT);
    sys.mkdir_all(parent).map_err(file_err(parent))?;
    for dir in [root, parent] {
        let ctl = dir.join("cgroup.subtree_control");
        for c in &wanted {
            // One at a time: a controller the kernel refuses does not keep
            // the others off.
            if let Err(e) = sys.write_file(&ctl, &format!("+{c}")) {
                tracing::warn!(controller = c, path = %ctl.display(), error = %e, "enabling cgroup controller");
            }
        }
    }
    Ok(())
}

/// runc's conversion of cgroup v1 cpu.shares [2, 262144] to v2 cpu.weight
/// [1, 10000]: the default 1024 shares becomes weight 39.
pub fn cpu_weight_from_shares(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// `cpu.max` from a CFS quota and period: `"<quota> <period>"`, or
/// `"max <period>"` for no (or a negative) quota. None when neither is set.
pub fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    let period = match period {
        Some(p) if p > 0 => Some(p),
        _ => None,
    };
    match (quota, period) {
        (None, None) => None,
        (Some(q), p) if q > 0 => Some(format!("{q} {}", p.unwrap_or(DEFAULT_PERIOD))),
        (_, p) => Some(format!("max {}", p.unwrap_or(DEFAULT_PERIOD))),
    }
}

/// A byte limit or `max` for "no limit" (OCI uses -1; 0 is also unlimited
/// for pids).
fn limit_or_max(v: i64) -> String {
    if v < 0 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// The cgroup files to write, in order, for `res`, in this guest.
pub fn resource_writes(res: &LinuxResources) -> Result<Vec<(String, String)>, CgroupError> {
    resource_writes_for(res, online_cpus())
}

/// vCPUs of this guest.
fn online_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

pub use ampoule_agent_api::cpu_list_count as list_count;

/// The guest's cpuset for a container granted the host CPUs `list`: as
/// many of the guest's `guest_cpus` vCPUs, from vCPU 0 (the host's CPU
/// numbers mean nothing in the guest; the host cgroup pins the vCPUs).
pub fn guest_cpuset(list: &str, guest_cpus: u32) -> Result<String, CgroupError> {
    let n = list_count(list).ok_or_else(|| CgroupError::BadCpuList {
        field: "cpus",
        value: list.to_string(),
    })?;
    let k = n.min(u64::from(guest_cpus.max(1)));
    Ok(if k == 1 {
        "0".into()
    } else {
        format!("0-{}", k - 1)
    })
}

/// [`resource_writes`] for a guest with `guest_cpus` vCPUs.
pub fn resource_writes_for(
    res: &LinuxResources,
    guest_cpus: u32,
) -> Result<Vec<(String, String)>, CgroupError> {
    let mut w: Vec<(String, String)> = Vec::new();
    if let Some(mem) = res.memory() {
        if let Some(limit) = mem.limit() {
            w.push(("memory.max".into(), limit_or_max(limit)));
        }
        if let Some(r) = mem.reservation() {
            w.push(("memory.low".into(), limit_or_max(r)));
        }
        if let Some(swap) = mem.swap() {
            // OCI's swap is memory + swap; v2's memory.swap.max is swap only.
            let v = match (swap, mem.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l >= 0 => s.saturating_sub(l).max(0).to_string(),
                (s, _) => s.to_string(),
            };
            w.push(("memory.swap.max".into(), v));
        }
    }
    if let Some(cpu) = res.cpu() {
        if let Some(shares) = cpu.shares() {
            if shares > 0 {
                w.push((
                    "cpu.weight".into(),
                    cpu_weight_from_shares(shares).to_string(),
                ));
            }
        }
        if let Some(max) = cpu_max(cpu.quota(), cpu.period()) {
            w.push(("cpu.max".into(), max));
        }
        if let Some(burst) = cpu.burst() {
            w.push(("cpu.max.burst".into(), burst.to_string()));
        }
        if let Some(idle) = cpu.idle() {
            w.push(("cpu.idle".into(), idle.to_string()));
        }
        if let Some(cpus) = cpu.cpus() {
            if !cpus.is_empty() {
                w.push(("cpuset.cpus".into(), guest_cpuset(cpus, guest_cpus)?));
            }
        }
        if let Some(mems) = cpu.mems() {
            if !mems.is_empty() {
                // The guest has one memory node, whatever the host's are.
                list_count(mems).ok_or_else(|| CgroupError::BadCpuList {
                    field: "mems",
                    value: mems.clone(),
                })?;
                w.push(("cpuset.mems".into(), "0".into()));
            }
        }
    }
    if let Some(pids) = res.pids() {
        let l = pids.limit();
        w.push((
            "pids.max".into(),
            if l <= 0 { "max".into() } else { l.to_string() },
        ));
    }
    if let Some(unified) = res.unified() {
        let mut keys: Vec<&String> = unified.keys().collect();
        keys.sort();
        for k in keys {
            if k.is_empty() || k.contains('/') || k.starts_with('.') || !k.contains('.') {
                return Err(CgroupError::BadUnifiedKey(k.clone()));
            }
            w.push((k.clone(), unified[k].clone()));
        }
    }
    Ok(w)
}

/// Writes `writes` into the cgroup `dir`. Swap files are skipped on a guest
/// without swap.
pub fn apply(
    sys: &dyn Syscall,
    dir: &Path,
    writes: &[(String, String)],
) -> Result<(), CgroupError> {
    for (file, value) in writes {
        let path = dir.join(file);
        match sys.write_file(&path, value) {
            Ok(()) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && file.starts_with("memory.swap") =>
            {
                tracing::debug!(file, "no swap in this guest: skipped");
            }
            Err(e) => return Err(file_err(&path)(e)),
        }
    }
    Ok(())
}

/// Parses OCI `linux.resources` JSON (UpdateContainer).
pub fn parse_resources(json: &[u8]) -> Result<LinuxResources, CgroupError> {
    serde_json::from_slice(json).map_err(|e| CgroupError::Json(e.to_string()))
}

/// Parses a flat-keyed cgroup file (`key value` per line), e.g. cpu.stat,
/// memory.stat, memory.events; lines that do not parse are skipped.
pub fn parse_flat_keyed(s: &str) -> HashMap<String, u64> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_ascii_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// A single-value file: a number, or `max` as u64::MAX.
pub fn parse_single(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "max" {
        Some(u64::MAX)
    } else {
        s.parse().ok()
    }
}

/// The `oom_kill` count of a cgroup's memory.events.
pub fn oom_kills(sys: &dyn Syscall, dir: &Path) -> u64 {
    sys.read_to_string(&dir.join("memory.events"))
        .map(|s| parse_flat_keyed(&s).get("oom_kill").copied().unwrap_or(0))
        .unwrap_or(0)
}

/// The pids in a cgroup.
pub fn procs(sys: &dyn Syscall, dir: &Path) -> Vec<i32> {
    sys.read_to_string(&dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::Recording;

    fn res(json: &str) -> LinuxResources {
        parse_resources(json.as_bytes()).expect("valid resources")
    }

    #[test]
    fn shares_convert_to_weight_like_runc() {
        assert_eq!(cpu_weight_from_shares(2), 1);
        assert_eq!(cpu_weight_from_shares(1024), 39);
        assert_eq!(cpu_weight_from_shares(262_144), 10_000);
        // out of range values are clamped, never overflow
        assert_eq!(cpu_weight_from_shares(1), 1);
        assert_eq!(cpu_weight_from_shares(u64::MAX), 10_000);
    }

    #[test]
    fn quota_and_period_become_cpu_max() {
        assert_eq!(
            cpu_max(Some(50_000), Some(100_000)).as_deref(),
            Some("50000 100000")
        );
        assert_eq!(cpu_max(Some(20_000), None).as_deref(), Some("20000 100000"));
        assert_eq!(
            cpu_max(Some(-1), Some(50_000)).as_deref(),
            Some("max 50000")
        );
        assert_eq!(cpu_max(None, Some(250_000)).as_deref(), Some("max 250000"));
        assert_eq!(cpu_max(None, None), None);
    }

    #[test]
    fn memory_pids_and_cpu_limits_map_to_their_files() {
        let w = resource_writes(&res(
            r#"{"memory":{"limit":67108864},"cpu":{"shares":512,"quota":150000,"period":100000},"pids":{"limit":32}}"#,
        ))
        .expect("writes");
        assert_eq!(
            w,
            vec![
                ("memory.max".to_string(), "67108864".to_string()),
                ("cpu.weight".into(), "20".into()),
                ("cpu.max".into(), "150000 100000".into()),
                ("pids.max".into(), "32".into()),
            ]
        );
    }

    #[test]
    fn a_cpuset_naming_more_host_cpus_than_the_guest_has_maps_onto_its_vcpus() {
        let r = res(r#"{"cpu":{"cpus":"2-5,9","mems":"1"}}"#);
        let w = resource_writes_for(&r, 2).expect("writes");
        assert_eq!(
            w,
            vec![
                ("cpuset.cpus".to_string(), "0-1".to_string()),
                ("cpuset.mems".into(), "0".into())
            ]
        );
        assert_eq!(guest_cpuset("7", 4).unwrap(), "0");
        assert_eq!(guest_cpuset("0-2", 4).unwrap(), "0-2");
        for bad in ["", "a", "3-1", "0-99999", "1,,2", "-1"] {
            assert!(guest_cpuset(bad, 2).is_err(), "{bad:?}");
        }
        assert!(resource_writes_for(&res(r#"{"cpu":{"mems":"x"}}"#), 1).is_err());
        assert_eq!(list_count("0-3,8"), Some(5));
    }

    #[test]
    fn cpu_burst_and_idle_map_to_their_files_and_absent_ones_write_nothing() {
        let w = resource_writes(&res(r#"{"cpu":{"quota":50000,"burst":20000,"idle":1}}"#))
            .expect("writes");
        assert!(
            w.contains(&("cpu.max.burst".into(), "20000".into())),
            "{w:?}"
        );
        assert!(w.contains(&("cpu.idle".into(), "1".into())), "{w:?}");
        let w = resource_writes(&res(r#"{"cpu":{"quota":50000}}"#)).expect("writes");
        assert!(
            w.iter()
                .all(|(f, _)| f != "cpu.max.burst" && f != "cpu.idle"),
            "{w:?}"
        );
    }

    #[test]
    fn unlimited_values_are_written_as_max() {
        let w = resource_writes(&res(
            r#"{"memory":{"limit":-1,"swap":-1},"pids":{"limit":0}}"#,
        ))
        .expect("writes");
        assert!(w.contains(&("memory.max".into(), "max".into())));
        assert!(w.contains(&("memory.swap.max".into(), "max".into())));
        assert!(w.contains(&("pids.max".into(), "max".into())));
    }

    #[test]
    fn oci_swap_includes_memory_and_v2_swap_does_not() {
        let w = resource_writes(&res(r#"{"memory":{"limit":100,"swap":300}}"#)).expect("writes");
        assert!(w.contains(&("memory.swap.max".into(), "200".into())));
    }

    #[test]
    fn unified_keys_cannot_escape_the_cgroup_directory() {
        let bad = res(r#"{"unified":{"../../cgroup.procs":"1"}}"#);
        assert!(matches!(
            resource_writes(&bad),
            Err(CgroupError::BadUnifiedKey(_))
        ));
        let good = res(r#"{"unified":{"memory.high":"1000000"}}"#);
        assert_eq!(
            resource_writes(&good).expect("ok"),
            vec![("memory.high".into(), "1000000".into())]
        );
    }

    #[test]
    fn apply_writes_into_the_container_cgroup_and_skips_missing_swap() {
        let dir = container_dir("web");
        let rec = Recording {
            missing: vec![dir.join("memory.swap.max")],
            ..Default::default()
        };
        let writes = vec![
            ("memory.max".to_string(), "100".to_string()),
            ("memory.swap.max".to_string(), "0".to_string()),
        ];
        apply(&rec, &dir, &writes).expect("apply");
        assert_eq!(
            rec.writes(),
            vec![(dir.join("memory.max"), "100".to_string())]
        );
    }

    #[test]
    fn apply_fails_on_a_missing_controller_file() {
        let dir = container_dir("web");
        let rec = Recording {
            missing: vec![dir.join("pids.max")],
            ..Default::default()
        };
        let err = apply(&rec, &dir, &[("pids.max".into(), "5".into())]);
        assert!(matches!(err, Err(CgroupError::File { .. })));
    }

    #[test]
    fn parent_setup_enables_only_controllers_the_kernel_has() {
        let rec = Recording::default();
        rec.set_file("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n");
        setup_parent(&rec).expect("setup");
        let w = rec.writes();
        assert!(w.contains(&(
            "/sys/fs/cgroup/cgroup.subtree_control".into(),
            "+memory".into()
        )));
        assert!(w.contains(&(
            "/sys/fs/cgroup/ampoule/cgroup.subtree_control".into(),
            "+pids".into()
        )));
        assert!(!w.iter().any(|(_, v)| v == "+cpuset"));
    }

    #[test]
    fn flat_keyed_files_parse_and_oom_kills_are_read() {
        let m = parse_flat_keyed("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\ngarbage\n");
        assert_eq!(m.get("oom_kill"), Some(&1));
        assert_eq!(m.get("max"), Some(&3));
        let rec = Recording::default();
        rec.set_file("/c/memory.events", "oom 1\noom_kill 4\n");
        assert_eq!(oom_kills(&rec, Path::new("/c")), 4);
        assert_eq!(oom_kills(&rec, Path::new("/none")), 0);
        assert_eq!(parse_single("max\n"), Some(u64::MAX));
        assert_eq!(parse_single("42\n"), Some(42));
    }

    #[test]
    fn cgroups_path_defaults_to_ampoule_id_and_accepts_paths_under_the_root() {
        assert_eq!(
            container_dir_for("web", None).expect("none"),
            Path::new("/sys/fs/cgroup/ampoule/web")
        );
        assert_eq!(
            container_dir_for("web", Some(Path::new(""))).expect("empty"),
            Path::new("/sys/fs/cgroup/ampoule/web")
        );
        assert_eq!(
            container_dir_for("web", Some(Path::new("/pods/p1/web"))).expect("absolute"),
            Path::new("/sys/fs/cgroup/pods/p1/web")
        );
        assert_eq!(
            container_dir_for("web", Some(Path::new("pods/./web"))).expect("relative"),
            Path::new("/sys/fs/cgroup/pods/web")
        );
    }

    #[test]
    fn cgroups_path_cannot_escape_or_be_the_root() {
        for p in ["/../etc", "a/../../b", "/", "/."] {
            assert!(
                matches!(
                    container_dir_for("web", Some(Path::new(p))),
                    Err(CgroupError::BadPath { .. })
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn systemd_cgroups_path_maps_like_runc() {
        let map = |p: &str| container_dir_for("id", Some(Path::new(p)));
        assert_eq!(
            map("kubepods-besteffort-pod12.slice:cri-containerd:abc").expect("k8s"),
            Path::new(
                "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            map("machine.slice:libpod:abc").expect("podman"),
            Path::new("/sys/fs/cgroup/machine.slice/libpod-abc.scope")
        );
        assert_eq!(
            map(":ampoule:abc").expect("default slice"),
            Path::new("/sys/fs/cgroup/system.slice/ampoule-abc.scope")
        );
        assert_eq!(
            map("-.slice::abc").expect("root slice"),
            Path::new("/sys/fs/cgroup/abc.scope")
        );
        for bad in [
            "a:b",
            "a.slice:b:c:d",
            "a--b.slice:p:n",
            "nodot:p:n",
            "a.slice:p:",
            "a.slice:p:../x",
            "../a.slice:p:n",
        ] {
            assert!(
                matches!(map(bad), Err(CgroupError::BadPath { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn creating_a_nested_cgroup_enables_controllers_in_each_ancestor() {
        let rec = Recording::default();
        rec.set_file("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n");
        create_dir(&rec, Path::new("/sys/fs/cgroup/a.slice/b.scope")).expect("create");
        let w = rec.writes();
        assert!(w.contains(&(
            PathBuf::from("/sys/fs/cgroup/a.slice/cgroup.subtree_control"),
            "+memory".to_string()
        )));
        assert!(!w.iter().any(
            |(p, _)| p == Path::new("/sys/fs/cgroup/cgroup.subtree_control")
                || p.starts_with("/sys/fs/cgroup/a.slice/b.scope")
        ));
    }
}
