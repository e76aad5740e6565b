//! The container's mounts: OCI `mounts` turned into a plan the helper
//! executes before pivot_root, plus `/dev`, masked and read-only paths.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountError {
    #[error("mount destination {0:?} must be an absolute path without `..`")]
    BadDestination(PathBuf),
    #[error("bind mount source {0:?} must not contain `..`")]
    BadSource(PathBuf),
    #[error(
        "bind mount source {0:?} is not in the sandbox's shared filesystem: the host did not share it"
    )]
    NotShared(PathBuf),
    #[error("mount at {0:?} has no type and is not a bind mount")]
    NoType(PathBuf),
    #[error("linux.devices: {path:?} has type {typ:?}; a node is c, u, b or p")]
    BadDeviceType { path: PathBuf, typ: String },
}

/// Mount flags, propagation and fs data from OCI mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: Vec::new(),
        }
    }
}

/// Parses OCI mount options the way runc does: known flags become MS_*
/// bits, propagation options are kept apart, everything else is fs data.
pub fn parse_options(opts: &[String]) -> Options {
    let mut o = Options::default();
    for opt in opts {
        let (set, clear) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" => {
                o.propagation |= MsFlags::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                o.propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC;
                continue;
            }
            "shared" => {
                o.propagation |= MsFlags::MS_SHARED;
                continue;
            }
            "rshared" => {
                o.propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC;
                continue;
            }
            "slave" => {
                o.propagation |= MsFlags::MS_SLAVE;
                continue;
            }
            "rslave" => {
                o.propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC;
                continue;
            }
            "unbindable" => {
                o.propagation |= MsFlags::MS_UNBINDABLE;
                continue;
            }
            "runbindable" => {
                o.propagation |= MsFlags::MS_UNBINDABLE | MsFlags::MS_REC;
                continue;
            }
            // runc extensions and id-mapping options we do not implement:
            // not fs data either.
            "tmpcopyup" | "nosymfollow" | "idmap" | "ridmap" => continue,
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags.remove(clear);
        o.flags.insert(set);
    }
    o
}

/// One mount the helper performs, inside the container's mount namespace,
/// before pivot_root. Flags are raw MS_* bits so the plan crosses the
/// helper's pipe as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountStep {
    pub source: Option<PathBuf>,
    /// Absolute path under the container's rootfs (as the agent sees it).
    pub target: PathBuf,
    pub fstype: Option<String>,
    pub flags: u64,
    pub data: Option<String>,
    /// A bind mount: the target is created as a file when the source is one.
    pub bind: bool,
    /// Flags for the MS_REMOUNT|MS_BIND that makes a bind mount read-only
    /// (or nosuid, ...); a bind ignores them on the first mount.
    pub remount_flags: Option<u64>,
    pub propagation: Option<u64>,
}

