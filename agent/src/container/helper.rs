//! `ampoule-agent __container-init`: the single-threaded helper that turns
//! into a container process. See `process.rs` for the protocol.
//!
//! It joins the cgroup, enters (setns) or creates (unshare) the namespaces,
//! then forks the process with CLONE_PARENT (so the agent is its parent and
//! a new pid namespace has it as pid 1), reports the pid and exits. The
//! process sets up mounts, runs the createContainer hooks, pivot_root, the
//! terminal, rlimits, user and capabilities, reports Ready, waits for
//! Start, runs the startContainer hooks and execs (hooks: `hooks.rs`).

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

use super::caps;
use super::hooks::{GuestHook, GuestHooks};
use super::mounts::{default_devices, DeviceNode, MountStep, DEV_SYMLINKS};
use super::process::{
    path_of, recv, send, CreateSetup, HelperConfig, IdMap, IdMappings, Msg, NsPlan, ProcessPlan,
    Setup, EXTRA_FDS_AT, SYNC_FD,
};
use super::seccomp;
use crate::syscall::{Linux, Syscall};

type R<T> = Result<T, String>;

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> R<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Entry point of the helper; never returns.
pub fn main() -> ! {
    let sock = SYNC_FD;
    let err = match run(sock) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = send(sock, &Msg::Error { message: err }, None);
    std::process::exit(1);
}

fn run(sock: RawFd) -> R<Infallible> {
    let cfg: HelperConfig = match recv(sock) {
        Ok(Some((Msg::Config(c), _))) => *c,
        Ok(other) => return Err(format!("helper expected its config, got {other:?}")),
        Err(e) => return Err(format!("helper reading its config: {e}")),
    };
    // Compiled before anything changes; installed late (see Seccomp).
    let filter = match &cfg.seccomp {
        Some(plan) => Some(Seccomp {
            prog: seccomp::compile(plan).map_err(|e| e.to_string())?,
            flags: plan.flags,
        }),
        None => None,
    };
    // The process (not this helper) joins the cgroup, through a file opened
    // now, before the namespaces change what paths mean: the helper never
    // counts against pids.max nor sits in a frozen cgroup.
    let procs = match &cfg.cgroup {
        Some(cg) => Some(ctx(
            std::fs::OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs")),
            || format!("opening cgroup {}", cg.display()),
        )?),
        None => None,
    };
    let (init, cgroup_ns) = match &cfg.setup {
        Setup::Create(c) => (true, enter_new_namespaces(c, &cfg.process.cwd, sock)?),
        Setup::Exec { init_pid } => (false, join_namespaces(*init_pid)?),
    };
    // SAFETY: raw clone(2) without a new stack behaves like fork(2); this
    // process is single-threaded, so the child may run any code.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!("clone: {}", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        let _ = send(sock, &Msg::Pid { pid: pid as i32 }, None);
        std::process::exit(0);
    }
    // The container process.
    if let Some(mut f) = procs {
        use std::io::Write;
        ctx(f.write_all(b"0"), || {
            "joining the container cgroup".to_string()
        })?;
    }
    // A cgroup namespace is entered once inside the cgroup, so that the
    // cgroup is its root.
    match cgroup_ns {
        Some(CgroupNs::New) => ctx(nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP), || {
            "unshare cgroup namespace".to_string()
        })?,
        Some(CgroupNs::Join(f)) => ctx(nix::sched::setns(f, CloneFlags::CLONE_NEWCGROUP), || {
            "setns cgroup namespace".to_string()
        })?,
        None => {}
    }
    if let Setup::Create(c) = &cfg.setup {
        let phase = if new_user_namespace(&c.namespaces) {
            FsPhase::InUserNs
        } else {
            FsPhase::All
        };
        setup_container(c, &cfg.process.cwd, phase)?;
    }
    let (exe, env) = setup_process(&cfg.process, init, sock, filter.as_ref())?;
    let start_hooks = match &cfg.setup {
        Setup::Create(c) => Some(&c.hooks),
        Setup::Exec { .. } => None,
    };
    exec(
        sock,
        &cfg.process,
        exe,
        &env,
        filter.as_ref(),
        start_hooks,
        cfg.extra_fds,
    )
}

/// The container's seccomp filter. As runc: without no_new_privs installing
/// it needs CAP_SYS_ADMIN, so it goes in before the uid and capabilities
/// change; with no_new_privs, as late as possible, right before execve, so
/// that the helper's own syscalls are not filtered.
struct Seccomp {
    prog: Vec<libc::sock_filter>,
    flags: u32,
}

impl Seccomp {
    fn install(&self) -> R<()> {
        seccomp::install(&self.prog, self.flags).map_err(|e| e.to_string())
    }
}

/// A cgroup namespace for the process, entered after it joined its cgroup.
enum CgroupNs {
    New,
    Join(std::fs::File),
}

