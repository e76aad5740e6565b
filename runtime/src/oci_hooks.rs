//! OCI hooks that run on the host, by the `ampoule` CLI: `prestart`,
//! `createRuntime`, `poststart` and `poststop` (the guest's agent runs
//! `createContainer` and `startContainer` in the container,
//! `agent/src/container/hooks.rs`).
//!
//! When: `create` runs [`HostHook::AT_CREATE`] (`prestart`, then
//! `createRuntime`, the runtime spec's lifecycle order, as runc) once the
//! container exists in the guest and before it returns; `start` runs
//! `poststart` once the process started, before it returns; `delete` runs
//! `poststop` once the container is deleted, before it returns.
//!
//! How: each hook gets the container's state (what `ampoule state` prints)
//! on stdin, its `args` (`args[0]` is `argv[0]`; the path when there are
//! none), only its own `env`, the bundle as its working directory (as
//! runc), and a process group of its own. When its `timeout` (seconds)
//! passes, the group is killed and that is an error. Its stdout and stderr
//! are kept (the last [`MAX_OUTPUT`] bytes) for the error message. Hooks
//! run in order.
//!
//! Failures ([`HostHook::fails_operation`]): a failing `prestart` or
//! `createRuntime` hook stops the others and fails the create; a failing
//! `poststart` or `poststop` hook is a warning (logged, and returned), and
//! the remaining hooks still run.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ampoule_agent_api::hooks::show_output;
use oci_spec::runtime::{Hook, Hooks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The hook kinds the host runs, in lifecycle order: the names
/// [`HostHook::name`] gives and `ampoule features` reports.
pub const HOST_HOOKS: [&str; 4] = ["prestart", "createRuntime", "poststart", "poststop"];

/// How much of a hook's output (stdout and stderr) is kept for the error
/// message: the last this many bytes.
pub const MAX_OUTPUT: usize = 4096;
/// How long the output of a hook that exited is still read: a process it
/// left behind may hold the pipe open.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHook {
    Prestart = 0,
    CreateRuntime = 1,
    Poststart = 2,
    Poststop = 3,
}

impl HostHook {
    pub const ALL: [HostHook; 4] = [
        HostHook::Prestart,
        HostHook::CreateRuntime,
        HostHook::Poststart,
        HostHook::Poststop,
    ];

    /// What `create` runs, in this order, once the container exists in the
    /// guest: the runtime spec's lifecycle (steps 3 and 4) and runc run
    /// the deprecated `prestart` hooks first, then `createRuntime`.
    pub const AT_CREATE: [HostHook; 2] = [HostHook::Prestart, HostHook::CreateRuntime];

    /// The spec's name, as in `config.json`'s `hooks`.
    pub fn name(self) -> &'static str {
        HOST_HOOKS[self as usize]
    }

    /// Whether a failing hook of this kind fails its operation (and stops
    /// the hooks after it) or is only a warning.
    pub fn fails_operation(self) -> bool {
        matches!(self, HostHook::Prestart | HostHook::CreateRuntime)
    }

    /// This kind's hooks in a spec.
    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        match self {
            // Deprecated in the spec, still sent by engines.
            #[allow(deprecated)]
            HostHook::Prestart => hooks.prestart().as_deref(),
            HostHook::CreateRuntime => hooks.create_runtime().as_deref(),
            HostHook::Poststart => hooks.poststart().as_deref(),
            HostHook::Poststop => hooks.poststop().as_deref(),
        }
        .unwrap_or(&[])
    }
}

/// Every hook kind Ampoule runs, host and guest, in lifecycle order: what
/// `ampoule features` reports.
pub fn all_hook_names() -> Vec<&'static str> {
    let guest = ampoule_agent_api::features::GUEST_HOOKS;
    let (create, after_start) = HOST_HOOKS.split_at(HostHook::AT_CREATE.len());
    create
        .iter()
        .chain(guest.iter())
        .chain(after_start.iter())
        .copied()
        .collect()
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
    #[error("{kind} hooks: cannot encode the container state: {reason}")]
    State { kind: &'static str, reason: String },
}

