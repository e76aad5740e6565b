//! The seccomp allowlist of `vhost-device-vsock`, installed by the jail
//! right before exec (so it allows `execve`, the dynamic loader's start-up
//! and everything the device does afterwards). Any other system call kills
//! the process (`SECCOMP_RET_KILL_PROCESS`, SIGSYS).
//!
//! The list is what `strace -f` recorded over a real run of
//! vhost-device-vsock (`ampoule check --boot` on the qemu backend: start, the
//! guest's readiness connection, the runtime's agent connection, Check,
//! Shutdown), plus the calls of the paths that run did not take: process
//! exit (`exit_group`), a panic's abort (`getpid`, `tgkill`), a signal
//! handler's return (`rt_sigreturn`), `mremap` (a large realloc),
//! `shutdown` (a connection closed half-way). Anything else is killed.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use super::JailError;

/// Name and number of every system call vhost-device-vsock may make.
pub const VHOST_VSOCK_ALLOWLIST: &[(&str, libc::c_long)] = &[
    // exec and the dynamic loader
    ("execve", libc::SYS_execve),
    ("brk", libc::SYS_brk),
    ("arch_prctl", libc::SYS_arch_prctl),
    ("access", libc::SYS_access),
    ("openat", libc::SYS_openat),
    ("newfstatat", libc::SYS_newfstatat),
    ("read", libc::SYS_read),
    ("pread64", libc::SYS_pread64),
    ("mmap", libc::SYS_mmap),
    ("mprotect", libc::SYS_mprotect),
    ("munmap", libc::SYS_munmap),
    ("close", libc::SYS_close),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("prlimit64", libc::SYS_prlimit64),
    ("getrandom", libc::SYS_getrandom),
    // the Rust runtime: signals, threads, memory
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("poll", libc::SYS_poll),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("clone3", libc::SYS_clone3),
    ("futex", libc::SYS_futex),
    ("madvise", libc::SYS_madvise),
    ("mremap", libc::SYS_mremap),
    ("prctl", libc::SYS_prctl),
    ("gettid", libc::SYS_gettid),
    ("getpid", libc::SYS_getpid),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("tgkill", libc::SYS_tgkill),
    // output (logs) and fds
    ("write", libc::SYS_write),
    ("fcntl", libc::SYS_fcntl),
    ("dup", libc::SYS_dup),
    ("ioctl", libc::SYS_ioctl),
    ("lseek", libc::SYS_lseek),
    // sockets: the vhost-user socket, the hybrid vsock listener, guest
    // connections to <uds>_<port>
    ("socket", libc::SYS_socket),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("accept4", libc::SYS_accept4),
    ("connect", libc::SYS_connect),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvfrom", libc::SYS_recvfrom),
    ("sendto", libc::SYS_sendto),
    ("shutdown", libc::SYS_shutdown),
    ("unlink", libc::SYS_unlink),
    // the event loop
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("eventfd2", libc::SYS_eventfd2),
];

/// The filter: every call of the allowlist except those named in `deny`
/// (a test hook proving that a call outside the list kills the process).
pub fn vhost_vsock_filter(deny: &[String]) -> Result<BpfProgram, JailError> {
    for d in deny {
        if !VHOST_VSOCK_ALLOWLIST.iter().any(|(n, _)| n == d) {
            return Err(JailError::Seccomp(format!(
                "{d:?} is not in vhost-device-vsock's allowlist"
            )));
        }
    }
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = VHOST_VSOCK_ALLOWLIST
        .iter()
        .filter(|(name, _)| !deny.iter().any(|d| d == name))
        .map(|(_, nr)| (*nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| JailError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| JailError::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_has_no_duplicates_and_keeps_dangerous_calls_out() {
        let mut names: Vec<&str> = VHOST_VSOCK_ALLOWLIST.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicates");
        for bad in [
            "ptrace",
            "mount",
            "setuid",
            "fork",
            "vfork",
            "kill",
            "process_vm_writev",
            "bpf",
            "unshare",
            "setns",
            "open_by_handle_at",
            "init_module",
        ] {
            assert!(!names.contains(&bad), "{bad} allowed");
        }
    }

    #[test]
    fn denying_a_call_changes_the_program_and_unknown_names_are_refused() {
        let all = vhost_vsock_filter(&[]).unwrap();
        let less = vhost_vsock_filter(&["connect".into()]).unwrap();
        assert_ne!(all, less);
        let err = vhost_vsock_filter(&["ptrace".into()]).unwrap_err();
        assert!(err.to_string().contains("ptrace"), "{err}");
    }
}