/// `dest` as a relative path with only normal components, or None.
pub fn clean_relative(dest: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut absolute = false;
    for c in dest.components() {
        match c {
            Component::RootDir => absolute = true,
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    absolute.then_some(out)
}

/// Where the sources of bind mounts are found in the guest.
#[derive(Debug, Clone, Copy)]
pub enum BindSources<'a> {
    /// As written in the spec (guest paths).
    AsWritten,
    /// Copied by the host into a drive mounted here: source S is `<root>/<S>`.
    Drive(&'a Path),
    /// Shared live by the host through the shared filesystem mounted at
    /// `root`: source S is `<root>/<map[S]>`; a source not in `map` is refused.
    Shared {
        root: &'a Path,
        map: &'a HashMap<String, String>,
    },
}

impl BindSources<'_> {
    fn resolve(&self, src: &Path) -> Result<PathBuf, MountError> {
        match self {
            BindSources::AsWritten => Ok(src.to_path_buf()),
            BindSources::Drive(root) => Ok(root.join(src.strip_prefix("/").unwrap_or(src))),
            BindSources::Shared { root, map } => {
                let rel = src
                    .to_str()
                    .and_then(|s| map.get(s))
                    .ok_or_else(|| MountError::NotShared(src.to_path_buf()))?;
                // The host writes relative paths; one that is not cannot
                // leave the shared filesystem either.
                let clean = clean_relative(&Path::new("/").join(rel))
                    .filter(|c| !c.as_os_str().is_empty() && !rel.starts_with('/'))
                    .ok_or_else(|| MountError::BadSource(PathBuf::from(rel)))?;
                Ok(root.join(clean))
            }
        }
    }
}

/// The mount plan for OCI `mounts`. `rootfs` is where the container's root
/// is mounted in the agent; bind sources are found as `sources` says.
pub fn plan(
    mounts: &[oci_spec::runtime::Mount],
    rootfs: &Path,
    sources: BindSources<'_>,
) -> Result<Vec<MountStep>, MountError> {
    let mut steps = Vec::with_capacity(mounts.len());
    for m in mounts {
        let dest = m.destination();
        let rel = clean_relative(dest).ok_or_else(|| MountError::BadDestination(dest.clone()))?;
        let target = rootfs.join(&rel);
        let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
        let typ = m.typ().as_deref().unwrap_or("");
        let is_bind = typ == "bind" || opts.flags.contains(MsFlags::MS_BIND);
        let data = (!opts.data.is_empty()).then(|| opts.data.join(","));
        let propagation = (!opts.propagation.is_empty()).then(|| opts.propagation.bits());
        if is_bind {
            let src = m.source().clone().unwrap_or_default();
            if src.components().any(|c| c == Component::ParentDir) {
                return Err(MountError::BadSource(src));
            }
            let source = sources.resolve(&src)?;
            let first = opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
            let rest = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
            steps.push(MountStep {
                source: Some(source),
                target,
                fstype: None,
                flags: (first | MsFlags::MS_BIND).bits(),
                data: None,
                bind: true,
                remount_flags: (!rest.is_empty())
                    .then(|| (rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT).bits()),
                propagation,
            });
            continue;
        }
        if typ.is_empty() {
            return Err(MountError::NoType(dest.clone()));
        }
        // Only cgroup v2 exists in the guest.
        let (fstype, source) = match typ {
            "cgroup" | "cgroup2" => ("cgroup2".to_string(), PathBuf::from("cgroup2")),
            t => (
                t.to_string(),
                m.source().clone().unwrap_or_else(|| PathBuf::from(t)),
            ),
        };
        steps.push(MountStep {
            source: Some(source),
            target,
            fstype: Some(fstype),
            flags: opts.flags.bits(),
            data,
            bind: false,
            remount_flags: None,
            propagation,
        });
    }
    Ok(steps)
}

/// Whether the plan puts a fresh filesystem on /dev, which then needs the
/// standard device nodes.
pub fn mounts_dev(steps: &[MountStep], rootfs: &Path) -> bool {
    let dev = rootfs.join("dev");
    steps.iter().any(|s| s.target == dev && !s.bind)
}

/// A device node to create in the container's /dev.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Path inside the container, e.g. /dev/null.
    pub path: PathBuf,
    /// 'c', 'b' or 'p'.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// null, zero, full, random, urandom, tty: what every container gets.
pub fn default_devices() -> Vec<DeviceNode> {
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .into_iter()
    .map(|(name, major, minor)| DeviceNode {
        path: Path::new("/dev").join(name),
        kind: 'c',
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// linux.devices of the spec; unknown kinds and bad paths are rejected.
pub fn spec_devices(
    devs: &[oci_spec::runtime::LinuxDevice],
) -> Result<Vec<DeviceNode>, MountError> {
    let mut out = Vec::new();
    for d in devs {
        if clean_relative(d.path()).is_none() {
            return Err(MountError::BadDestination(d.path().clone()));
        }
        let typ = serde_json::to_value(d.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let kind = match typ.as_str() {
            "c" | "u" => 'c',
            "b" => 'b',
            "p" => 'p',
            // "a" (all) is a cgroup rule's type, not a node's.
            _ => {
                return Err(MountError::BadDeviceType {
                    path: d.path().clone(),
                    typ,
                })
            }
        };
        out.push(DeviceNode {
            path: d.path().clone(),
            kind,
            major: d.major().max(0) as u64,
            minor: d.minor().max(0) as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    Ok(out)
}

/// Symlinks of a standard /dev.
pub const DEV_SYMLINKS: [(&str, &str); 5] = [
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Mount;

    fn mounts(json: &str) -> Vec<Mount> {
        serde_json::from_str(json).expect("mounts json")
    }

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_become_flags_data_and_propagation() {
        let o = parse_options(&opts(&[
            "nosuid",
            "noexec",
            "nodev",
            "mode=755",
            "size=65536k",
            "rslave",
        ]));
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV
        );
        assert_eq!(
            o.data,
            vec!["mode=755".to_string(), "size=65536k".to_string()]
        );
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
    }

    #[test]
    fn later_options_override_earlier_ones() {
        assert_eq!(parse_options(&opts(&["ro", "rw"])).flags, MsFlags::empty());
        assert_eq!(
            parse_options(&opts(&["rw", "ro"])).flags,
            MsFlags::MS_RDONLY
        );
    }

    #[test]
    fn runc_default_mounts_plan_under_the_rootfs() {
        let m = mounts(
            r#"[
            {"destination":"/proc","type":"proc","source":"proc"},
            {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
            {"destination":"/dev/pts","type":"devpts","source":"devpts","options":["nosuid","noexec","newinstance","ptmxmode=0666","mode=0620","gid=5"]},
            {"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["nosuid","noexec","nodev","relatime","ro"]}
        ]"#,
        );
        let root = Path::new("/run/ampoule/c/rootfs");
        let p = plan(&m, root, BindSources::AsWritten).expect("plan");
        assert_eq!(p[0].target, root.join("proc"));
        assert_eq!(p[0].fstype.as_deref(), Some("proc"));
        assert_eq!(p[1].data.as_deref(), Some("mode=755,size=65536k"));
        assert_eq!(
            p[2].data.as_deref(),
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5")
        );
        assert_eq!(
            p[3].fstype.as_deref(),
            Some("cgroup2"),
            "cgroup v1 requests get v2"
        );
        assert!(MsFlags::from_bits_truncate(p[3].flags).contains(MsFlags::MS_RDONLY));
        assert!(mounts_dev(&p, root));
    }

    #[test]
    fn read_only_bind_is_bound_then_remounted_read_only() {
        let m = mounts(
            r#"[{"destination":"/data","type":"bind","source":"/host/data","options":["rbind","ro","nosuid"]}]"#,
        );
        let p = plan(
            &m,
            Path::new("/r"),
            BindSources::Drive(Path::new("/run/ampoule/c/binds")),
        )
        .expect("plan");
        assert_eq!(
            p[0].source.as_deref(),
            Some(Path::new("/run/ampoule/c/binds/host/data"))
        );
        assert_eq!(
            MsFlags::from_bits_truncate(p[0].flags),
            MsFlags::MS_BIND | MsFlags::MS_REC
        );
        let re = MsFlags::from_bits_truncate(p[0].remount_flags.expect("remount"));
        assert!(re.contains(
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REMOUNT
        ));
        assert!(p[0].bind);
    }

    #[test]
    fn shared_bind_sources_come_from_the_shared_filesystem_and_unlisted_ones_are_refused() {
        let m = mounts(
            r#"[{"destination":"/data","type":"bind","source":"/var/lib/kubelet/pods/x/volumes/data","options":["rbind"]},
                {"destination":"/etc/hosts","type":"bind","source":"/h/hosts","options":["rbind","ro"]}]"#,
        );
        let root = Path::new("/run/ampoule/shared");
        let mut map = HashMap::new();
        map.insert(
            "/var/lib/kubelet/pods/x/volumes/data".to_string(),
            "volumes/1a2b".to_string(),
        );
        map.insert("/h/hosts".to_string(), "volumes/3c4d".to_string());
        let p = plan(&m, Path::new("/r"), BindSources::Shared { root, map: &map }).expect("plan");
        assert_eq!(
            p[0].source.as_deref(),
            Some(Path::new("/run/ampoule/shared/volumes/1a2b"))
        );
        assert_eq!(
            p[1].source.as_deref(),
            Some(Path::new("/run/ampoule/shared/volumes/3c4d"))
        );
        map.remove("/h/hosts");
        assert_eq!(
            plan(&m, Path::new("/r"), BindSources::Shared { root, map: &map }).err(),
            Some(MountError::NotShared("/h/hosts".into()))
        );
        for bad in ["../etc", "/etc", "volumes/../../x", ""] {
            map.insert("/h/hosts".to_string(), bad.to_string());
            assert!(
                matches!(
                    plan(&m, Path::new("/r"), BindSources::Shared { root, map: &map }),
                    Err(MountError::BadSource(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plain_bind_has_no_remount() {
        let m = mounts(
            r#"[{"destination":"/etc/hosts","type":"none","source":"/h","options":["bind"]}]"#,
        );
        let p = plan(&m, Path::new("/r"), BindSources::AsWritten).expect("plan");
        assert!(p[0].bind);
        assert_eq!(p[0].remount_flags, None);
        assert_eq!(p[0].source.as_deref(), Some(Path::new("/h")));
    }

    #[test]
    fn destinations_and_sources_cannot_climb_out() {
        let m = mounts(r#"[{"destination":"/../../etc","type":"tmpfs"}]"#);
        assert!(matches!(
            plan(&m, Path::new("/r"), BindSources::AsWritten),
            Err(MountError::BadDestination(_))
        ));
        let m = mounts(r#"[{"destination":"relative","type":"tmpfs"}]"#);
        assert!(matches!(
            plan(&m, Path::new("/r"), BindSources::AsWritten),
            Err(MountError::BadDestination(_))
        ));
        let m = mounts(r#"[{"destination":"/x","type":"bind","source":"/a/../../../etc"}]"#);
        assert!(matches!(
            plan(&m, Path::new("/r"), BindSources::Drive(Path::new("/b"))),
            Err(MountError::BadSource(_))
        ));
    }

    #[test]
    fn standard_devices_include_null_zero_and_tty() {
        let d = default_devices();
        let null = d
            .iter()
            .find(|n| n.path == Path::new("/dev/null"))
            .expect("null");
        assert_eq!(
            (null.kind, null.major, null.minor, null.mode),
            ('c', 1, 3, 0o666)
        );
        assert!(d
            .iter()
            .any(|n| n.path == Path::new("/dev/tty") && n.major == 5));
    }

    #[test]
    fn spec_devices_are_validated() {
        let devs: Vec<oci_spec::runtime::LinuxDevice> = serde_json::from_str(
            r#"[{"path":"/dev/fuse","type":"c","major":10,"minor":229,"fileMode":8630}]"#,
        )
        .expect("devices");
        let d = spec_devices(&devs).expect("ok");
        assert_eq!(d[0].mode, 8630 & 0o7777);
        let bad: Vec<oci_spec::runtime::LinuxDevice> =
            serde_json::from_str(r#"[{"path":"/dev/../etc/x","type":"c","major":1,"minor":3}]"#)
                .expect("devices");
        assert!(spec_devices(&bad).is_err());
        let all: Vec<oci_spec::runtime::LinuxDevice> =
            serde_json::from_str(r#"[{"path":"/dev/x","type":"a","major":1,"minor":3}]"#)
                .expect("devices");
        assert!(matches!(
            spec_devices(&all),
            Err(MountError::BadDeviceType { typ, .. }) if typ == "a"
        ));
    }

    #[test]
    fn the_shared_mount_option_table_lists_options_that_are_not_fs_data() {
        for o in ampoule_agent_api::features::MOUNT_OPTIONS {
            let parsed = parse_options(&opts(&[o]));
            assert!(parsed.data.is_empty(), "{o} is implemented, not fs data");
        }
        for o in ["mode=755", "size=64k"] {
            assert_eq!(parse_options(&opts(&[o])).data, vec![o.to_string()]);
        }
    }
}
