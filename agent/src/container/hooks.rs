//! OCI hooks that run in the guest: `createContainer` and `startContainer`.
//!
//! Both run in the container's namespaces, from the container process (the
//! helper after its clone, see `helper.rs`), which waits for them:
//! - `createContainer`: once the container's mounts, devices and `/dev`
//!   links are in place and before `pivot_root` (as the runtime spec puts
//!   it), chrooted into the container's root;
//! - `startContainer`: after the agent's Start and before the user's
//!   program is executed, in the container's root (after `pivot_root`),
//!   with the process's user, capabilities and limits.
//!
//! Where the path is looked up: the runtime spec resolves a
//! `createContainer` path in the runtime's namespace, which for Ampoule is
//! the host, on the other side of the VM: the host's files are not in the
//! guest. So both kinds are taken from the container's root filesystem
//! (the path, and a script's interpreter, resolved inside it). A hook whose
//! path does not exist in the container fails the create or the start with
//! an error naming the path ([`HookError::NotInContainer`]); it is never
//! skipped silently.
//!
//! Each hook gets the container's state (the runtime spec's state JSON) on
//! stdin, its `args` (`args[0]` is `argv[0]`; the path when there are
//! none), only its own `env`, and `/` as its working directory. It runs in
//! a process group of its own; when its `timeout` passes the whole group
//! is killed and that is an error. Hooks run in the order of the spec and
//! the first failure stops them: the operation fails with the hook's path,
//! its exit status and the end of its output (stdout and stderr, the last
//! [`MAX_OUTPUT`] bytes).
//!
//! The state a guest hook reads is the guest's view: `pid` is the container
//! process's pid in the container's pid namespace (where the hook runs, so
//! it matches the hook's `/proc`), and `bundle` is the container's
//! directory in the guest (the host's bundle path does not exist here).
//!
//! Bounds: a guest hook's time counts toward the agent's wait for the
//! container process (`READY_TIMEOUT` for a create, `START_TIMEOUT` for a
//! start, in `mod.rs`) and the host's wait for those calls; a hook that
//! needs longer fails the operation.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ampoule_agent_api::features::GUEST_HOOKS;
use ampoule_agent_api::hooks::show_output;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags};
use serde::{Deserialize, Serialize};

/// How much of a hook's output (its stdout and stderr) is kept for the
/// error message: the last this many bytes.
pub const MAX_OUTPUT: usize = 4096;
/// `ociVersion` of the state given to a hook (the host's `ampoule state`
/// reports the same).
const STATE_OCI_VERSION: &str = "1.0.2";
/// How often a running hook is checked for its exit and its deadline.
const TICK_MS: u8 = 20;

/// The hook kinds the agent runs. Their names come from
/// [`GUEST_HOOKS`], the list `ampoule features` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestHook {
    CreateContainer = 0,
    StartContainer = 1,
}

impl GuestHook {
    pub const ALL: [GuestHook; 2] = [GuestHook::CreateContainer, GuestHook::StartContainer];

    /// The spec's name, as in `config.json`'s `hooks`.
    pub fn name(self) -> &'static str {
        GUEST_HOOKS[self as usize]
    }

    /// This kind's hooks in a spec.
    fn of(self, hooks: &oci_spec::runtime::Hooks) -> &[oci_spec::runtime::Hook] {
        match self {
            GuestHook::CreateContainer => hooks.create_container().as_deref(),
            GuestHook::StartContainer => hooks.start_container().as_deref(),
        }
        .unwrap_or(&[])
    }

    /// The container's status while this kind runs: a createContainer hook
    /// runs during the create, a startContainer hook once it is created.
    fn status(self) -> &'static str {
        match self {
            GuestHook::CreateContainer => "creating",
            GuestHook::StartContainer => "created",
        }
    }
}

/// Why a hook was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path:?}: {reason}")]
    Invalid {
        kind: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{kind} hook {path:?} does not exist in the container: {kind} hooks run in the guest, \
         where the host's files are not, so their path must be in the container's root filesystem"
    )]
    NotInContainer { kind: &'static str, path: PathBuf },
    #[error("{kind} hook {path:?} could not be run: {reason}")]
    Spawn {
        kind: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{kind} hook {path:?} did not finish within its timeout of {secs}s and was killed{}", show_output(.output))]
    Timeout {
        kind: &'static str,
        path: PathBuf,
        secs: u64,
        output: String,
    },
    #[error("{kind} hook {path:?} failed ({status}){}", show_output(.output))]
    Failed {
        kind: &'static str,
        path: PathBuf,
        status: String,
        output: String,
    },
}

/// One hook, checked: an absolute path, `KEY=VALUE` environment entries,
/// a timeout over zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookPlan {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Seconds; None: no limit of its own.
    pub timeout: Option<u64>,
}

