//! Supervised host processes of one VM (the VMM, vhost-device-vsock).
//!
//! A [`ProcessGroup`] owns its children through one task each: the task
//! reaps the child, records how it ended, and the first exit of any member
//! kills the others (a VM without its vsock device, or a vsock device without
//! its VM, is useless). Dropping the group kills every member.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

/// Errors while spawning a supervised process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot spawn {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create log file {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a member of the group ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    /// Name of the process (e.g. `qemu`, `vhost-device-vsock`).
    pub process: String,
    pub pid: u32,
    /// "exited with status 0", "killed by signal 9 (SIGKILL)", ...
    pub status: String,
    /// The exit code, if it exited normally.
    pub code: Option<i32>,
    /// We killed it (stop or cleanup) rather than it ending by itself.
    pub killed_by_us: bool,
}

impl std::fmt::Display for ExitEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {}) {}", self.process, self.pid, self.status)
    }
}

/// Describes an exit status for messages.
pub fn describe_status(status: &std::io::Result<ExitStatus>) -> (String, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => {
            if let Some(code) = s.code() {
                (format!("exited with status {code}"), Some(code))
            } else if let Some(sig) = s.signal() {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| "?".into());
                (format!("killed by signal {sig} ({name})"), None)
            } else {
                (format!("ended ({s})"), None)
            }
        }
        Err(e) => (format!("could not be waited for: {e}"), None),
    }
}

struct Member {
    name: String,
    pid: u32,
    done: watch::Receiver<Option<ExitEvent>>,
}

/// A set of processes that live and die together.
pub struct ProcessGroup {
    kill: Arc<watch::Sender<bool>>,
    first_exit: watch::Receiver<Option<ExitEvent>>,
    first_exit_tx: Arc<watch::Sender<Option<ExitEvent>>>,
    members: Vec<Member>,
    /// Held until the group is dropped (after its members were told to
    /// die): e.g. the sandbox's jail, whose cgroup outlives the processes.
    held: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl Default for ProcessGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessGroup {
    /// An empty group.
    pub fn new() -> Self {
        let (kill, _) = watch::channel(false);
        let (first_exit_tx, first_exit) = watch::channel(None);
        Self {
            kill: Arc::new(kill),
            first_exit,
            first_exit_tx: Arc::new(first_exit_tx),
            members: Vec::new(),
            held: Vec::new(),
        }
    }

    /// Keeps `value` alive as long as the group (dropped after the kill).
    pub fn hold(&mut self, value: impl std::any::Any + Send + Sync) {
        self.held.push(Box::new(value));
    }

    /// Spawns `cmd` as a member named `name`, with stdin from /dev/null and
    /// stdout/stderr appended to `log`. The child gets its own process group
    /// (a terminal's Ctrl-C does not reach it) and dies with this process.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: &Path) -> Result<u32, ProcessError> {
        let log_err = |source| ProcessError::Log {
            path: log.display().to_string(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe; it touches no memory of
        // the parent's other threads.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: name.to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let (done_tx, done) = watch::channel(None);
        let kill = self.kill.clone();
        let first = self.first_exit_tx.clone();
        let pname = name.to_string();
        tokio::spawn(async move {
            let mut kill_rx = kill.subscribe();
            let exited = tokio::select! {
                s = child.wait() => Some(s),
                _ = async { kill_rx.wait_for(|k| *k).await.map(|_| ()) } => None,
            };
            let (status, by_us) = match exited {
                Some(s) => (s, false),
                None => {
                    let _ = child.start_kill();
                    (child.wait().await, true)
                }
            };
            let (text, code) = describe_status(&status);
            let event = ExitEvent {
                process: pname,
                pid,
                status: text,
                code,
                killed_by_us: by_us,
            };
            tracing::debug!(%event, "process ended");
            first.send_if_modified(|v| {
                if v.is_none() {
                    *v = Some(event.clone());
                    true
                } else {
                    false
                }
            });
            // The group lives and dies together.
            kill.send_replace(true);
            let _ = done_tx.send(Some(event));
        });
        self.members.push(Member {
            name: name.to_string(),
            pid,
            done,
        });
        Ok(pid)
    }

    /// pid of the member called `name`.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.members.iter().find(|m| m.name == name).map(|m| m.pid)
    }

    /// pids of all members.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.pid).collect()
    }

    /// A receiver of the first member exit.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitEvent>> {
        self.first_exit.clone()
    }

    /// The first member exit, if any happened.
    pub fn first_exit(&self) -> Option<ExitEvent> {
        self.first_exit.borrow().clone()
    }

    /// Waits for the first exit of any member.
    pub async fn wait_first_exit(&self) -> ExitEvent {
        let mut rx = self.first_exit.clone();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // All senders gone: cannot happen while `self` holds one.
                return ExitEvent {
                    process: "?".into(),
                    pid: 0,
                    status: "supervisor gone".into(),
                    code: None,
                    killed_by_us: false,
                };
            }
        }
    }

    /// Waits until `name` has ended, up to `timeout`. True if it ended.
    pub async fn wait_member(&self, name: &str, timeout: Duration) -> bool {
        let Some(m) = self.members.iter().find(|m| m.name == name) else {
            return true;
        };
        let mut rx = m.done.clone();
        let done = tokio::time::timeout(timeout, async {
            rx.wait_for(|d| d.is_some()).await.is_ok()
        })
        .await;
        done.unwrap_or(false)
    }

    /// Kills every member and waits until all are reaped.
    pub async fn kill_all(&self) {
        self.kill.send_replace(true);
        for m in &self.members {
            let mut rx = m.done.clone();
            // The task always finishes: SIGKILL cannot be ignored. An error
            // means the task is gone (runtime shutting down), so is the child.
            let _ = async { rx.wait_for(|d| d.is_some()).await.map(|_| ()) }.await;
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_exit_kills_the_others_and_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let mut g = ProcessGroup::new();
        let mut long = Command::new("sleep");
        long.arg("30");
        let long_pid = g.spawn("long", long, &log).expect("spawn sleep");
        let mut short = Command::new("sh");
        short.args(["-c", "echo hi; exit 3"]);
        g.spawn("short", short, &log).expect("spawn sh");
        let e = tokio::time::timeout(Duration::from_secs(10), g.wait_first_exit())
            .await
            .expect("first exit in time");
        assert_eq!(e.process, "short");
        assert_eq!(e.code, Some(3));
        assert!(!e.killed_by_us);
        assert!(
            g.wait_member("long", Duration::from_secs(10)).await,
            "sleep killed"
        );
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(long_pid as i32), None).is_err());
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.contains("hi"));
    }

    #[tokio::test]
    async fn kill_all_reaps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut g = ProcessGroup::new();
        let mut c = Command::new("sleep");
        c.arg("30");
        let pid = g.spawn("a", c, &dir.path().join("log")).expect("spawn");
        g.kill_all().await;
        let e = g.first_exit().expect("exit recorded");
        assert!(e.killed_by_us);
        assert!(e.status.contains("SIGKILL"), "{}", e.status);
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err());
    }

    #[test]
    fn spawn_error_names_the_program() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut g = ProcessGroup::new();
            let err = g
                .spawn(
                    "qemu",
                    Command::new("/nonexistent/qemu"),
                    &dir.path().join("log"),
                )
                .unwrap_err()
                .to_string();
            assert!(err.contains("cannot spawn qemu"), "{err}");
        });
    }
}