/// Creates (unshare) or joins (setns by path) the container's namespaces,
/// always with a new mount namespace; the cgroup namespace is returned for
/// the process to enter.
///
/// Namespaces given by path are joined first, while this helper is still
/// privileged in the guest's own user namespace (which owns them). Then the
/// user namespace: joined, or made, and its ids mapped by the agent (asked
/// on `sock`; a process may not map other ids into its own namespace).
/// The namespaces made after it are owned by it, so the container's root
/// can mount its /proc, /sys and /dev in them.
fn enter_new_namespaces(c: &CreateSetup, cwd: &Path, sock: RawFd) -> R<Option<CgroupNs>> {
    let namespaces = &c.namespaces[..];
    let id_mappings = c.id_mappings.as_ref();
    let mut new = CloneFlags::CLONE_NEWNS;
    let mut cgroup_ns = None;
    let mut user = None;
    for ns in namespaces {
        let flag = CloneFlags::from_bits_truncate(ns.flag);
        if flag == CloneFlags::CLONE_NEWCGROUP {
            cgroup_ns = Some(match &ns.path {
                Some(p) => CgroupNs::Join(ctx(std::fs::File::open(p), || {
                    format!("namespace {}", p.display())
                })?),
                None => CgroupNs::New,
            });
            continue;
        }
        if flag == CloneFlags::CLONE_NEWUSER {
            user = Some(ns);
            continue;
        }
        match &ns.path {
            Some(p) => {
                let f = ctx(std::fs::File::open(p), || {
                    format!("namespace {}", p.display())
                })?;
                ctx(nix::sched::setns(f, flag), || {
                    format!("setns {}", p.display())
                })?;
            }
            None => new |= flag,
        }
    }
    match user.map(|u| &u.path) {
        None => {}
        Some(Some(p)) => {
            let f = ctx(std::fs::File::open(p), || {
                format!("namespace {}", p.display())
            })?;
            ctx(nix::sched::setns(f, CloneFlags::CLONE_NEWUSER), || {
                format!("setns {}", p.display())
            })?;
        }
        Some(None) => {
            // The container's root is set up while this helper is still
            // privileged in the guest's own user namespace, in a mount
            // namespace of that one: a mount namespace made after the new
            // user namespace holds the agent's root as a locked mount,
            // which pivot_root could not take away. The mounts that belong
            // to the namespaces made next (proc, ...) come after.
            ctx(nix::sched::unshare(CloneFlags::CLONE_NEWNS), || {
                "unshare mount namespace".to_string()
            })?;
            let mut create_hooks = || {
                c.hooks
                    .run(GuestHook::CreateContainer, Some(&c.rootfs))
                    .map_err(|e| e.to_string())
            };
            setup_filesystem(&Linux, c, cwd, &mut create_hooks, FsPhase::BeforeUserNs)?;
            ctx(nix::sched::unshare(CloneFlags::CLONE_NEWUSER), || {
                "unshare user namespace".to_string()
            })?;
            ctx(send(sock, &Msg::MapIds, None), || {
                "asking for the user namespace's ID mappings".to_string()
            })?;
            match recv(sock) {
                Ok(Some((Msg::IdsMapped, _))) => {}
                other => {
                    return Err(format!(
                        "waiting for the user namespace's ID mappings: {other:?}"
                    ))
                }
            }
            // Root of the new namespace, when it maps a root: what this
            // helper creates from now on (the container's /dev) is owned
            // by an id the namespace knows (an unmapped creator gets
            // EOVERFLOW). The process's own user is set later.
            become_mapped_root(id_mappings)?;
        }
    }
    ctx(nix::sched::unshare(new), || {
        "unshare namespaces".to_string()
    })?;
    if new.contains(CloneFlags::CLONE_NEWNET) {
        // As runc: a new network namespace gets its loopback up.
        loopback_up()?;
    }
    Ok(cgroup_ns)
}

/// Switches to uid and gid 0 of the new user namespace where `maps` map
/// them; capabilities in the namespace stay.
fn become_mapped_root(maps: Option<&IdMappings>) -> R<()> {
    let Some(m) = maps else { return Ok(()) };
    let root = |list: &[IdMap]| list.iter().any(|x| x.container_id == 0);
    if root(&m.gid) {
        let g = nix::unistd::Gid::from_raw(0);
        ctx(nix::unistd::setresgid(g, g, g), || {
            "becoming gid 0 of the user namespace".to_string()
        })?;
    }
    if root(&m.uid) {
        let u = nix::unistd::Uid::from_raw(0);
        ctx(nix::unistd::setresuid(u, u, u), || {
            "becoming uid 0 of the user namespace".to_string()
        })?;
    }
    Ok(())
}