impl HookPlan {
    fn from_oci(kind: GuestHook, h: &oci_spec::runtime::Hook) -> Result<HookPlan, HookError> {
        let invalid = |reason: &str| HookError::Invalid {
            kind: kind.name(),
            path: h.path().clone(),
            reason: reason.to_string(),
        };
        let timeout = ampoule_agent_api::hooks::check(h).map_err(|r| invalid(&r))?;
        let env = h.env().clone().unwrap_or_default();
        Ok(HookPlan {
            path: h.path().clone(),
            args: h.args().clone().unwrap_or_default(),
            env,
            timeout,
        })
    }
}

/// What every guest hook's state has besides its status and pid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateBase {
    pub id: String,
    /// The container's directory in the guest.
    pub bundle: PathBuf,
    pub annotations: BTreeMap<String, String>,
}

impl StateBase {
    /// The runtime spec's state JSON.
    pub fn json(&self, status: &str, pid: u32) -> Vec<u8> {
        let v = serde_json::json!({
            "ociVersion": STATE_OCI_VERSION,
            "id": self.id,
            "status": status,
            "pid": pid,
            "bundle": self.bundle,
            "annotations": self.annotations,
        });
        v.to_string().into_bytes()
    }
}

/// A container's guest hooks, checked when it is created, carried to the
/// helper in its config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestHooks {
    pub create_container: Vec<HookPlan>,
    pub start_container: Vec<HookPlan>,
    pub state: StateBase,
}

impl GuestHooks {
    /// Checks the spec's guest hooks (the host runs the other kinds).
    pub fn plan(
        hooks: Option<&oci_spec::runtime::Hooks>,
        state: StateBase,
    ) -> Result<GuestHooks, HookError> {
        let mut out = GuestHooks {
            state,
            ..Default::default()
        };
        let Some(hooks) = hooks else {
            return Ok(out);
        };
        for kind in GuestHook::ALL {
            let plans = kind
                .of(hooks)
                .iter()
                .map(|h| HookPlan::from_oci(kind, h))
                .collect::<Result<Vec<_>, _>>()?;
            *out.list_mut(kind) = plans;
        }
        Ok(out)
    }

    pub fn list(&self, kind: GuestHook) -> &[HookPlan] {
        match kind {
            GuestHook::CreateContainer => &self.create_container,
            GuestHook::StartContainer => &self.start_container,
        }
    }

    fn list_mut(&mut self, kind: GuestHook) -> &mut Vec<HookPlan> {
        match kind {
            GuestHook::CreateContainer => &mut self.create_container,
            GuestHook::StartContainer => &mut self.start_container,
        }
    }

    /// Runs the hooks of `kind` from the container process: chrooted into
    /// `root` when given (before pivot_root), else in the current root.
    pub fn run(&self, kind: GuestHook, root: Option<&Path>) -> Result<(), HookError> {
        let hooks = self.list(kind);
        if hooks.is_empty() {
            return Ok(());
        }
        let state = self.state.json(kind.status(), std::process::id());
        run_all(kind, hooks, &state, root)
    }
}

/// Runs `hooks` in order with `state` on their stdin; the first failure
/// stops them and is the result.
pub fn run_all(
    kind: GuestHook,
    hooks: &[HookPlan],
    state: &[u8],
    root: Option<&Path>,
) -> Result<(), HookError> {
    for h in hooks {
        run_one(kind, h, state, root)?;
    }
    Ok(())
}

/// Whether `path` exists in the container whose root is `root` (symlinks
/// resolved inside it), or in the current root when `root` is None.
pub fn exists_in(root: Option<&Path>, path: &Path) -> bool {
    let Some(root) = root else {
        return std::fs::metadata(path).is_ok();
    };
    let rel = path.strip_prefix("/").unwrap_or(path);
    match open_in_root(root, rel) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => root.join(rel).exists(),
        Err(_) => false,
    }
}

