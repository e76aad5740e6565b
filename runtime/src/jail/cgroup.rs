//! The per-sandbox memory cgroup: guest memory plus a measured overhead for
//! every jailed process of the sandbox together.
//!
//! cgroup v2 (`memory.max`) when `/sys/fs/cgroup` is the unified hierarchy;
//! otherwise the v1 `memory` hierarchy (`memory.limit_in_bytes`), which is
//! what hybrid hosts (v1 controllers plus an empty `unified` mount) use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::JailError;

/// Which memory controller a host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryController {
    /// cgroup v2, mounted at this root.
    V2(PathBuf),
    /// The v1 `memory` hierarchy, mounted at this root.
    V1(PathBuf),
}

impl MemoryController {
    /// Finds the memory controller under `root` (`/sys/fs/cgroup`).
    pub fn probe(root: &Path) -> Option<MemoryController> {
        if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers")) {
            return c
                .split_whitespace()
                .any(|x| x == "memory")
                .then(|| MemoryController::V2(root.to_path_buf()));
        }
        let v1 = root.join("memory");
        v1.join("memory.limit_in_bytes")
            .exists()
            .then_some(MemoryController::V1(v1))
    }

    /// The hierarchy's root directory.
    pub fn root(&self) -> &Path {
        match self {
            Self::V2(p) | Self::V1(p) => p,
        }
    }

    /// Files written to limit a cgroup to `bytes`, in order. Swap must not
    /// lift the limit: v2 gets no swap, v1 bounds memory+swap as well (when
    /// the kernel accounts swap).
    pub fn limit_files(&self, bytes: u64) -> Vec<(&'static str, String)> {
        match self {
            Self::V2(_) => vec![
                ("memory.max", bytes.to_string()),
                ("memory.swap.max", "0".into()),
            ],
            Self::V1(_) => vec![
                ("memory.limit_in_bytes", bytes.to_string()),
                ("memory.memsw.limit_in_bytes", bytes.to_string()),
            ],
        }
    }

    /// The file holding the peak usage, bytes.
    pub fn peak_file(&self) -> &'static str {
        match self {
            Self::V2(_) => "memory.peak",
            Self::V1(_) => "memory.max_usage_in_bytes",
        }
    }
}

/// One sandbox's memory cgroup; [`MemoryCgroup::remove`] (or drop) kills
/// what is left in it and removes it.
#[derive(Debug)]
pub struct MemoryCgroup {
    pub controller: MemoryController,
    /// The sandbox's cgroup directory.
    pub dir: PathBuf,
    removed: bool,
}