fn loopback_up() -> R<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = ctx(
        socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        ),
        || "socket for lo".to_string(),
    )?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS on our socket with an ifreq that
    // lives on this frame; the flags member is the one these ioctls use.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(format!("lo flags: {}", std::io::Error::last_os_error()));
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(format!("lo up: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Enters the namespaces of `init_pid` that differ from ours (mount last,
/// after every other namespace file is open); its cgroup namespace is
/// returned for the process to enter.
fn join_namespaces(init_pid: i32) -> R<Option<CgroupNs>> {
    use std::os::unix::fs::MetadataExt;
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        // After the namespaces the guest's user namespace owns (a pod's
        // network), before those the container's owns.
        ("user", CloneFlags::CLONE_NEWUSER),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut open = Vec::new();
    for (name, flag) in kinds {
        let theirs = format!("/proc/{init_pid}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let (Ok(t), Ok(o)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            continue;
        };
        if t.ino() == o.ino() && t.dev() == o.dev() {
            continue;
        }
        let f = ctx(std::fs::File::open(&theirs), || format!("open {theirs}"))?;
        open.push((name, f, flag));
    }
    let mut cgroup_ns = None;
    for (name, f, flag) in open {
        if flag == CloneFlags::CLONE_NEWCGROUP {
            cgroup_ns = Some(CgroupNs::Join(f));
            continue;
        }
        ctx(nix::sched::setns(f, flag), || {
            format!("setns {name} of pid {init_pid}")
        })?;
    }
    Ok(cgroup_ns)
}

/// Whether `namespaces` make a new user namespace.
fn new_user_namespace(namespaces: &[NsPlan]) -> bool {
    namespaces
        .iter()
        .any(|n| n.flag == libc::CLONE_NEWUSER && n.path.is_none())
}

fn setup_container(setup: &CreateSetup, cwd: &Path, phase: FsPhase) -> R<()> {
    // createContainer hooks: in the container's namespaces, chrooted into
    // its root (their path is the container's, see hooks.rs).
    let mut create_hooks = || {
        setup
            .hooks
            .run(GuestHook::CreateContainer, Some(&setup.rootfs))
            .map_err(|e| e.to_string())
    };
    setup_filesystem(&Linux, setup, cwd, &mut create_hooks, phase)?;
    if let Some(h) = &setup.hostname {
        ctx(nix::unistd::sethostname(h), || format!("sethostname {h:?}"))?;
    }
    if let Some(d) = &setup.domainname {
        let c = ctx(CString::new(d.as_bytes()), || "domainname".to_string())?;
        // SAFETY: setdomainname with a valid buffer and its length.
        if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
            return Err(format!(
                "setdomainname: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The container's filesystem, in its new mount namespace: mounts (their
/// targets created as needed), /dev, `before_pivot` (the createContainer
/// hooks: the runtime spec runs them after the mounts, before pivot_root),
/// pivot_root, sysctls, masked and read-only paths, the init's cwd, and
/// last the read-only root. As with
/// runc, everything that creates a file or directory in the rootfs (mount
/// targets and their parents, device nodes, /dev symlinks, the cwd) runs
/// before `/` is remounted read-only: with `root.readonly` those land in
/// the overlay's tmpfs upper dir, which is writable until then.
pub(crate) fn setup_filesystem(
    sys: &dyn Syscall,
    setup: &CreateSetup,
    cwd: &Path,
    before_pivot: &mut dyn FnMut() -> R<()>,
    phase: FsPhase,
) -> R<()> {
    let CreateSetup {
        rootfs,
        mounts,
        populate_dev,
        devices,
        namespaces,
        ..
    } = setup;
    ctx(
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        ),
        || "making / private".to_string(),
    )?;
    for m in mounts {
        let late = of_a_new_namespace(m, namespaces);
        match phase {
            FsPhase::All => do_mount(sys, m)?,
            FsPhase::BeforeUserNs if !late => {
                do_mount(sys, &owned_by_namespace_root(m, setup.id_mappings.as_ref()))?
            }
            // Its target is made now, while this helper may still write
            // where the container's root may not (the image's directories);
            // a proc or sysfs goes there too (see visible_under).
            FsPhase::BeforeUserNs => {
                ctx(sys.mkdir_all(&m.target), || {
                    format!("mkdir {}", m.target.display())
                })?;
                if let Some(under) = visible_under(m) {
                    do_mount(sys, &under)?;
                }
            }
            FsPhase::InUserNs if late => do_mount(sys, &in_new_root(m, rootfs))?,
            FsPhase::InUserNs => {}
        }
    }
    if phase == FsPhase::InUserNs {
        // The root was finished before the user namespace (root_last).
        return finish_filesystem(sys, setup);
    }
    if *populate_dev {
        for d in default_devices() {
            make_device(sys, rootfs, &d)?;
        }
        let dev = rootfs.join("dev");
        for (target, name) in DEV_SYMLINKS {
            let link = dev.join(name);
            ctx(sys.symlink(Path::new(target), &link), || {
                format!("symlink {}", link.display())
            })?;
        }
    }
    for d in devices {
        make_device(sys, rootfs, d)?;
    }
    before_pivot()?;
    ctx(sys.pivot_root(rootfs), || {
        format!("pivot_root to {}", rootfs.display())
    })?;
    if phase == FsPhase::BeforeUserNs {
        // A user namespace could not remount its locked root read-only:
        // the root is finished now.
        return root_last(sys, setup, cwd);
    }
    finish_filesystem(sys, setup)?;
    root_last(sys, setup, cwd)
}

/// Which part of the container's filesystem [`setup_filesystem`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsPhase {
    /// Everything, in the container process.
    All,
    /// With a new user namespace, before it is made: the mounts that
    /// belong to no namespace made after it, /dev, the createContainer
    /// hooks and pivot_root.
    BeforeUserNs,
    /// With a new user namespace, in the container process (in the new
    /// root): the mounts of its new namespaces, then the rest.
    InUserNs,
}

/// Whether `m` is a filesystem of a namespace the container makes (proc of
/// its pid namespace, mqueue of its IPC one, its devpts, sysfs of a new
/// network namespace, the cgroup filesystem of a new cgroup namespace):
/// with a new user namespace those are mounted from inside it.
fn of_a_new_namespace(m: &MountStep, namespaces: &[NsPlan]) -> bool {
    let new = |flag: i32| {
        namespaces
            .iter()
            .any(|n| n.flag == flag && n.path.is_none())
    };
    match m.fstype.as_deref() {
        Some("proc") | Some("mqueue") | Some("devpts") => true,
        Some("sysfs") => new(libc::CLONE_NEWNET),
        Some("cgroup") | Some("cgroup2") => new(libc::CLONE_NEWCGROUP),
        _ => false,
    }
}

/// A tmpfs mounted for a container with a new user namespace, before that
/// namespace exists, is owned as if mounted from inside it: by the ids its
/// root maps to (or the ids its `uid=`/`gid=` options name, mapped).
fn owned_by_namespace_root(m: &MountStep, maps: Option<&IdMappings>) -> MountStep {
    let (Some(maps), Some("tmpfs")) = (maps, m.fstype.as_deref()) else {
        return m.clone();
    };
    let host = |list: &[IdMap], id: u32| {
        list.iter().find_map(|x| {
            let off = id.checked_sub(x.container_id)?;
            (off < x.size).then(|| x.host_id + off)
        })
    };
    let mut opts: Vec<String> = m
        .data
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect();
    for (key, list) in [("uid=", &maps.uid), ("gid=", &maps.gid)] {
        let given = opts.iter().position(|o| o.starts_with(key));
        let id = given
            .and_then(|i| opts[i][key.len()..].parse::<u32>().ok())
            .unwrap_or(0);
        if let Some(h) = host(list, id) {
            let o = format!("{key}{h}");
            match given {
                Some(i) => opts[i] = o,
                None => opts.push(o),
            }
        }
    }
    MountStep {
        data: Some(opts.join(",")),
        ..m.clone()
    }
}

/// The kernel lets a user namespace mount a new proc or sysfs only where
/// the mount namespace already shows one whole (`mount_too_revealing`);
/// after pivot_root this one has none. So one is mounted first, from the
/// guest's own namespaces, where the container's goes on top of it: a
/// proc that shows only the processes of the caller's own uid
/// (`hidepid=2`: the container's), a sysfs of the guest's. Without
/// nosuid, noexec, nodev or ro: the kernel requires the new mount to be
/// at least as strict as the one it covers.
fn visible_under(m: &MountStep) -> Option<MountStep> {
    let data = match m.fstype.as_deref() {
        Some("proc") => Some("hidepid=2".to_string()),
        Some("sysfs") => None,
        _ => return None,
    };
    Some(MountStep {
        source: m.source.clone(),
        target: m.target.clone(),
        fstype: m.fstype.clone(),
        flags: 0,
        data,
        bind: false,
        remount_flags: None,
        propagation: None,
    })
}

/// `m` with its target where it is once the root is `rootfs`.
fn in_new_root(m: &MountStep, rootfs: &Path) -> MountStep {
    let rel = m.target.strip_prefix(rootfs).unwrap_or(&m.target);
    MountStep {
        target: Path::new("/").join(rel),
        ..m.clone()
    }
}

/// What follows pivot_root: sysctls, masked and read-only paths.
fn finish_filesystem(sys: &dyn Syscall, setup: &CreateSetup) -> R<()> {
    let CreateSetup {
        masked_paths,
        readonly_paths,
        sysctl,
        ..
    } = setup;
    // As runc: sysctls (checked by the agent to be of the container's own
    // namespaces) through the container's /proc, before /proc/sys is made
    // read-only.
    for (k, v) in sysctl {
        if k.contains("..") {
            return Err(format!("invalid sysctl {k:?}"));
        }
        let path = Path::new("/proc/sys").join(k.replace('.', "/"));
        ctx(sys.write_file(&path, v), || format!("sysctl {k}"))?;
    }
    for p in masked_paths {
        mask(sys, p)?;
    }
    for p in readonly_paths {
        readonly(sys, p)?;
    }
    Ok(())
}

/// Last in the new root: the init's cwd, then the read-only root.
fn root_last(sys: &dyn Syscall, setup: &CreateSetup, cwd: &Path) -> R<()> {
    // As runc: the init's cwd is created when the image lacks it (inside
    // the new root, so `..` and symlinks stay in it). A failure shows up
    // as the chdir's.
    if sys.is_dir(cwd).is_err() {
        let _ = sys.mkdir_all(cwd);
    }
    if setup.readonly_root {
        ctx(
            sys.mount(
                None,
                Path::new("/"),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            ),
            || "remounting / read-only".to_string(),
        )?;
    }
    Ok(())
}

/// Creates the target of a mount (a file for a bind of a file, else a
/// directory; parents included) and mounts it.
fn do_mount(sys: &dyn Syscall, m: &MountStep) -> R<()> {
    let mkdir = |d: &Path| ctx(sys.mkdir_all(d), || format!("mkdir {}", d.display()));
    if m.bind {
        let src = m.source.as_deref().unwrap_or(Path::new(""));
        let is_dir = ctx(sys.is_dir(src), || {
            format!("bind mount source {}", src.display())
        })?;
        if is_dir {
            mkdir(&m.target)?;
        } else {
            if let Some(parent) = m.target.parent() {
                mkdir(parent)?;
            }
            ctx(sys.create_file(&m.target), || {
                format!("create {}", m.target.display())
            })?;
        }
    } else {
        mkdir(&m.target)?;
    }
    let mounted = sys.mount(
        m.source.as_deref(),
        &m.target,
        m.fstype.as_deref(),
        MsFlags::from_bits_truncate(m.flags),
        m.data.as_deref(),
    );
    let guest_copy = match m.fstype.as_deref() {
        Some("sysfs") => Some(Path::new("/sys")),
        Some("cgroup") | Some("cgroup2") => Some(Path::new("/sys/fs/cgroup")),
        _ => None,
    };
    let mounted = match (mounted, guest_copy) {
        // A new sysfs needs the network namespace to be the user
        // namespace's own, a new cgroup filesystem the cgroup namespace;
        // in a user namespace without them (a pod's network joined, no
        // cgroup namespace) they are not: the guest's own is bound instead,
        // as runc does, read-only when asked.
        (Err(e), Some(source)) if e.raw_os_error() == Some(libc::EPERM) => {
            let flags = MsFlags::from_bits_truncate(m.flags);
            sys.mount(
                Some(source),
                &m.target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .and_then(|()| {
                if flags.contains(MsFlags::MS_RDONLY) {
                    sys.mount(
                        None,
                        &m.target,
                        None,
                        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                        None,
                    )
                } else {
                    Ok(())
                }
            })
        }
        (r, _) => r,
    };
    ctx(mounted, || {
        format!(
            "mount {} on {} ({})",
            m.fstype.as_deref().unwrap_or("bind"),
            m.target.display(),
            m.data.as_deref().unwrap_or("")
        )
    })?;
    if let Some(f) = m.remount_flags {
        ctx(
            sys.mount(None, &m.target, None, MsFlags::from_bits_truncate(f), None),
            || format!("remount {}", m.target.display()),
        )?;
    }
    if let Some(p) = m.propagation {
        ctx(
            sys.mount(None, &m.target, None, MsFlags::from_bits_truncate(p), None),
            || format!("propagation of {}", m.target.display()),
        )?;
    }
    Ok(())
}

fn make_device(sys: &dyn Syscall, rootfs: &Path, d: &DeviceNode) -> R<()> {
    let rel = d.path.strip_prefix("/").unwrap_or(&d.path);
    let path = rootfs.join(rel);
    if let Some(parent) = path.parent() {
        ctx(sys.mkdir_all(parent), || {
            format!("mkdir {}", parent.display())
        })?;
    }
    match sys.make_device(&path, d) {
        // In a user namespace mknod is not allowed: the guest's own node
        // of that path is bound in, as runc does.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            ctx(sys.create_file(&path), || {
                format!("create {}", path.display())
            })?;
            ctx(
                sys.mount(Some(&d.path), &path, None, MsFlags::MS_BIND, None),
                || format!("binding {} (mknod is not allowed here)", d.path.display()),
            )
        }
        r => ctx(r, || format!("mknod {}", d.path.display())),
    }
}

fn mask(sys: &dyn Syscall, p: &Path) -> R<()> {
    let Ok(is_dir) = sys.is_dir(p) else {
        return Ok(());
    };
    let r = if is_dir {
        sys.mount(
            Some(Path::new("tmpfs")),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        )
    } else {
        sys.mount(
            Some(Path::new("/dev/null")),
            p,
            None,
            MsFlags::MS_BIND,
            None,
        )
    };
    ctx(r, || format!("masking {}", p.display()))
}

fn readonly(sys: &dyn Syscall, p: &Path) -> R<()> {
    if sys.is_dir(p).is_err() {
        return Ok(());
    }
    ctx(
        sys.mount(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None),
        || format!("read-only bind of {}", p.display()),
    )?;
    ctx(
        sys.mount(
            None,
            p,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        ),
        || format!("read-only remount of {}", p.display()),
    )
}

/// Finds the executable the way execvp would, inside the container.
fn resolve(args0: &str, env: &[String]) -> R<PathBuf> {
    let ok = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if args0.contains('/') {
        let p = PathBuf::from(args0);
        return if ok(&p) {
            Ok(p)
        } else {
            Err(format!(
                "executable {args0:?} not found or not executable in the container"
            ))
        };
    }
    for dir in path_of(env).split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(args0);
        if ok(&p) {
            return Ok(p);
        }
    }
    Err(format!(
        "executable {args0:?} not found in $PATH ({}) of the container",
        path_of(env)
    ))
}

fn setup_terminal(p: &ProcessPlan) -> R<OwnedFd> {
    let master = ctx(
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC),
        || "opening /dev/ptmx".to_string(),
    )?;
    ctx(nix::pty::grantpt(&master), || "grantpt".to_string())?;
    ctx(nix::pty::unlockpt(&master), || "unlockpt".to_string())?;
    let name = ctx(nix::pty::ptsname_r(&master), || "ptsname".to_string())?;
    let _ = nix::unistd::setsid();
    let slave = ctx(
        nix::fcntl::open(name.as_str(), OFlag::O_RDWR, Mode::empty()),
        || format!("opening {name}"),
    )?;
    // SAFETY: TIOCSCTTY on a tty fd we own; integer argument.
    unsafe {
        libc::ioctl(slave, libc::TIOCSCTTY, 0);
    }
    if let Some((rows, cols)) = p.console_size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize that lives on this frame.
        unsafe {
            libc::ioctl(slave, libc::TIOCSWINSZ, &ws);
        }
    }
    for fd in 0..3 {
        ctx(nix::unistd::dup2(slave, fd), || "dup2 pty".to_string())?;
    }
    if slave > 2 {
        let _ = nix::unistd::close(slave);
    }
    // posix_openpt gives a PtyMaster; keep it as a plain fd.
    // SAFETY: into_raw_fd hands over ownership of a valid fd.
    Ok(unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) })
}

