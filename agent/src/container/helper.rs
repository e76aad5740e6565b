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
    path_of, recv, send, CreateSetup, HelperConfig, Msg, NsPlan, ProcessPlan, Setup, SYNC_FD,
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
        Setup::Create(c) => (true, enter_new_namespaces(&c.namespaces)?),
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
        setup_container(c, &cfg.process.cwd)?;
    }
    let (exe, env) = setup_process(&cfg.process, init, sock, filter.as_ref())?;
    let start_hooks = match &cfg.setup {
        Setup::Create(c) => Some(&c.hooks),
        Setup::Exec { .. } => None,
    };
    exec(sock, &cfg.process, exe, &env, filter.as_ref(), start_hooks)
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
fn enter_new_namespaces(namespaces: &[NsPlan]) -> R<Option<CgroupNs>> {
    let mut new = CloneFlags::CLONE_NEWNS;
    let mut cgroup_ns = None;
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
    ctx(nix::sched::unshare(new), || {
        "unshare namespaces".to_string()
    })?;
    if new.contains(CloneFlags::CLONE_NEWNET) {
        // As runc: a new network namespace gets its loopback up.
        loopback_up()?;
    }
    Ok(cgroup_ns)
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

fn setup_container(setup: &CreateSetup, cwd: &Path) -> R<()> {
    // createContainer hooks: in the container's namespaces, chrooted into
    // its root (their path is the container's, see hooks.rs).
    let mut create_hooks = || {
        setup
            .hooks
            .run(GuestHook::CreateContainer, Some(&setup.rootfs))
            .map_err(|e| e.to_string())
    };
    setup_filesystem(&Linux, setup, cwd, &mut create_hooks)?;
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
) -> R<()> {
    let CreateSetup {
        rootfs,
        mounts,
        populate_dev,
        devices,
        masked_paths,
        readonly_paths,
        readonly_root,
        sysctl,
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
        do_mount(sys, m)?;
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
    // As runc: the init's cwd is created when the image lacks it (inside
    // the new root, so `..` and symlinks stay in it). A failure shows up
    // as the chdir's.
    if sys.is_dir(cwd).is_err() {
        let _ = sys.mkdir_all(cwd);
    }
    if *readonly_root {
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
    ctx(
        sys.mount(
            m.source.as_deref(),
            &m.target,
            m.fstype.as_deref(),
            MsFlags::from_bits_truncate(m.flags),
            m.data.as_deref(),
        ),
        || {
            format!(
                "mount {} on {} ({})",
                m.fstype.as_deref().unwrap_or("bind"),
                m.target.display(),
                m.data.as_deref().unwrap_or("")
            )
        },
    )?;
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
    ctx(sys.make_device(&path, d), || {
        format!("mknod {}", d.path.display())
    })
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
        }
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
        setup_filesystem(&rec, &setup, Path::new("/work"), &mut || Ok(())).expect("setup");
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
        setup_filesystem(&rec, &setup, Path::new("/"), &mut || Ok(())).expect("setup");
        let calls = rec.calls();
        assert!(!calls.iter().any(is_ro_root_remount), "{calls:#?}");
        assert!(!calls.contains(&Call::MkdirAll(PathBuf::from("/"))));
    }

    #[test]
    fn a_missing_bind_source_fails_before_anything_is_created_for_it() {
        let rec = Recording::default();
        let setup = ro_root_setup(Path::new("/r"), Path::new("/b"));
        let e =
            setup_filesystem(&rec, &setup, Path::new("/"), &mut || Ok(())).expect_err("no sources");
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
        setup_filesystem(&rec, &setup, Path::new("/"), &mut || {
            seen = Some(rec.calls());
            Ok(())
        })
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
        let e = setup_filesystem(&rec, &setup, Path::new("/"), &mut || {
            Err("createContainer hook \"/h\" failed (exit status 1)".into())
        })
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