/// `<root>/<parent>/<name>`; `parent` is absolute inside the hierarchy.
pub fn cgroup_dir(root: &Path, parent: &str, name: &str) -> Result<PathBuf, JailError> {
    let rel = parent.trim_start_matches('/');
    if !parent.starts_with('/')
        || parent.split('/').any(|c| c == "..")
        || name.is_empty()
        || name.contains('/')
        || name.starts_with('.')
    {
        return Err(JailError::CgroupPath(format!("{parent}/{name}")));
    }
    Ok(root.join(rel).join(name))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JailError {
    let path = path.to_path_buf();
    move |source| JailError::Io { what, path, source }
}

impl MemoryCgroup {
    /// Creates `<parent>/<name>` limited to `bytes`.
    pub fn create(
        controller: MemoryController,
        parent: &str,
        name: &str,
        bytes: u64,
    ) -> Result<MemoryCgroup, JailError> {
        let dir = cgroup_dir(controller.root(), parent, name)?;
        // Another sandbox may remove an empty parent between our check and
        // mkdir: retry a few times.
        let mut last = None;
        for _ in 0..5 {
            if let Some(p) = dir.parent() {
                if let Err(e) = std::fs::create_dir_all(p) {
                    last = Some(e);
                    continue;
                }
            }
            if let MemoryController::V2(root) = &controller {
                enable_memory_controller(root, &dir)?;
            }
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => last = Some(e),
                Err(e) => return Err(io("creating the memory cgroup", &dir)(e)),
            }
        }
        if let Some(e) = last {
            return Err(io("creating the memory cgroup", &dir)(e));
        }
        let cg = MemoryCgroup {
            controller,
            dir,
            removed: false,
        };
        for (file, value) in cg.controller.limit_files(bytes) {
            let path = cg.dir.join(file);
            match std::fs::write(&path, &value) {
                Ok(()) => {}
                // No swap accounting on this kernel: nothing to bound.
                Err(e) if file.contains("swap") || file.contains("memsw") => {
                    tracing::debug!(path = %path.display(), error = %e, "swap limit not set");
                }
                Err(e) => return Err(io("setting the memory limit", &path)(e)),
            }
        }
        Ok(cg)
    }

    /// An existing cgroup directory, taken over to be removed.
    pub fn existing(controller: MemoryController, dir: PathBuf) -> MemoryCgroup {
        MemoryCgroup {
            controller,
            dir,
            removed: false,
        }
    }

    /// `cgroup.procs` of this cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Peak memory use so far, bytes.
    pub fn peak_bytes(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join(self.controller.peak_file()))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// pids in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.procs_file())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills whatever still runs in the cgroup, then removes it (waiting up
    /// to ~2 s for the processes to exit) and every level of the parent that
    /// is now empty: the parent belongs to the runtime, made by the first
    /// sandbox and gone with the last.
    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        if let Some(peak) = self.peak_bytes() {
            tracing::debug!(
                cgroup = %self.dir.display(),
                peak_mib = peak / (1024 * 1024),
                "sandbox memory peak"
            );
        }
        for attempt in 0..100 {
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if attempt == 99 => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "removing the sandbox's memory cgroup");
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let root = self.controller.root().to_path_buf();
        for p in self.dir.ancestors().skip(1).take_while(|p| *p != root) {
            // Busy (another sandbox's cgroup inside): that one removes it.
            if std::fs::remove_dir(p).is_err() {
                break;
            }
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The sandbox cgroups under `<root>/<parent>`, named `<uid>-<sandbox>`,
/// with their uid.
pub fn sandbox_cgroups(root: &Path, parent: &str) -> Vec<(u32, PathBuf)> {
    let dir = root.join(parent.trim_start_matches('/'));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let (uid, rest) = name.split_once('-')?;
            (!rest.is_empty()).then_some(())?;
            Some((uid.parse().ok()?, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// cgroup v2: `+memory` in `subtree_control` of every level from the root
/// down to `dir`'s parent.
fn enable_memory_controller(root: &Path, dir: &Path) -> Result<(), JailError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    let mut levels: Vec<&Path> = parent
        .ancestors()
        .take_while(|d| d.starts_with(root))
        .collect();
    levels.reverse();
    for level in levels {
        let ctl = level.join("cgroup.subtree_control");
        let on = std::fs::read_to_string(&ctl)
            .map(|s| s.split_whitespace().any(|c| c == "memory"))
            .unwrap_or(false);
        if !on {
            std::fs::write(&ctl, "+memory").map_err(io("enabling the memory controller", &ctl))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_tells_v2_from_v1_and_hybrid() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(MemoryController::probe(d.path()), None);
        std::fs::create_dir(d.path().join("memory")).unwrap();
        std::fs::write(d.path().join("memory/memory.limit_in_bytes"), "").unwrap();
        assert_eq!(
            MemoryController::probe(d.path()),
            Some(MemoryController::V1(d.path().join("memory")))
        );
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        assert_eq!(
            MemoryController::probe(d.path()),
            Some(MemoryController::V2(d.path().to_path_buf()))
        );
        std::fs::write(d.path().join("cgroup.controllers"), "cpu pids").unwrap();
        assert_eq!(MemoryController::probe(d.path()), None);
    }

    #[test]
    fn limits_also_bound_swap() {
        let v1 = MemoryController::V1("/m".into());
        assert_eq!(
            v1.limit_files(5),
            [
                ("memory.limit_in_bytes", "5".to_string()),
                ("memory.memsw.limit_in_bytes", "5".to_string())
            ]
        );
        let v2 = MemoryController::V2("/c".into());
        assert_eq!(
            v2.limit_files(5),
            [
                ("memory.max", "5".to_string()),
                ("memory.swap.max", "0".to_string())
            ]
        );
    }

    #[test]
    fn cgroup_names_cannot_escape_the_parent() {
        let root = Path::new("/sys/fs/cgroup/memory");
        assert_eq!(
            cgroup_dir(root, "/ampoule", "s1").unwrap(),
            root.join("ampoule/s1")
        );
        for (parent, name) in [
            ("ampoule", "s1"),
            ("/a/../..", "s1"),
            ("/a", "x/y"),
            ("/a", ".."),
        ] {
            assert!(cgroup_dir(root, parent, name).is_err(), "{parent} {name}");
        }
    }

    #[test]
    fn sandbox_cgroups_are_found_with_their_uid() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "900000001-abc",
            "900000002-x-y",
            "nouid-abc",
            "12-",
            "other",
        ] {
            std::fs::create_dir_all(d.path().join("amp").join(n)).unwrap();
        }
        std::fs::write(d.path().join("amp/7-file"), "").unwrap();
        assert_eq!(
            sandbox_cgroups(d.path(), "/amp"),
            [
                (900_000_001, d.path().join("amp/900000001-abc")),
                (900_000_002, d.path().join("amp/900000002-x-y")),
            ]
        );
        assert!(sandbox_cgroups(d.path(), "/missing").is_empty());
    }

    #[test]
    fn the_parent_goes_with_the_last_sandbox_whoever_made_it() {
        // A directory tree stands in for cgroupfs (plain files, no kernel).
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("memory");
        std::fs::create_dir(&root).unwrap();
        let v1 = MemoryController::V1(root.clone());
        let mut first = MemoryCgroup::create(v1.clone(), "/amp/x", "s1", 1 << 20).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("amp/x/s1/memory.limit_in_bytes")).unwrap(),
            "1048576"
        );
        let mut second = MemoryCgroup::create(v1, "/amp/x", "s2", 1 << 20).unwrap();
        // Plain directories are not empty like cgroupfs ones: clear them.
        for cg in [&first, &second] {
            for f in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
                std::fs::remove_file(cg.dir.join(f)).unwrap();
            }
        }
        first.remove();
        assert!(!root.join("amp/x/s1").exists());
        assert!(
            root.join("amp/x/s2").exists(),
            "the other sandbox's cgroup stays"
        );
        second.remove();
        assert!(
            !root.join("amp").exists(),
            "parent removed with the last sandbox"
        );
        assert!(root.exists());
    }
}
