//! Child reaping for PID 1.
//!
//! One place calls waitpid: the SIGCHLD task here. Code that starts a process
//! registers its pid (under the same lock that reaping takes, so a process
//! that dies at once is not missed) and gets its exit through a oneshot;
//! exits of pids nobody registered yet are kept for a while, because a
//! container process's pid is learned from its helper after it was forked;
//! orphans re-parented to PID 1 are simply reaped.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell's convention: the exit code, or 128 + signal number.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    /// The signal that ended the process, 0 if it exited.
    pub fn signal(self) -> i32 {
        match self {
            Exit::Code(_) => 0,
            Exit::Signal(s) => s,
        }
    }

    /// The exit of a terminated process; None for stop/continue reports.
    pub fn from_wait_status(ws: WaitStatus) -> Option<(i32, Exit)> {
        match ws {
            WaitStatus::Exited(pid, code) => Some((pid.as_raw(), Exit::Code(code))),
            WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), Exit::Signal(sig as i32))),
            _ => None,
        }
    }
}

/// How long the exit of a pid nobody waits for is kept.
const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, (Exit, Instant)>,
}

impl State {
    fn dispatch(&mut self, pid: i32, exit: Exit, now: Instant) {
        match self.waiters.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                self.unclaimed
                    .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_TTL);
                self.unclaimed.insert(pid, (exit, now));
            }
        }
    }

    fn watch(&mut self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        match self.unclaimed.remove(&pid) {
            Some((exit, _)) => {
                let _ = tx.send(exit);
            }
            None => {
                self.waiters.insert(pid, tx);
            }
        }
        rx
    }
}

/// The one waiter of the agent's children.
#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("installing the SIGCHLD handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Reaper {
    pub fn new() -> Arc<Reaper> {
        Arc::new(Reaper::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock aborts the agent (panic = abort),
        // so a poisoned lock cannot be observed; recover anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the SIGCHLD task. Call inside the tokio runtime.
    pub fn start(self: &Arc<Self>) -> Result<(), ReaperError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.reap_all();
            while sigchld.recv().await.is_some() {
                me.reap_all();
            }
        });
        Ok(())
    }

    /// Reaps every child that has exited.
    pub fn reap_all(&self) {
        let mut state = self.lock();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => {
                    if let Some((pid, exit)) = Exit::from_wait_status(ws) {
                        tracing::debug!(pid, ?exit, "reaped");
                        state.dispatch(pid, exit, Instant::now());
                    }
                }
            }
        }
    }

    /// Spawns `cmd` and registers its pid before any reaping can see it.
    pub fn spawn(
        &self,
        cmd: &mut Command,
    ) -> Result<(std::process::Child, oneshot::Receiver<Exit>), ReaperError> {
        let mut state = self.lock();
        let child = cmd.spawn().map_err(|source| ReaperError::Spawn {
            what: format!("{:?}", cmd.get_program()),
            source,
        })?;
        let rx = state.watch(child.id() as i32);
        Ok((child, rx))
    }

    /// The exit of `pid`, a child learned about after it was created.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        self.lock().watch(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_status_is_the_code_or_128_plus_the_signal() {
        assert_eq!(Exit::Code(7).status(), 7);
        assert_eq!(Exit::Code(7).signal(), 0);
        assert_eq!(Exit::Signal(9).status(), 137);
        assert_eq!(Exit::Signal(9).signal(), 9);
    }

    #[test]
    fn wait_statuses_map_to_exits_and_stops_are_ignored() {
        let pid = Pid::from_raw(42);
        assert_eq!(
            Exit::from_wait_status(WaitStatus::Exited(pid, 3)),
            Some((42, Exit::Code(3)))
        );
        assert_eq!(
            Exit::from_wait_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some((42, Exit::Signal(9)))
        );
        assert_eq!(
            Exit::from_wait_status(WaitStatus::Stopped(pid, Signal::SIGSTOP)),
            None
        );
    }

    #[test]
    fn a_registered_waiter_gets_its_exit() {
        let mut s = State::default();
        let mut rx = s.watch(10);
        s.dispatch(10, Exit::Code(1), Instant::now());
        assert_eq!(rx.try_recv().ok(), Some(Exit::Code(1)));
    }

    #[test]
    fn an_exit_reaped_before_registration_is_not_lost() {
        let mut s = State::default();
        s.dispatch(11, Exit::Signal(15), Instant::now());
        let mut rx = s.watch(11);
        assert_eq!(rx.try_recv().ok(), Some(Exit::Signal(15)));
        assert!(s.unclaimed.is_empty());
    }

    #[test]
    fn old_unclaimed_exits_of_orphans_are_forgotten() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.dispatch(12, Exit::Code(0), t0);
        s.dispatch(
            13,
            Exit::Code(0),
            t0 + UNCLAIMED_TTL + Duration::from_secs(1),
        );
        assert!(!s.unclaimed.contains_key(&12));
        assert!(s.unclaimed.contains_key(&13));
    }
}
