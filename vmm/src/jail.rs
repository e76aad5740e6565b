//! Dropping privileges once everything privileged is open (`--uid`,
//! `--gid`): `/dev/kvm`, guest memory, the kernel, drives, the serial log
//! and the sockets are open or bound by then.
//!
//! Credentials are per thread in Linux and glibc changes them in every
//! thread with a signal each thread answers by a syscall its seccomp filter
//! does not allow; so the drop happens while the process has one thread,
//! before any VMM thread starts, and refuses to run otherwise.

use std::path::Path;

/// Errors while dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("privileges must be dropped before any thread starts ({0} threads run)")]
    Threads(usize),
    #[error("counting threads: {0}")]
    Proc(std::io::Error),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
}

/// The identity to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Number of threads of this process.
fn thread_count() -> Result<usize, JailError> {
    std::fs::read_dir(Path::new("/proc/self/task"))
        .map(|d| d.count())
        .map_err(JailError::Proc)
}

/// Capability numbers up to the kernel's last one.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        // CAP_CHECKPOINT_RESTORE, the last one of Linux 6.x.
        .unwrap_or(40)
}

/// Runs as `id` from now on: empties the capability bounding set and the
/// ambient set, drops the supplementary groups, sets real, effective and
/// saved gid then uid (which clears the permitted and effective
/// capabilities when `uid` is not 0) and sets `no_new_privs`.
pub fn drop_privileges(id: Identity) -> Result<(), JailError> {
    let n = thread_count()?;
    if n != 1 {
        return Err(JailError::Threads(n));
    }
    let sys = |what: &'static str| move |source: nix::Error| JailError::Sys { what, source };
    for cap in 0..=last_cap() {
        // SAFETY: prctl with integer arguments only; PR_CAPBSET_DROP changes
        // this process's bounding set and touches no memory of ours.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        // EINVAL: a capability this kernel does not know.
        if r != 0 && nix::errno::Errno::last() != nix::errno::Errno::EINVAL {
            return Err(sys("PR_CAPBSET_DROP")(nix::errno::Errno::last()));
        }
    }
    // SAFETY: integer arguments only; clears this process's ambient set.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(sys("PR_CAP_AMBIENT_CLEAR_ALL")(nix::errno::Errno::last()));
    }
    nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    let gid = nix::unistd::Gid::from_raw(id.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
    let uid = nix::unistd::Uid::from_raw(id.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
    // SAFETY: integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(sys("PR_SET_NO_NEW_PRIVS")(nix::errno::Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_privileges_with_threads_running_is_refused() {
        // The test harness runs this test on a thread of its own, so the
        // process has at least two: nothing may be changed.
        let before = std::fs::read_to_string("/proc/self/status").unwrap();
        let e = drop_privileges(Identity {
            uid: 65534,
            gid: 65534,
        })
        .unwrap_err();
        assert!(matches!(e, JailError::Threads(n) if n >= 2), "{e}");
        let after = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = |s: &str, f: &str| s.lines().find(|l| l.starts_with(f)).map(str::to_owned);
        for f in ["Uid:", "Gid:", "CapBnd:", "NoNewPrivs:"] {
            assert_eq!(line(&before, f), line(&after, f), "{f}");
        }
    }

    #[test]
    fn the_kernel_reports_its_last_capability() {
        assert!(last_cap() >= 37, "CAP_AUDIT_READ exists since Linux 3.16");
    }
}