/// Terminal, oom score, rlimits, cwd, user, capabilities, umask; then
/// Ready. Returns the executable's path.
fn setup_process(
    p: &ProcessPlan,
    init: bool,
    sock: RawFd,
    filter: Option<&Seccomp>,
) -> R<(PathBuf, Vec<String>)> {
    let master = if p.terminal {
        Some(setup_terminal(p)?)
    } else {
        if init {
            let _ = nix::unistd::setsid();
        }
        None
    };
    if let Some(adj) = p.oom_score_adj {
        ctx(
            std::fs::write("/proc/self/oom_score_adj", adj.to_string()),
            || "oom_score_adj".to_string(),
        )?;
    }
    for &(res, soft, hard) in &p.rlimits {
        let rl = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads an rlimit on this frame.
        if unsafe { libc::setrlimit(res as libc::__rlimit_resource_t, &rl) } != 0 {
            return Err(format!(
                "setrlimit {res}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    ctx(nix::unistd::chdir(&p.cwd), || {
        format!("cwd {}", p.cwd.display())
    })?;
    let exe = resolve(&p.args[0], &p.env)?;
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        env.push(format!("HOME={}", home_of(&passwd, p.uid)));
    }
    if let Some(f) = filter.filter(|_| !p.no_new_privileges) {
        f.install()?;
    }
    if let Some(c) = &p.caps {
        ctx(caps::drop_bounding(c.bounding), || {
            "dropping bounding capabilities".to_string()
        })?;
    }
    // Keep the permitted set across the uid change only when the spec
    // says which capabilities the process gets.
    if p.caps.is_some() {
        // SAFETY: prctl with integer arguments only.
        unsafe {
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        }
    }
    let gids: Vec<nix::unistd::Gid> = p
        .additional_gids
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    ctx(nix::unistd::setgroups(&gids), || "setgroups".to_string())?;
    let gid = nix::unistd::Gid::from_raw(p.gid);
    ctx(nix::unistd::setresgid(gid, gid, gid), || {
        format!("setgid {}", p.gid)
    })?;
    let uid = nix::unistd::Uid::from_raw(p.uid);
    ctx(nix::unistd::setresuid(uid, uid, uid), || {
        format!("setuid {}", p.uid)
    })?;
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
    }
    if let Some(c) = &p.caps {
        ctx(caps::apply(c), || "setting capabilities".to_string())?;
    }
    if p.no_new_privileges {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(p.umask.unwrap_or(0o022)));
    send(sock, &Msg::Ready, master.as_ref().map(|m| m.as_raw_fd())).map_err(|e| e.to_string())?;
    drop(master);
    Ok((exe, env))
}