/// The argument of openat2(2) (linux/openat2.h).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `rel` (O_PATH) under `root` with every symlink and `..` resolved
/// as if `root` were `/` (RESOLVE_IN_ROOT).
fn open_in_root(root: &Path, rel: &Path) -> std::io::Result<OwnedFd> {
    let dir = std::fs::File::open(root)?;
    let c = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT,
    };
    // SAFETY: openat2 reads the NUL-terminated path and `how` (of the size
    // passed), both alive for the call; `dir` is an open directory.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

/// The last [`MAX_OUTPUT`] bytes of a hook's output.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > MAX_OUTPUT {
            let cut = self.0.len() - MAX_OUTPUT;
            self.0.drain(..cut);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// Reads what `out` has now (non-blocking) into `tail`; false at EOF or
/// on an error.
fn drain(out: &mut std::fs::File, tail: &mut Tail) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match out.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => tail.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn nonblocking(fd: &impl AsRawFd) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    let flags = nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

fn spawn(hook: &HookPlan, root: Option<&Path>, out_w: OwnedFd) -> std::io::Result<Child> {
    let mut cmd = Command::new(&hook.path);
    if let Some((argv0, rest)) = hook.args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for e in &hook.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let err_w = out_w.try_clone()?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .process_group(0);
    let root = match root {
        Some(r) => Some(
            CString::new(r.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?,
        ),
        None => {
            cmd.current_dir("/");
            None
        }
    };
    // SAFETY: the closure runs between fork and exec of a single-threaded
    // process (the container process is the helper, which has no other
    // threads) and only makes system calls on memory it owns.
    unsafe {
        cmd.pre_exec(move || {
            // Nothing of the container process (its sync socket with the
            // agent, fd 3) reaches the hook.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(r) = &root {
                if libc::chroot(r.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Runs one hook and waits for it (its deadline, its stdin and its output
/// handled in one loop: the container process has no other thread).
fn run_one(
    kind: GuestHook,
    hook: &HookPlan,
    state: &[u8],
    root: Option<&Path>,
) -> Result<(), HookError> {
    let path = hook.path.clone();
    if !exists_in(root, &hook.path) {
        return Err(HookError::NotInContainer {
            kind: kind.name(),
            path,
        });
    }
    let spawn_err = |e: std::io::Error| HookError::Spawn {
        kind: kind.name(),
        path: hook.path.clone(),
        reason: e.to_string(),
    };
    let (out_r, out_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(std::io::Error::from(e)))?;
    let mut child = spawn(hook, root, out_w).map_err(spawn_err)?;
    let mut out = std::fs::File::from(out_r);
    nonblocking(&out).map_err(spawn_err)?;
    let mut stdin = child.stdin.take();
    if let Some(s) = &stdin {
        nonblocking(s).map_err(spawn_err)?;
    }
    let deadline = hook
        .timeout
        .and_then(|t| Instant::now().checked_add(Duration::from_secs(t)));
    let mut written = 0;
    let mut tail = Tail::default();
    let mut out_open = true;
    let status = loop {
        if written == state.len() {
            // EOF on the hook's stdin once the state is all there.
            stdin = None;
        }
        {
            let mut fds = Vec::new();
            if let Some(s) = &stdin {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLOUT));
            }
            if out_open {
                fds.push(PollFd::new(out.as_fd(), PollFlags::POLLIN));
            }
            if fds.is_empty() {
                std::thread::sleep(Duration::from_millis(TICK_MS.into()));
            } else {
                let _ = poll(&mut fds, TICK_MS);
            }
        }
        if let Some(s) = stdin.as_mut() {
            match s.write(&state[written..]) {
                Ok(n) => written += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                // The hook closed its stdin (or exited): it reads no more.
                Err(_) => {
                    stdin = None;
                    written = state.len();
                }
            }
        }
        if out_open {
            out_open = drain(&mut out, &mut tail);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(spawn_err(e)),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            kill_group(&mut child);
            if out_open {
                drain(&mut out, &mut tail);
            }
            return Err(HookError::Timeout {
                kind: kind.name(),
                path,
                secs: hook.timeout.unwrap_or_default(),
                output: tail.text(),
            });
        }
    };
    // What the hook wrote just before it exited; a process it left behind
    // holding the pipe is not waited for.
    if out_open {
        drain(&mut out, &mut tail);
    }
    if status.success() {
        Ok(())
    } else {
        Err(HookError::Failed {
            kind: kind.name(),
            path,
            status: ampoule_agent_api::hooks::describe_exit(status),
            output: tail.text(),
        })
    }
}

/// Kills a hook and its process group (it leads one) and reaps it.
fn kill_group(child: &mut Child) {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(path: &Path, args: &[&str], env: &[&str], timeout: Option<u64>) -> HookPlan {
        HookPlan {
            path: path.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            timeout,
        }
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    fn spec_hooks(json: &str) -> oci_spec::runtime::Hooks {
        serde_json::from_str(json).expect("hooks json")
    }

    #[test]
    fn hook_kind_names_are_the_features_list() {
        let names: Vec<_> = GuestHook::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, GUEST_HOOKS);
    }

    #[test]
    fn only_the_guest_kinds_are_planned_each_from_its_own_list() {
        let h = spec_hooks(
            r#"{"prestart":[{"path":"/host/pre"}],"createRuntime":[{"path":"/host/cr"}],
                "createContainer":[{"path":"/c1","args":["c1","x"],"env":["A=1"],"timeout":5},{"path":"/c2"}],
                "startContainer":[{"path":"/s1"}],
                "poststart":[{"path":"/host/ps"}],"poststop":[{"path":"/host/pst"}]}"#,
        );
        let g = GuestHooks::plan(Some(&h), StateBase::default()).expect("plan");
        assert_eq!(
            g.create_container,
            vec![
                hook(Path::new("/c1"), &["c1", "x"], &["A=1"], Some(5)),
                hook(Path::new("/c2"), &[], &[], None)
            ]
        );
        assert_eq!(
            g.start_container,
            vec![hook(Path::new("/s1"), &[], &[], None)]
        );
        let none = GuestHooks::plan(None, StateBase::default()).expect("plan");
        assert!(none.create_container.is_empty() && none.start_container.is_empty());
    }

    #[test]
    fn relative_paths_zero_timeouts_and_env_without_equals_are_refused_naming_the_hook() {
        for (json, want) in [
            (
                r#"{"createContainer":[{"path":"bin/hook"}]}"#,
                "must be absolute",
            ),
            (
                r#"{"startContainer":[{"path":"/h","timeout":0}]}"#,
                "greater than zero",
            ),
            (
                r#"{"startContainer":[{"path":"/h","timeout":-3}]}"#,
                "greater than zero",
            ),
            (
                r#"{"createContainer":[{"path":"/h","env":["NOEQUALS"]}]}"#,
                "NOEQUALS",
            ),
        ] {
            let e = GuestHooks::plan(Some(&spec_hooks(json)), StateBase::default())
                .expect_err(json)
                .to_string();
            assert!(e.contains(want), "{json}: {e}");
            assert!(e.contains("hook \""), "{json}: {e}");
        }
    }

    #[test]
    fn state_json_has_the_runtime_spec_fields() {
        let s = StateBase {
            id: "c1".into(),
            bundle: "/run/ampoule/shared/containers/c1".into(),
            annotations: [("k".to_string(), "v".to_string())].into(),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&s.json("creating", 1)).expect("state is JSON");
        assert_eq!(v["ociVersion"], STATE_OCI_VERSION);
        assert_eq!(v["id"], "c1");
        assert_eq!(v["status"], "creating");
        assert_eq!(v["pid"], 1);
        assert_eq!(v["bundle"], "/run/ampoule/shared/containers/c1");
        assert_eq!(v["annotations"]["k"], "v");
    }

    #[test]
    fn hooks_run_in_order_with_the_state_on_stdin_their_argv_and_only_their_env() {
        let dir = TempDir::new();
        let log = dir.0.join("log");
        // Each logs its argv[0], its arguments, its stdin and environment.
        // The first is /bin/sh with an argv[0] of its own, which its
        // command line shows (a script's argv[0] is replaced by the
        // kernel with the script's path, as for the second).
        let rest = format!(
            "|$*|$(cat)|A=$A|HOME=${{HOME-unset}}|PWD=$(pwd)\" >> {}",
            log.display()
        );
        let line = format!("echo \"$(tr '\\0' ' ' < /proc/$$/cmdline | cut -d' ' -f1){rest}");
        let second = script(&dir.0, "second", &format!("echo \"$0{rest}"));
        let hooks = [
            hook(
                Path::new("/bin/sh"),
                &["first-argv0", "-c", &line, "sh", "x", "y"],
                &["A=1"],
                Some(30),
            ),
            hook(&second, &[], &[], None),
        ];
        run_all(GuestHook::StartContainer, &hooks, b"{\"id\":\"c\"}", None).expect("run");
        let got = std::fs::read_to_string(&log).expect("log");
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(
            lines,
            [
                "first-argv0|x y|{\"id\":\"c\"}|A=1|HOME=unset|PWD=/".to_string(),
                format!("{}||{{\"id\":\"c\"}}|A=|HOME=unset|PWD=/", second.display()),
            ]
        );
    }

    #[test]
    fn a_failing_hook_stops_the_rest_and_its_error_names_it_with_status_and_output() {
        let dir = TempDir::new();
        let bad = script(&dir.0, "bad", "echo out; echo 'no network' >&2; exit 3");
        let after = dir.0.join("after-ran");
        let next = script(&dir.0, "next", &format!("touch {}", after.display()));
        let hooks = [hook(&bad, &[], &[], None), hook(&next, &[], &[], None)];
        let e = run_all(GuestHook::CreateContainer, &hooks, b"{}", None).expect_err("fails");
        assert!(matches!(e, HookError::Failed { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with("createContainer hook"), "{msg}");
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.contains("no network"), "{msg}");
        assert!(!after.exists(), "the hook after a failure ran");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_its_children_and_fails() {
        let dir = TempDir::new();
        let pidfile = dir.0.join("sleeper");
        let slow = script(
            &dir.0,
            "slow",
            &format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
        );
        let t0 = Instant::now();
        let e = run_all(
            GuestHook::StartContainer,
            &[hook(&slow, &[], &[], Some(1))],
            b"{}",
            None,
        )
        .expect_err("times out");
        assert!(matches!(e, HookError::Timeout { secs: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("timeout of 1s"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        // The hook's own child went with it (its process group).
        let pid = std::fs::read_to_string(&pidfile).expect("pid of sleep");
        let gone = (0..100).any(|_| {
            let alive = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .map(|s| !s.contains(") Z"))
                .unwrap_or(false);
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "the hook's child {pid} survived the timeout");
    }

    #[test]
    fn a_hook_that_does_not_read_a_large_state_still_finishes() {
        let dir = TempDir::new();
        let quick = script(&dir.0, "quick", "exit 0");
        let big = vec![b'x'; 1 << 20];
        run_all(
            GuestHook::StartContainer,
            &[hook(&quick, &[], &[], Some(20))],
            &big,
            None,
        )
        .expect("finishes without reading stdin");
    }

    #[test]
    fn a_hook_whose_path_is_not_in_the_container_fails_naming_the_path() {
        let dir = TempDir::new();
        let missing = dir.0.join("nope/hook");
        let e = run_all(
            GuestHook::CreateContainer,
            &[hook(&missing, &[], &[], None)],
            b"{}",
            None,
        )
        .expect_err("missing");
        assert!(matches!(e, HookError::NotInContainer { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        assert!(msg.contains("does not exist in the container"), "{msg}");
    }

    #[test]
    fn paths_are_looked_up_inside_the_container_root_symlinks_included() {
        let base = TempDir::new();
        let root = base.0.join("root");
        std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        std::fs::write(root.join("usr/bin/hook"), "").expect("file");
        // An absolute symlink, as images have: it points into the root,
        // not at the guest's /usr.
        std::os::unix::fs::symlink("/usr/bin", root.join("bin")).expect("symlink");
        assert!(exists_in(Some(&root), Path::new("/bin/hook")));
        assert!(exists_in(Some(&root), Path::new("/usr/bin/hook")));
        assert!(!exists_in(Some(&root), Path::new("/bin/other")));
        // `..` cannot climb out of the root: <base>/outside exists, but
        // not in the container.
        std::fs::write(base.0.join("outside"), "").expect("file");
        assert!(root.join("../outside").exists());
        assert!(!exists_in(Some(&root), Path::new("/../outside")));
        assert!(exists_in(None, &root.join("usr/bin/hook")));
    }

    /// A fresh directory under the temporary directory, removed when
    /// dropped (the agent has no tempfile crate).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let d = std::env::temp_dir().join(format!(
                "ampoule-agent-hooks-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("mkdir");
            TempDir(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
