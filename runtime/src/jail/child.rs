//! The part of the jail that runs in the forked child before exec.
//!
//! [`prepare`] turns a [`JailPlan`] into byte strings and numbers in the
//! parent; [`enter`] then only makes system calls (async-signal-safe: no
//! allocation, no locks), in this order: join the memory cgroup, new
//! namespaces, a private tmpfs root holding bind mounts of the plan's paths,
//! `pivot_root`, rlimits, drop every capability (bounding set, ambient,
//! inheritable), setgroups/setresgid/setresuid, `PR_SET_NO_NEW_PRIVS`, and
//! last the seccomp filter, if the process gets one of ours.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use seccompiler::BpfProgram;

use super::plan::{under_bound_dir, Access, JailPlan};
use super::JailError;

/// Namespaces every jailed process gets (names as in `/proc/PID/ns`).
pub const NAMESPACES: [(&str, libc::c_int); 4] = [
    ("mnt", libc::CLONE_NEWNS),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
];

/// One filesystem step inside the new root, paths already prefixed with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Mkdir(CString),
    /// An empty file to bind a file onto.
    Touch(CString),
    Bind {
        src: CString,
        dst: CString,
        /// Flags of the `MS_BIND | MS_REMOUNT` that follows the bind.
        flags: libc::c_ulong,
    },
    Symlink {
        target: CString,
        path: CString,
    },
}

/// A plan ready for the child: nothing left to allocate.
pub struct Prepared {
    pub uid: u32,
    pub gid: u32,
    root: CString,
    pub ops: Vec<Op>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    cgroup_procs: Option<OwnedFd>,
    seccomp: Option<BpfProgram>,
    last_cap: u32,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("root", &self.root)
            .field("ops", &self.ops)
            .field("rlimits", &self.rlimits)
            .field("cgroup", &self.cgroup_procs.is_some())
            .field("seccomp", &self.seccomp.as_ref().map(Vec::len))
            .finish()
    }
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Path(p.to_path_buf()))
}

/// `path` (absolute) inside `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Remount flags for a bind with `access`.
pub fn remount_flags(access: Access) -> libc::c_ulong {
    let base = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
    match access {
        Access::ReadExec => base | libc::MS_RDONLY | libc::MS_NODEV,
        Access::Read => base | libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOEXEC,
        Access::ReadWrite => base | libc::MS_NODEV | libc::MS_NOEXEC,
        Access::Device => base | libc::MS_NOEXEC,
    }
}

/// The filesystem steps of `plan`: mount points created in the tmpfs root
/// (parents first), then each bind, then the links.
pub fn fs_ops(plan: &JailPlan) -> Result<Vec<Op>, JailError> {
    let mut ops = Vec::new();
    let mut made: BTreeSet<PathBuf> = BTreeSet::new();
    for (i, b) in plan.binds.iter().enumerate() {
        if !b.path.is_absolute() || b.path.components().any(|c| c.as_os_str() == "..") {
            return Err(JailError::Path(b.path.clone()));
        }
        // Under a directory bound earlier the mount point already exists.
        if !under_bound_dir(&plan.binds[..i], &b.path) {
            let mut parents: Vec<&Path> = b.path.ancestors().skip(1).collect();
            parents.reverse();
            for p in parents.into_iter().filter(|p| *p != Path::new("/")) {
                if made.insert(p.to_path_buf()) {
                    ops.push(Op::Mkdir(cstr(&inside(&plan.root, p))?));
                }
            }
            let dst = inside(&plan.root, &b.path);
            if b.is_dir {
                if made.insert(b.path.clone()) {
                    ops.push(Op::Mkdir(cstr(&dst)?));
                }
            } else {
                ops.push(Op::Touch(cstr(&dst)?));
            }
        }
        ops.push(Op::Bind {
            src: cstr(&b.path)?,
            dst: cstr(&inside(&plan.root, &b.path))?,
            flags: remount_flags(b.access),
        });
    }
    for l in &plan.symlinks {
        ops.push(Op::Symlink {
            target: cstr(&l.target)?,
            path: cstr(&inside(&plan.root, &l.path))?,
        });
    }
    Ok(ops)
}