/// Waits for Start, runs the startContainer hooks of a new container
/// (`start_hooks`; an exec has none) and execs the process.
fn exec(
    sock: RawFd,
    p: &ProcessPlan,
    exe: PathBuf,
    env: &[String],
    filter: Option<&Seccomp>,
    start_hooks: Option<&GuestHooks>,
    extra_fds: u32,
) -> R<Infallible> {
    match recv(sock) {
        Ok(Some((Msg::Start, _))) => {}
        Ok(None) => std::process::exit(1),
        Ok(Some((other, _))) => return Err(format!("expected Start, got {other:?}")),
        Err(e) => return Err(e.to_string()),
    }
    // startContainer hooks: after Start, before the user's program, in the
    // container (after pivot_root) as the process is now (user,
    // capabilities, limits), before a no_new_privs seccomp filter. A
    // failure is the start's error (sent as the exec's would be).
    if let Some(h) = start_hooks {
        h.run(GuestHook::StartContainer, None)
            .map_err(|e| e.to_string())?;
    }
    let cstr = |s: &[u8]| CString::new(s).map_err(|_| "NUL byte in args or env".to_string());
    let path = cstr(exe.as_os_str().as_bytes())?;
    let args = p
        .args
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<R<Vec<_>>>()?;
    let env = env
        .iter()
        .map(|e| cstr(e.as_bytes()))
        .collect::<R<Vec<_>>>()?;
    // The Rust runtime ignores SIGPIPE; the container gets defaults.
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: resetting a signal disposition to SIG_DFL.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    // The sync socket closes at exec: EOF tells the agent the exec worked.
    let _ = nix::fcntl::fcntl(
        sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let sock = place_extra_fds(sock, extra_fds)?;
    if let Some(f) = filter.filter(|_| p.no_new_privileges) {
        if let Err(e) = f.install() {
            let _ = send(sock, &Msg::Error { message: e }, None);
            std::process::exit(127);
        }
    }
    let e = nix::unistd::execve(&path, &args, &env).err();
    let e = e.map(|e| e.to_string()).unwrap_or_default();
    let _ = send(
        sock,
        &Msg::Error {
            message: format!("exec {}: {e}", exe.display()),
        },
        None,
    );
    std::process::exit(127);
}

/// Moves the process's extra descriptors from where the helper got them
/// ([`EXTRA_FDS_AT`]..) to 3.., the sync socket (3) out of their way
/// first. Returns where the sync socket is now.
fn place_extra_fds(sock: RawFd, n: u32) -> R<RawFd> {
    if n == 0 {
        return Ok(sock);
    }
    let n = n as RawFd;
    let sock = ctx(
        nix::fcntl::fcntl(
            sock,
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(EXTRA_FDS_AT + n),
        ),
        || "moving the sync socket".to_string(),
    )?;
    // Upwards: each source (EXTRA_FDS_AT + i = 4 + i) is read before a
    // later step writes over it.
    for i in 0..n {
        ctx(nix::unistd::dup2(EXTRA_FDS_AT + i, 3 + i), || {
            format!("placing descriptor {}", 3 + i)
        })?;
    }
    let _ = nix::unistd::close(EXTRA_FDS_AT + n - 1);
    Ok(sock)
}

/// The home directory of `uid` in an /etc/passwd text, or `/`.
pub fn home_of(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
        })
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::mounts;
    use crate::syscall::{Call, Recording};

    fn ro_root_setup(rootfs: &Path, binds: &Path) -> CreateSetup {
        // What CRI gives a sandbox container, over a `FROM scratch` image.
        let m: Vec<oci_spec::runtime::Mount> = serde_json::from_str(
            r#"[
            {"destination":"/proc","type":"proc","source":"proc"},
            {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]},
            {"destination":"/etc/resolv.conf","type":"bind","source":"/h/resolv.conf","options":["rbind","ro"]},
            {"destination":"/etc/hostname","type":"bind","source":"/h/hostname","options":["rbind"]},
            {"destination":"/var/run/secrets/sa","type":"bind","source":"/h/sa","options":["rbind","ro"]},
            {"destination":"/dev/shm","type":"bind","source":"/h/shm","options":["rbind"]}
        ]"#,
        )
        .expect("mounts");
        let steps = mounts::plan(&m, rootfs, mounts::BindSources::Drive(binds)).expect("plan");
        CreateSetup {
            rootfs: rootfs.to_path_buf(),
            populate_dev: mounts::mounts_dev(&steps, rootfs),
            mounts: steps,
            devices: Vec::new(),
            namespaces: Vec::new(),
            hostname: None,
            domainname: None,
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            readonly_root: true,
            sysctl: Vec::new(),
            hooks: Default::default(),
            id_mappings: None,
        }
    }

    #[test]
    fn with_a_new_user_namespace_the_root_is_made_before_it_and_its_own_filesystems_inside() {
        let r = Path::new("/run/ampoule/containers/c/rootfs");
        let m: Vec<oci_spec::runtime::Mount> = serde_json::from_str(
            r#"[
            {"destination":"/proc","type":"proc","source":"proc"},
            {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]},
            {"destination":"/dev/pts","type":"devpts","source":"devpts","options":["gid=5"]},
            {"destination":"/sys","type":"sysfs","source":"sysfs","options":["ro"]}
        ]"#,
        )
        .expect("mounts");
        let steps = mounts::plan(&m, r, mounts::BindSources::AsWritten).expect("plan");
        let mut setup = ro_root_setup(r, Path::new("/b"));
        setup.mounts = steps;
        setup.readonly_root = false;
        setup.masked_paths = vec![];
        setup.readonly_paths = vec![];
        setup.namespaces = vec![
            NsPlan {
                flag: libc::CLONE_NEWUSER,
                path: None,
            },
            NsPlan {
                flag: libc::CLONE_NEWNET,
                path: None,
            },
        ];
        let one = |c: u32, h: u32| IdMap {
            container_id: c,
            host_id: h,
            size: 65536,
        };
        setup.id_mappings = Some(IdMappings {
            uid: vec![one(0, 100000)],
            gid: vec![one(0, 200000)],
        });
        let before = Recording::default();
        setup_filesystem(
            &before,
            &setup,
            Path::new("/"),
            &mut || Ok(()),
            FsPhase::BeforeUserNs,
        )
        .expect("before");
        let calls = before.calls();
        let mounted: Vec<(Option<String>, PathBuf, Option<String>)> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    fstype: Some(t),
                    target,
                    data,
                    ..
                } => Some((Some(t.clone()), target.clone(), data.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            mounted,
            vec![
                (
                    Some("proc".to_string()),
                    r.join("proc"),
                    Some("hidepid=2".to_string())
                ),
                (
                    Some("tmpfs".to_string()),
                    r.join("dev"),
                    Some("mode=755,uid=100000,gid=200000".to_string())
                ),
                (Some("sysfs".to_string()), r.join("sys"), None),
            ],
            "/dev owned by the namespace's root; under the container's own proc \
             and sysfs, ones the kernel lets it mount over, proc showing only its uid"
        );
        assert!(calls.contains(&Call::MkdirAll(r.join("proc"))), "{calls:?}");
        assert!(calls.contains(&Call::PivotRoot(r.to_path_buf())));
        let inside = Recording::default();
        setup_filesystem(
            &inside,
            &setup,
            Path::new("/"),
            &mut || Ok(()),
            FsPhase::InUserNs,
        )
        .expect("inside");
        let calls = inside.calls();
        let targets: Vec<(String, PathBuf)> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    fstype: Some(t),
                    target,
                    ..
                } => Some((t.clone(), target.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            targets,
            vec![
                ("proc".to_string(), PathBuf::from("/proc")),
                ("devpts".into(), PathBuf::from("/dev/pts")),
                ("sysfs".into(), PathBuf::from("/sys")),
            ],
            "in the new root, after the user namespace"
        );
        assert!(!calls.iter().any(|c| matches!(c, Call::PivotRoot(_))));
    }

    #[test]
    fn in_a_user_namespace_devices_are_bound_from_the_guest_and_sysfs_becomes_a_read_only_bind() {
        let rec = Recording {
            eperm: vec!["mknod", "sysfs", "cgroup2"],
            ..Default::default()
        };
        let r = Path::new("/run/ampoule/containers/c/rootfs");
        let null = mounts::default_devices()
            .into_iter()
            .find(|d| d.path == Path::new("/dev/null"))
            .expect("/dev/null");
        make_device(&rec, r, &null).expect("bound instead");
        let m: Vec<oci_spec::runtime::Mount> = serde_json::from_str(
            r#"[{"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","ro"]}]"#,
        )
        .expect("mounts");
        let steps = mounts::plan(&m, r, mounts::BindSources::AsWritten).expect("plan");
        do_mount(&rec, &steps[0]).expect("bound instead");
        let calls = rec.calls();
        let dev = r.join("dev/null");
        assert!(calls.contains(&Call::CreateFile(dev.clone())), "{calls:?}");
        assert!(calls.iter().any(
            |c| matches!(c, Call::Mount { source: Some(s), target, flags, .. }
            if s == Path::new("/dev/null") && *target == dev && flags.contains(MsFlags::MS_BIND))
        ));
        let sys = r.join("sys");
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { source: Some(s), target, flags, .. }
            if s == Path::new("/sys") && *target == sys && flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC))));
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { source: None, target, flags, .. }
            if *target == sys && flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY))));
    }

    fn is_ro_root_remount(c: &Call) -> bool {
        matches!(c, Call::Mount { target, flags, .. }
            if target == Path::new("/")
                && flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_BIND))
    }

    #[test]
    fn read_only_root_gets_its_mount_targets_created_before_the_read_only_remount() {
        let r = Path::new("/run/ampoule/containers/c/rootfs");
        let b = Path::new("/run/ampoule/containers/c/binds");
        let rec = Recording::default();
        for f in ["h/resolv.conf", "h/hostname"] {
            rec.set_file(&b.join(f).display().to_string(), "");
        }
        rec.set_dir(&b.join("h/sa").display().to_string());
        rec.set_dir(&b.join("h/shm").display().to_string());
        rec.set_dir("/proc/sys");
        rec.set_file("/proc/kcore", "");
        let setup = ro_root_setup(r, b);
        setup_filesystem(
            &rec,
            &setup,
            Path::new("/work"),
            &mut || Ok(()),
            FsPhase::All,
        )
        .expect("setup");
        let calls = rec.calls();
        let at = |c: &Call| calls.iter().position(|x| x == c);
        let remount = calls
            .iter()
            .position(is_ro_root_remount)
            .expect("/ remounted read-only");
        assert_eq!(
            calls.iter().filter(|c| is_ro_root_remount(c)).count(),
            1,
            "{calls:#?}"
        );
        // Files for file binds (their parent dirs first), dirs for the rest,
        // every one before its mount and before / turns read-only.
        let created = [
            (Call::MkdirAll(r.join("etc")), None),
            (
                Call::CreateFile(r.join("etc/resolv.conf")),
                Some(r.join("etc/resolv.conf")),
            ),
            (
                Call::CreateFile(r.join("etc/hostname")),
                Some(r.join("etc/hostname")),
            ),
            (
                Call::MkdirAll(r.join("var/run/secrets/sa")),
                Some(r.join("var/run/secrets/sa")),
            ),
            (Call::MkdirAll(r.join("dev/shm")), Some(r.join("dev/shm"))),
            (Call::MkdirAll(r.join("proc")), Some(r.join("proc"))),
            (Call::MakeDevice(r.join("dev/null")), None),
            (Call::Symlink(r.join("dev/ptmx")), None),
            (Call::MkdirAll(PathBuf::from("/work")), None),
        ];
        for (c, mounted_on) in &created {
            let i = at(c).unwrap_or_else(|| panic!("{c:?} missing from {calls:#?}"));
            assert!(i < remount, "{c:?} after the read-only remount: {calls:#?}");
            if let Some(t) = mounted_on {
                let m = calls
                    .iter()
                    .position(|x| matches!(x, Call::Mount { target, .. } if target == t))
                    .unwrap_or_else(|| panic!("no mount on {}", t.display()));
                assert!(i < m, "{c:?} after its mount");
            }
        }
        // The remount is the very last thing: nothing is created after it.
        assert_eq!(remount, calls.len() - 1, "{calls:#?}");
        assert!(at(&Call::PivotRoot(r.to_path_buf())).is_some_and(|p| p < remount));
    }

    #[test]
    fn writable_root_is_not_remounted_and_an_existing_cwd_is_not_created() {
        let r = Path::new("/r");
        let b = Path::new("/b");
        let rec = Recording::default();
        for f in ["h/resolv.conf", "h/hostname"] {
            rec.set_file(&b.join(f).display().to_string(), "");
        }
        rec.set_dir("/b/h/sa");
        rec.set_dir("/b/h/shm");
        rec.set_dir("/");
        let mut setup = ro_root_setup(r, b);
        setup.readonly_root = false;
        setup_filesystem(&rec, &setup, Path::new("/"), &mut || Ok(()), FsPhase::All)
            .expect("setup");
        let calls = rec.calls();
        assert!(!calls.iter().any(is_ro_root_remount), "{calls:#?}");
        assert!(!calls.contains(&Call::MkdirAll(PathBuf::from("/"))));
    }

    #[test]
    fn a_missing_bind_source_fails_before_anything_is_created_for_it() {
        let rec = Recording::default();
        let setup = ro_root_setup(Path::new("/r"), Path::new("/b"));
        let e = setup_filesystem(&rec, &setup, Path::new("/"), &mut || Ok(()), FsPhase::All)
            .expect_err("no sources");
        assert!(e.contains("bind mount source /b/h/resolv.conf"), "{e}");
        let calls = rec.calls();
        assert!(!calls.iter().any(is_ro_root_remount));
        assert!(!calls.contains(&Call::CreateFile(PathBuf::from("/r/etc/resolv.conf"))));
    }

    #[test]
    fn create_container_hooks_run_after_every_mount_and_device_and_before_pivot_root() {
        let r = Path::new("/r");
        let b = Path::new("/b");
        let rec = Recording::default();
        for f in ["h/resolv.conf", "h/hostname"] {
            rec.set_file(&b.join(f).display().to_string(), "");
        }
        rec.set_dir("/b/h/sa");
        rec.set_dir("/b/h/shm");
        let setup = ro_root_setup(r, b);
        let mut seen = None;
        setup_filesystem(
            &rec,
            &setup,
            Path::new("/"),
            &mut || {
                seen = Some(rec.calls());
                Ok(())
            },
            FsPhase::All,
        )
        .expect("setup");
        let before = seen.expect("the hooks ran");
        let calls = rec.calls();
        let pivot = calls
            .iter()
            .position(|c| c == &Call::PivotRoot(r.to_path_buf()))
            .expect("pivot_root");
        // Everything up to pivot_root had happened when the hooks ran:
        // every mount (the spec's /proc, /dev and binds), /dev's nodes and
        // links; nothing after it.
        assert_eq!(before, calls[..pivot], "{calls:#?}");
        assert!(before
            .iter()
            .any(|c| matches!(c, Call::Mount { target, .. } if target == &r.join("proc"))));
        assert!(before.contains(&Call::MakeDevice(r.join("dev/null"))));
        assert!(before.contains(&Call::Symlink(r.join("dev/ptmx"))));
    }

    #[test]
    fn a_failing_create_container_hook_fails_the_setup_before_pivot_root() {
        let rec = Recording::default();
        let b = Path::new("/b");
        for f in ["h/resolv.conf", "h/hostname"] {
            rec.set_file(&b.join(f).display().to_string(), "");
        }
        rec.set_dir("/b/h/sa");
        rec.set_dir("/b/h/shm");
        let setup = ro_root_setup(Path::new("/r"), b);
        let e = setup_filesystem(
            &rec,
            &setup,
            Path::new("/"),
            &mut || Err("createContainer hook \"/h\" failed (exit status 1)".into()),
            FsPhase::All,
        )
        .expect_err("the hook fails the setup");
        assert!(e.contains("createContainer hook"), "{e}");
        let calls = rec.calls();
        assert!(
            !calls.iter().any(|c| matches!(c, Call::PivotRoot(_))),
            "{calls:#?}"
        );
        assert!(!calls.iter().any(is_ro_root_remount));
    }

    #[test]
    fn home_comes_from_passwd_or_defaults_to_root_dir() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nbad line\nwww:x:33:33::/var/www:/sbin/nologin\n";
        assert_eq!(home_of(passwd, 0), "/root");
        assert_eq!(home_of(passwd, 33), "/var/www");
        assert_eq!(home_of(passwd, 1000), "/");
        assert_eq!(home_of("", 0), "/");
    }
}
