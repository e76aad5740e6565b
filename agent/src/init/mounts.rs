//! The early mounts of PID 1.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::syscall::Syscall;

/// One mount to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyMount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

/// The guest's pseudo filesystems, in mount order (parents first).
pub fn early_mounts() -> Vec<EarlyMount> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    vec![
        EarlyMount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        EarlyMount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        EarlyMount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        EarlyMount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        },
        EarlyMount {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        EarlyMount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        EarlyMount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
        EarlyMount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
    ]
}

/// Performs `plan`; a target that is already mounted (EBUSY) is fine.
pub fn apply(sys: &dyn Syscall, plan: &[EarlyMount]) -> io::Result<()> {
    for m in plan {
        let target = PathBuf::from(m.target);
        sys.mkdir_all(&target)?;
        match sys.mount(
            Some(Path::new(m.source)),
            &target,
            Some(m.fstype),
            m.flags,
            m.data,
        ) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("mount {} on {}: {e}", m.fstype, m.target),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, Recording};

    #[test]
    fn early_mounts_cover_every_pseudo_filesystem_the_guest_needs() {
        let targets: Vec<&str> = early_mounts().iter().map(|m| m.target).collect();
        for t in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/sys/fs/cgroup",
            "/run",
            "/tmp",
        ] {
            assert!(targets.contains(&t), "{t} missing");
        }
    }

    #[test]
    fn parents_are_mounted_before_children() {
        let plan = early_mounts();
        for (i, m) in plan.iter().enumerate() {
            for later in &plan[i + 1..] {
                assert!(
                    !Path::new(m.target).starts_with(later.target),
                    "{} mounted before its parent {}",
                    m.target,
                    later.target
                );
            }
        }
    }

    #[test]
    fn devpts_is_a_new_instance_with_a_world_usable_ptmx() {
        let plan = early_mounts();
        let pts = plan.iter().find(|m| m.target == "/dev/pts");
        let data = pts.and_then(|m| m.data).unwrap_or_default();
        assert!(data.contains("newinstance"));
        assert!(data.contains("ptmxmode=0666"));
    }

    #[test]
    fn apply_creates_each_target_then_mounts_it() {
        let rec = Recording::default();
        apply(&rec, &early_mounts()[..1]).expect("apply");
        assert_eq!(
            rec.calls(),
            vec![
                Call::MkdirAll("/proc".into()),
                Call::Mount {
                    source: Some("proc".into()),
                    target: "/proc".into(),
                    fstype: Some("proc".into()),
                    flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    data: None,
                }
            ]
        );
    }
}
