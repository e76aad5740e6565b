//! Acting inside the pod's network namespace on the host: a command run
//! there, or a closure on a thread that joined it. The runtime's own
//! threads never change namespace.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use super::NetworkError;

fn open_netns(path: &Path) -> Result<OwnedFd, NetworkError> {
    let f = std::fs::File::open(path).map_err(|e| NetworkError::Netns {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(OwnedFd::from(f))
}

/// Runs `program args` in the network namespace at `netns`; an error names
/// the command and what it printed.
pub fn run_in(netns: &Path, program: &str, args: &[&str]) -> Result<Output, NetworkError> {
    let fd = open_netns(netns)?;
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: between fork and exec the closure only calls setns(2), which
    // is async-signal-safe, on the child's copy of `fd` (open in the parent
    // until after the spawn).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let what = format!("{program} {}", args.join(" "));
    let out = cmd.output().map_err(|e| NetworkError::Command {
        what: what.clone(),
        reason: e.to_string(),
    })?;
    drop(fd);
    if !out.status.success() {
        return Err(NetworkError::Command {
            what,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out)
}

/// Runs `f` on a new thread that has joined the network namespace at
/// `netns` (sockets and tap devices it creates belong there).
pub fn with_netns<T, F>(netns: &Path, f: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetworkError> + Send + 'static,
{
    let fd = open_netns(netns)?;
    let path = netns.to_path_buf();
    std::thread::spawn(move || {
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            NetworkError::Netns {
                path,
                reason: format!("setns: {e}"),
            }
        })?;
        f()
    })
    .join()
    .map_err(|_| NetworkError::Command {
        what: "network namespace thread".into(),
        reason: "panicked".into(),
    })?
}