/// Runs the hooks of `kind` in order, each with `state` (serialized as
/// JSON) on its stdin and `cwd` as its working directory.
///
/// For a kind that [fails its operation](HostHook::fails_operation), the
/// first failure stops the rest and is the error. For the others every
/// hook runs; their failures are logged as warnings and returned.
pub async fn run<S: serde::Serialize>(
    kind: HostHook,
    hooks: &[Hook],
    state: &S,
    cwd: &Path,
) -> Result<Vec<HookError>, HookError> {
    if hooks.is_empty() {
        return Ok(Vec::new());
    }
    let state = serde_json::to_vec(state).map_err(|e| HookError::State {
        kind: kind.name(),
        reason: e.to_string(),
    })?;
    let mut warnings = Vec::new();
    for hook in hooks {
        tracing::debug!(hook = kind.name(), path = %hook.path().display(), "running hook");
        match run_one(kind, hook, &state, cwd).await {
            Ok(()) => {}
            Err(e) if kind.fails_operation() => return Err(e),
            Err(e) => {
                tracing::warn!(hook = kind.name(), error = %e, "hook failed; the remaining hooks run");
                warnings.push(e);
            }
        }
    }
    Ok(warnings)
}

/// The last [`MAX_OUTPUT`] bytes of what `out` gives until EOF.
async fn read_tail(out: OwnedFd) -> Vec<u8> {
    let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(out) else {
        return Vec::new();
    };
    let mut tail = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return tail,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > MAX_OUTPUT {
                    let cut = tail.len() - MAX_OUTPUT;
                    tail.drain(..cut);
                }
            }
        }
    }
}

fn check(kind: HostHook, hook: &Hook) -> Result<Option<u64>, HookError> {
    ampoule_agent_api::hooks::check(hook).map_err(|reason| HookError::Invalid {
        kind: kind.name(),
        path: hook.path().clone(),
        reason,
    })
}