/// Everything [`enter`] needs, built in the parent. Creates the (empty)
/// root directory on the host and opens the cgroup's `cgroup.procs`.
pub fn prepare(plan: &JailPlan, seccomp: Option<BpfProgram>) -> Result<Prepared, JailError> {
    let ops = fs_ops(plan)?;
    std::fs::create_dir_all(&plan.root).map_err(|source| JailError::Io {
        what: "creating the jail root",
        path: plan.root.clone(),
        source,
    })?;
    let cgroup_procs = match &plan.cgroup_procs {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(|source| JailError::Io {
                    what: "opening",
                    path: p.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    Ok(Prepared {
        uid: plan.uid,
        gid: plan.gid,
        root: cstr(&plan.root)?,
        ops,
        rlimits: plan.rlimits.iter().map(|r| (r.resource, r.value)).collect(),
        cgroup_procs,
        seccomp,
        last_cap,
    })
}

/// Writes `msg` and the failing step to stderr (the process log) and returns
/// the errno as an error. Only `write(2)`: async-signal-safe.
fn fail(step: &'static str) -> std::io::Error {
    let err = std::io::Error::last_os_error();
    for part in [b"ampoule jail: ".as_slice(), step.as_bytes(), b" failed\n"] {
        // SAFETY: writes a static byte string to fd 2; the result is ignored
        // (nothing better can be done with a failed error message).
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    err
}

fn check(rc: libc::c_int, step: &'static str) -> std::io::Result<()> {
    if rc < 0 {
        Err(fail(step))
    } else {
        Ok(())
    }
}

fn mount(
    src: *const libc::c_char,
    dst: *const libc::c_char,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
    step: &'static str,
) -> std::io::Result<()> {
    // SAFETY: every pointer is null or a NUL-terminated string that outlives
    // the call.
    check(
        unsafe { libc::mount(src, dst, fstype, flags, data.cast()) },
        step,
    )
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Jails the calling (forked, single-threaded) process. Runs between fork
/// and exec: system calls only, no allocation.
pub fn enter(p: &Prepared) -> std::io::Result<()> {
    let null = std::ptr::null::<libc::c_char>();
    if let Some(fd) = &p.cgroup_procs {
        // "0" is the writing process, in cgroup v1 and v2.
        // SAFETY: writes one byte from a static buffer to an open fd.
        let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        check(if n == 1 { 0 } else { -1 }, "joining the memory cgroup")?;
    }
    let flags = NAMESPACES.iter().fold(0, |f, (_, flag)| f | flag);
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(flags) }, "unshare")?;
    // Nothing mounted from here on propagates back to the host.
    mount(
        null,
        c"/".as_ptr(),
        null,
        libc::MS_REC | libc::MS_PRIVATE,
        null,
        "making mounts private",
    )?;
    mount(
        c"tmpfs".as_ptr(),
        p.root.as_ptr(),
        c"tmpfs".as_ptr(),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        c"mode=0755,size=1m,nr_inodes=256".as_ptr(),
        "mounting the root tmpfs",
    )?;
    for op in &p.ops {
        match op {
            Op::Mkdir(d) => {
                // SAFETY: NUL-terminated path.
                let rc = unsafe { libc::mkdir(d.as_ptr(), 0o755) };
                if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                    return Err(fail("creating a mount point directory"));
                }
            }
            Op::Touch(f) => {
                // SAFETY: NUL-terminated path; the fd is closed at once.
                let fd = unsafe {
                    libc::open(
                        f.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    )
                };
                check(fd, "creating a mount point file")?;
                // SAFETY: fd was just opened by us.
                unsafe { libc::close(fd) };
            }
            Op::Bind { src, dst, flags } => {
                mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND,
                    null,
                    "bind mount",
                )?;
                mount(
                    null,
                    dst.as_ptr(),
                    null,
                    *flags,
                    null,
                    "remounting a bind mount",
                )?;
            }
            Op::Symlink { target, path } => {
                let rc = {
                    // SAFETY: NUL-terminated strings.
                    unsafe { libc::symlink(target.as_ptr(), path.as_ptr()) }
                };
                check(rc, "symlink")?;
            }
        }
    }
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chdir(p.root.as_ptr()) }, "chdir to the root")?;
    // pivot_root(".", "."): the old root ends up on top of the new one and
    // is detached right away.
    let rc = {
        // SAFETY: pivot_root takes two NUL-terminated paths.
        unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int }
    };
    check(rc, "pivot_root")?;
    let rc = {
        // SAFETY: NUL-terminated path.
        unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) }
    };
    check(rc, "detaching the old root")?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chdir(c"/".as_ptr()) }, "chdir /")?;
    mount(
        null,
        c"/".as_ptr(),
        null,
        libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        null,
        "making the root read-only",
    )?;
    for (resource, value) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: *value,
            rlim_max: *value,
        };
        // SAFETY: a valid rlimit struct on the stack.
        check(unsafe { libc::setrlimit(*resource, &lim) }, "setrlimit")?;
    }
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o077) };
    for cap in 0..=p.last_cap {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(fail("dropping the capability bounding set"));
        }
    }
    let rc = {
        // SAFETY: prctl with integer arguments.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        }
    };
    check(rc, "clearing ambient capabilities")?;
    // SAFETY: an empty group list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
    // SAFETY: integer arguments.
    check(unsafe { libc::setresgid(p.gid, p.gid, p.gid) }, "setresgid")?;
    // SAFETY: integer arguments.
    check(unsafe { libc::setresuid(p.uid, p.uid, p.uid) }, "setresuid")?;
    // setresuid cleared the permitted and effective sets; clear the
    // inheritable one too.
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    let rc = {
        // SAFETY: capset reads one header and two data structs, all on the stack.
        unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            ) as libc::c_int
        }
    };
    check(rc, "capset")?;
    let rc = {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }
    };
    check(rc, "PR_SET_NO_NEW_PRIVS")?;
    // Changing credentials cleared the parent-death signal.
    let rc = {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }
    };
    check(rc, "PR_SET_PDEATHSIG")?;
    if let Some(filter) = &p.seccomp {
        let prog = libc::sock_fprog {
            len: filter.len() as libc::c_ushort,
            // seccompiler's sock_filter is #[repr(C)] with libc's layout.
            filter: filter.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        // SAFETY: prog points at the filter, which outlives the call (the
        // kernel copies it).
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
                0,
                0,
            )
        };
        check(rc, "installing the seccomp filter")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::plan::{Bind, Symlink};

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    fn plan(binds: Vec<Bind>) -> JailPlan {
        JailPlan {
            process: crate::jail::plan::JailedProcess::VhostVsock,
            uid: 1,
            gid: 1,
            root: "/r".into(),
            binds,
            symlinks: vec![Symlink {
                path: "/lib".into(),
                target: "usr/lib".into(),
            }],
            rlimits: vec![],
            cgroup_procs: None,
        }
    }

    fn bind(path: &str, access: Access, is_dir: bool) -> Bind {
        Bind {
            path: path.into(),
            access,
            is_dir,
        }
    }

    #[test]
    fn mount_points_are_made_parents_first_and_not_under_bound_dirs() {
        let ops = fs_ops(&plan(vec![
            bind("/usr", Access::ReadExec, true),
            bind("/run/vm/s1", Access::ReadWrite, true),
            bind("/dev/null", Access::Device, false),
            bind("/usr/share/k", Access::Read, false),
        ]))
        .unwrap();
        let rw = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
        assert_eq!(
            ops,
            [
                Op::Mkdir(c("/r/usr")),
                Op::Bind {
                    src: c("/usr"),
                    dst: c("/r/usr"),
                    flags: rw | libc::MS_RDONLY | libc::MS_NODEV
                },
                Op::Mkdir(c("/r/run")),
                Op::Mkdir(c("/r/run/vm")),
                Op::Mkdir(c("/r/run/vm/s1")),
                Op::Bind {
                    src: c("/run/vm/s1"),
                    dst: c("/r/run/vm/s1"),
                    flags: rw | libc::MS_NODEV | libc::MS_NOEXEC
                },
                Op::Mkdir(c("/r/dev")),
                Op::Touch(c("/r/dev/null")),
                Op::Bind {
                    src: c("/dev/null"),
                    dst: c("/r/dev/null"),
                    flags: rw | libc::MS_NOEXEC
                },
                Op::Bind {
                    src: c("/usr/share/k"),
                    dst: c("/r/usr/share/k"),
                    flags: rw | libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOEXEC
                },
                Op::Symlink {
                    target: c("usr/lib"),
                    path: c("/r/lib")
                },
            ]
        );
    }

    #[test]
    fn relative_or_dotdot_paths_are_refused() {
        for bad in ["relative/k", "/a/../etc/shadow"] {
            let err = fs_ops(&plan(vec![bind(bad, Access::Read, false)])).unwrap_err();
            assert!(matches!(err, JailError::Path(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn only_devices_keep_device_access_and_only_exec_binds_allow_programs() {
        for a in [Access::ReadExec, Access::Read, Access::ReadWrite] {
            assert_ne!(remount_flags(a) & libc::MS_NODEV, 0, "{a:?}");
        }
        assert_eq!(remount_flags(Access::Device) & libc::MS_NODEV, 0);
        for a in [Access::Read, Access::ReadWrite, Access::Device] {
            assert_ne!(remount_flags(a) & libc::MS_NOEXEC, 0, "{a:?}");
        }
        assert_eq!(remount_flags(Access::ReadExec) & libc::MS_NOEXEC, 0);
        assert_eq!(remount_flags(Access::ReadWrite) & libc::MS_RDONLY, 0);
    }
}
