//! File descriptors beyond stdio, which runc hands to the container process
//! and a microVM cannot: `--preserve-fds N` (fds 3..3+N of the caller) and,
//! on create and run, systemd socket activation of the runtime itself
//! (`LISTEN_FDS` with `LISTEN_PID` naming us), which runc passes on with
//! `LISTEN_FDS` in the process's environment.
//!
//! Only stdio crosses into the guest, as vsock byte streams; an fd of the
//! host (a listening socket, a pipe, a file) has nothing to become there.
//! Dropping it would leave a process that was told it has fds 3.. (as
//! podman tells a socket-activated container through `LISTEN_FDS`) reading
//! whatever the guest put at those numbers, so it is refused with the
//! reason, before anything boots.

/// Refused extra fds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtraFdsError {
    #[error(
        "--preserve-fds {0}: file descriptors beyond stdio cannot be passed into the container's \
         microVM (only stdin, stdout and stderr cross into it); socket activation and other \
         inherited fds are not supported"
    )]
    PreserveFds(u32),
    #[error(
        "LISTEN_FDS={0}: the runtime was socket-activated, and these file descriptors cannot be \
         passed into the container's microVM (only stdin, stdout and stderr cross into it)"
    )]
    ListenFds(String),
}

/// Checks `--preserve-fds` and the socket activation of this process
/// (`LISTEN_FDS`, `LISTEN_PID` from `env`, our `pid`). runc honours the
/// activation only when `LISTEN_PID` is its own pid, so one meant for
/// another process (inherited through an engine) is no reason to refuse.
pub fn check(
    preserve_fds: u32,
    socket_activation: bool,
    env: impl Fn(&str) -> Option<String>,
    pid: u32,
) -> Result<(), ExtraFdsError> {
    if preserve_fds > 0 {
        return Err(ExtraFdsError::PreserveFds(preserve_fds));
    }
    if !socket_activation {
        return Ok(());
    }
    let Some(n) = env("LISTEN_FDS") else {
        return Ok(());
    };
    let ours = env("LISTEN_PID").and_then(|p| p.trim().parse::<u32>().ok()) == Some(pid);
    let some = n.trim().parse::<u32>().map_or(true, |n| n > 0);
    if ours && some {
        return Err(ExtraFdsError::ListenFds(n));
    }
    Ok(())
}

/// [`check`] against this process's environment.
pub fn check_own(preserve_fds: u32, socket_activation: bool) -> Result<(), ExtraFdsError> {
    check(
        preserve_fds,
        socket_activation,
        |k| std::env::var(k).ok(),
        std::process::id(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn preserve_fds_above_zero_is_refused_naming_the_flag() {
        assert_eq!(check(0, true, env(&[]), 1), Ok(()));
        let e = check(2, false, env(&[]), 1).unwrap_err();
        assert_eq!(e, ExtraFdsError::PreserveFds(2));
        assert!(e.to_string().starts_with("--preserve-fds 2:"));
        assert!(e.to_string().contains("microVM"));
    }

    #[test]
    fn socket_activation_of_this_process_is_refused() {
        let ours = [("LISTEN_FDS", "2"), ("LISTEN_PID", "77")];
        assert_eq!(
            check(0, true, env(&ours), 77),
            Err(ExtraFdsError::ListenFds("2".into()))
        );
        // A malformed count meant for us is not taken as zero.
        let bad = [("LISTEN_FDS", "x"), ("LISTEN_PID", "77")];
        assert!(check(0, true, env(&bad), 77).is_err());
    }

    #[test]
    fn socket_activation_of_another_process_or_of_no_fds_is_no_reason_to_refuse() {
        let other = [("LISTEN_FDS", "2"), ("LISTEN_PID", "78")];
        assert_eq!(check(0, true, env(&other), 77), Ok(()));
        let no_pid = [("LISTEN_FDS", "2")];
        assert_eq!(check(0, true, env(&no_pid), 77), Ok(()));
        let zero = [("LISTEN_FDS", "0"), ("LISTEN_PID", "77")];
        assert_eq!(check(0, true, env(&zero), 77), Ok(()));
        // exec: runc passes no activation fds to an exec'd process.
        let ours = [("LISTEN_FDS", "2"), ("LISTEN_PID", "77")];
        assert_eq!(check(0, false, env(&ours), 77), Ok(()));
    }
}