/// Runs one hook and waits for it, its timeout and its output.
async fn run_one(kind: HostHook, hook: &Hook, state: &[u8], cwd: &Path) -> Result<(), HookError> {
    let timeout = check(kind, hook)?;
    let path = hook.path().clone();
    let spawn_err = |e: std::io::Error| HookError::Spawn {
        kind: kind.name(),
        path: path.clone(),
        reason: e.to_string(),
    };
    let mut cmd = tokio::process::Command::new(&path);
    if let Some((argv0, rest)) = hook.args().as_deref().and_then(|a| a.split_first()) {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for e in hook.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    // stdout and stderr into one pipe, read here.
    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
    let err_w = out_w.try_clone().map_err(spawn_err)?;
    cmd.current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // The write ends went to the child: EOF comes when it (and whatever
    // it started) closes them.
    drop(cmd);
    let output = tokio::spawn(read_tail(out_r));
    let writer = child.stdin.take().map(|mut stdin| {
        let state = state.to_vec();
        // A hook that does not read its stdin is not an error.
        tokio::spawn(async move {
            let _ = stdin.write_all(&state).await;
        })
    });
    let deadline =
        timeout.and_then(|t| tokio::time::Instant::now().checked_add(Duration::from_secs(t)));
    let waited = match deadline {
        Some(d) => tokio::time::timeout_at(d, child.wait()).await.ok(),
        None => Some(child.wait().await),
    };
    let status = match waited {
        Some(s) => Some(s.map_err(spawn_err)?),
        None => {
            // Past its timeout: the hook and everything in its group.
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            None
        }
    };
    if let Some(w) = writer {
        w.abort();
    }
    let mut output = output;
    let tail = match tokio::time::timeout(OUTPUT_GRACE, &mut output).await {
        Ok(Ok(t)) => String::from_utf8_lossy(&t).into_owned(),
        _ => String::new(),
    };
    output.abort();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(HookError::Failed {
            kind: kind.name(),
            path,
            status: ampoule_agent_api::hooks::describe_exit(s),
            output: tail,
        }),
        None => Err(HookError::Timeout {
            kind: kind.name(),
            path,
            secs: timeout.unwrap_or_default(),
            output: tail,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn hooks(json: &str) -> Vec<Hook> {
        serde_json::from_str(json).expect("hooks json")
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    fn hook_json(path: &Path, extra: &str) -> String {
        format!(r#"{{"path":{:?}{extra}}}"#, path.display().to_string())
    }

    #[test]
    fn features_list_the_six_kinds_in_lifecycle_order() {
        assert_eq!(
            all_hook_names(),
            [
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
                "poststop"
            ]
        );
        let names: Vec<_> = HostHook::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, HOST_HOOKS);
    }

    #[test]
    fn create_runs_prestart_then_create_runtime_and_only_those_fail_an_operation() {
        assert_eq!(
            HostHook::AT_CREATE,
            [HostHook::Prestart, HostHook::CreateRuntime]
        );
        let fatal: Vec<_> = HostHook::ALL
            .into_iter()
            .filter(|k| k.fails_operation())
            .collect();
        assert_eq!(fatal, HostHook::AT_CREATE);
    }

    #[test]
    fn each_kind_reads_its_own_list_of_the_spec() {
        let h: Hooks = serde_json::from_str(
            r#"{"prestart":[{"path":"/pre"}],"createRuntime":[{"path":"/cr"}],
                "createContainer":[{"path":"/cc"}],"startContainer":[{"path":"/sc"}],
                "poststart":[{"path":"/ps"}],"poststop":[{"path":"/pst"}]}"#,
        )
        .expect("hooks");
        let paths =
            |k: HostHook| -> Vec<PathBuf> { k.of(&h).iter().map(|h| h.path().clone()).collect() };
        assert_eq!(paths(HostHook::Prestart), [PathBuf::from("/pre")]);
        assert_eq!(paths(HostHook::CreateRuntime), [PathBuf::from("/cr")]);
        assert_eq!(paths(HostHook::Poststart), [PathBuf::from("/ps")]);
        assert_eq!(paths(HostHook::Poststop), [PathBuf::from("/pst")]);
        assert!(HostHook::Prestart.of(&Hooks::default()).is_empty());
    }

    #[tokio::test]
    async fn hooks_run_in_order_with_the_state_on_stdin_their_argv_env_and_the_bundle_as_cwd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        // Each logs argv[0], its arguments, stdin, environment and cwd.
        // The first is /bin/sh with an argv[0] of its own, which its
        // command line shows (the kernel gives a script its path as
        // argv[0], as for the second).
        let rest = format!(
            "|$*|$(cat)|A=$A|HOME=${{HOME-unset}}|PWD=$(pwd)\" >> {}",
            log.display()
        );
        let first_cmd = format!("echo \"$(tr '\\0' ' ' < /proc/$$/cmdline | cut -d' ' -f1){rest}");
        let second = script(dir.path(), "second", &format!("echo \"$0{rest}"));
        let first = serde_json::json!({
            "path": "/bin/sh",
            "args": ["first-argv0", "-c", first_cmd, "sh", "x", "y"],
            "env": ["A=1"],
            "timeout": 30,
        });
        let list = hooks(&format!("[{first},{}]", hook_json(&second, "")));
        let state = serde_json::json!({"id": "c", "status": "created"});
        let warnings = run(HostHook::CreateRuntime, &list, &state, dir.path())
            .await
            .expect("run");
        assert!(warnings.is_empty());
        let got = std::fs::read_to_string(&log).expect("log");
        let cwd = dir.path().display();
        let stdin = r#"{"id":"c","status":"created"}"#;
        assert_eq!(
            got.lines().collect::<Vec<_>>(),
            [
                format!("first-argv0|x y|{stdin}|A=1|HOME=unset|PWD={cwd}"),
                format!("{}||{stdin}|A=|HOME=unset|PWD={cwd}", second.display()),
            ]
        );
    }

    #[tokio::test]
    async fn a_failing_create_hook_stops_the_rest_and_names_itself_with_status_and_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = script(dir.path(), "bad", "echo 'cannot set up' >&2; exit 4");
        let after = dir.path().join("after-ran");
        let next = script(dir.path(), "next", &format!("touch {}", after.display()));
        let list = hooks(&format!(
            "[{},{}]",
            hook_json(&bad, ""),
            hook_json(&next, "")
        ));
        for kind in HostHook::AT_CREATE {
            let e = run(kind, &list, &serde_json::json!({}), dir.path())
                .await
                .expect_err("fails");
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{} hook", kind.name())), "{msg}");
            assert!(msg.contains(&bad.display().to_string()), "{msg}");
            assert!(msg.contains("exit status 4"), "{msg}");
            assert!(msg.contains("cannot set up"), "{msg}");
            assert!(
                !after.exists(),
                "{}: the hook after a failure ran",
                kind.name()
            );
        }
    }

    #[tokio::test]
    async fn a_failing_poststart_or_poststop_hook_is_a_warning_and_the_rest_still_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = script(dir.path(), "bad", "exit 2");
        for kind in [HostHook::Poststart, HostHook::Poststop] {
            let after = dir.path().join(format!("{}-after", kind.name()));
            let next = script(
                dir.path(),
                &format!("next-{}", kind.name()),
                &format!("touch {}", after.display()),
            );
            let missing = dir.path().join("missing");
            let list = hooks(&format!(
                "[{},{},{}]",
                hook_json(&bad, ""),
                hook_json(&missing, ""),
                hook_json(&next, "")
            ));
            let warnings = run(kind, &list, &serde_json::json!({}), dir.path())
                .await
                .expect("only warnings");
            assert_eq!(warnings.len(), 2, "{warnings:?}");
            assert!(matches!(warnings[0], HookError::Failed { .. }));
            assert!(matches!(warnings[1], HookError::Spawn { .. }));
            assert!(after.exists(), "{}: the last hook ran", kind.name());
        }
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_children_and_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("sleeper");
        let slow = script(
            dir.path(),
            "slow",
            &format!(
                "echo started; sleep 30 & echo $! > {}; wait",
                pidfile.display()
            ),
        );
        let list = hooks(&format!("[{}]", hook_json(&slow, r#","timeout":1"#)));
        let t0 = Instant::now();
        let e = run(
            HostHook::CreateRuntime,
            &list,
            &serde_json::json!({}),
            dir.path(),
        )
        .await
        .expect_err("times out");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert!(matches!(e, HookError::Timeout { secs: 1, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("timeout of 1s"), "{msg}");
        assert!(msg.contains("started"), "output kept: {msg}");
        let pid = std::fs::read_to_string(&pidfile).expect("pid of sleep");
        let alive = || {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .map(|s| !s.contains(") Z"))
                .unwrap_or(false)
        };
        let t0 = Instant::now();
        while alive() && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(), "the hook's child {pid} survived the timeout");
    }

    #[tokio::test]
    async fn a_hook_that_leaves_a_process_holding_its_output_does_not_hold_the_operation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("bg");
        let quick = script(
            dir.path(),
            "quick",
            &format!("sleep 30 & echo $! > {}; exit 0", pidfile.display()),
        );
        let list = hooks(&format!("[{}]", hook_json(&quick, "")));
        let t0 = Instant::now();
        run(
            HostHook::Poststart,
            &list,
            &serde_json::json!({}),
            dir.path(),
        )
        .await
        .expect("runs");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    #[tokio::test]
    async fn invalid_hooks_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (json, want) in [
            (r#"[{"path":"relative/hook"}]"#, "must be absolute"),
            (r#"[{"path":"/bin/true","timeout":0}]"#, "greater than zero"),
            (r#"[{"path":"/bin/true","env":["NOEQ"]}]"#, "NOEQ"),
        ] {
            let e = run(
                HostHook::Prestart,
                &hooks(json),
                &serde_json::json!({}),
                dir.path(),
            )
            .await
            .expect_err(json);
            assert!(matches!(e, HookError::Invalid { .. }), "{e:?}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
