//! The syscalls each kind of VMM thread may make, with argument checks
//! where the argument says what the call does (ioctl requests, `PROT_EXEC`,
//! socket families, `O_CREAT`).
//!
//! Measured with `strace -f -qq` on every VM test binary (boot, block,
//! hostile, lifecycle, vsock, bad_config, virtio_fs, virtio_net) and
//! `vmm/scripts/seccomp-syscalls.py`, which gives each syscall to the thread
//! kind that made it after the point where that thread now installs its
//! filter. A few calls the tests do not reach are added from the code
//! and named as such: `KVM_GET_REGS` (report of a KVM internal error),
//! `fdatasync` (virtio-blk flush), `shutdown` (vsock half-close),
//! `clock_gettime` (where the vDSO falls back to the syscall), `getrandom`
//! (a hash map's keys in a new thread), `fcntl(F_GETFD)` (debug builds
//! check an fd before closing it).

use seccompiler::{
    BackendError, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompRule,
};

use super::ThreadKind;

/// One syscall and its rules (any one rule matching allows the call; no
/// rules allow it whatever its arguments).
pub type SyscallRules = (i64, Vec<SeccompRule>);

// KVM ioctl request numbers (linux/kvm.h), from the same macros kvm-ioctls uses.
vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_REGS,
    kvm_bindings::KVMIO,
    0x81,
    kvm_bindings::kvm_regs
);

fn any(nr: libc::c_long) -> SyscallRules {
    (nr, Vec::new())
}

/// `nr` allowed only when argument `arg` (a 32-bit value) is one of `values`.
fn arg_in(nr: libc::c_long, arg: u8, values: &[u64]) -> Result<SyscallRules, BackendError> {
    let rules = values
        .iter()
        .map(|v| SeccompRule::new(vec![Cond::new(arg, Len::Dword, Op::Eq, *v)?]))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((nr, rules))
}

/// `nr` allowed only when none of `bits` is set in argument `arg`.
fn arg_without(nr: libc::c_long, arg: u8, bits: u64) -> Result<SyscallRules, BackendError> {
    let cond = Cond::new(arg, Len::Dword, Op::MaskedEq(bits), 0)?;
    Ok((nr, vec![SeccompRule::new(vec![cond])?]))
}

/// What every thread needs: the allocator, thread end, locks, log lines
/// on stderr, eventfd writes.
fn runtime() -> Result<Vec<SyscallRules>, BackendError> {
    let no_exec = libc::PROT_EXEC as u64;
    Ok(vec![
        any(libc::SYS_brk),
        arg_without(libc::SYS_mmap, 2, no_exec)?,
        arg_without(libc::SYS_mprotect, 2, no_exec)?,
        any(libc::SYS_munmap),
        any(libc::SYS_mremap),
        any(libc::SYS_madvise),
        any(libc::SYS_futex),
        any(libc::SYS_write),
        any(libc::SYS_close),
        any(libc::SYS_sigaltstack),
        any(libc::SYS_rt_sigprocmask),
        any(libc::SYS_exit),
        // Not measured: the vDSO answers here, but falls back to the
        // syscall on hosts whose clock source it cannot read.
        any(libc::SYS_clock_gettime),
        // Not measured: a hash map created in this thread seeds its keys.
        any(libc::SYS_getrandom),
        // Debug builds only: std checks that an fd is open before it
        // closes it (a thread dropping a file, a stream or a vCPU).
        arg_in(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64])?,
    ])
}

fn main_thread() -> Vec<SyscallRules> {
    vec![
        any(libc::SYS_poll),
        // signalfd and the wake eventfd.
        any(libc::SYS_read),
        // Removing the sockets on the way out.
        any(libc::SYS_unlink),
        any(libc::SYS_exit_group),
    ]
}

fn vcpu() -> Result<Vec<SyscallRules>, BackendError> {
    Ok(vec![
        arg_in(libc::SYS_ioctl, 1, &[KVM_RUN(), KVM_GET_REGS()])?,
        // virtio-blk requests and the serial log.
        any(libc::SYS_pread64),
        any(libc::SYS_pwrite64),
        // The serial log keeps its newest bytes.
        any(libc::SYS_ftruncate),
        // Not measured: virtio-blk flush.
        any(libc::SYS_fdatasync),
    ])
}

fn vsock() -> Result<Vec<SyscallRules>, BackendError> {
    Ok(vec![
        any(libc::SYS_epoll_wait),
        any(libc::SYS_epoll_ctl),
        any(libc::SYS_accept4),
        // Guest connects to `<uds>_<port>`: Unix sockets only.
        arg_in(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?,
        any(libc::SYS_connect),
        any(libc::SYS_read),
        any(libc::SYS_recvfrom),
        any(libc::SYS_sendto),
        // Not measured: half-close once the guest stops sending.
        any(libc::SYS_shutdown),
        arg_in(libc::SYS_ioctl, 1, &[libc::FIONBIO])?,
    ])
}

/// The virtio-fs device thread: vhost-user messages (with the memory
/// region's fd and the eventfds as SCM_RIGHTS) on an already connected
/// socket, eventfd reads, epoll.
fn vhost_user() -> Vec<SyscallRules> {
    vec![
        any(libc::SYS_epoll_wait),
        any(libc::SYS_epoll_ctl),
        any(libc::SYS_read),
        any(libc::SYS_sendmsg),
        any(libc::SYS_recvmsg),
    ]
}

/// A virtio-net device thread: reads and writes (in the runtime group) on
/// its tap and eventfds, epoll. No ioctl: the tap was set up when the VM
/// was built.
fn net() -> Vec<SyscallRules> {
    vec![
        any(libc::SYS_epoll_wait),
        any(libc::SYS_epoll_ctl),
        any(libc::SYS_read),
    ]
}

fn api_client() -> Result<Vec<SyscallRules>, BackendError> {
    Ok(vec![
        any(libc::SYS_read),
        any(libc::SYS_recvfrom),
        any(libc::SYS_sendto),
        // The stream's clone for the writer half.
        arg_in(libc::SYS_fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u64])?,
        // Idle timeouts; the condition is on the option name.
        arg_in(
            libc::SYS_setsockopt,
            2,
            &[libc::SO_RCVTIMEO as u64, libc::SO_SNDTIMEO as u64],
        )?,
        // fill-slot opens an existing drive file: never creates one.
        arg_without(
            libc::SYS_openat,
            2,
            (libc::O_CREAT | libc::O_TMPFILE) as u64,
        )?,
        any(libc::SYS_statx),
        any(libc::SYS_fstat),
    ])
}

/// The listener: accepts, answers "busy" on a non-blocking stream, and
/// starts client threads, whose first steps (glibc's and Rust's thread
/// start, then installing the client filter) run under this filter.
fn api_listener() -> Result<Vec<SyscallRules>, BackendError> {
    Ok(vec![
        any(libc::SYS_accept4),
        arg_in(libc::SYS_ioctl, 1, &[libc::FIONBIO])?,
        any(libc::SYS_clone3),
        any(libc::SYS_set_robust_list),
        any(libc::SYS_rseq),
        any(libc::SYS_gettid),
        any(libc::SYS_sched_getaffinity),
        arg_in(
            libc::SYS_prctl,
            0,
            &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
        )?,
        // Only to add a filter, which can only take rights away.
        arg_in(
            libc::SYS_seccomp,
            0,
            &[u64::from(libc::SECCOMP_SET_MODE_FILTER)],
        )?,
    ])
}

/// The allowlist of `kind`. Rules for the same syscall from several
/// groups are merged (any of them allows the call; a group that allows it
/// whatever the arguments wins).
pub fn rules(kind: ThreadKind) -> Result<Vec<SyscallRules>, BackendError> {
    let mut groups = runtime()?;
    match kind {
        ThreadKind::Main => groups.extend(main_thread()),
        ThreadKind::Vcpu => groups.extend(vcpu()?),
        ThreadKind::Vsock => groups.extend(vsock()?),
        ThreadKind::VhostUser => groups.extend(vhost_user()),
        ThreadKind::Net => groups.extend(net()),
        ThreadKind::ApiClient => groups.extend(api_client()?),
        // Client threads start under the listener's filter and add their
        // own: the listener's list must hold theirs.
        ThreadKind::Api => {
            groups.extend(api_client()?);
            groups.extend(api_listener()?);
        }
    }
    Ok(merge(groups))
}

fn merge(groups: Vec<SyscallRules>) -> Vec<SyscallRules> {
    let mut out: std::collections::BTreeMap<i64, Option<Vec<SeccompRule>>> = Default::default();
    for (nr, rules) in groups {
        let e = out.entry(nr).or_insert_with(|| Some(Vec::new()));
        match (e.as_mut(), rules.is_empty()) {
            // Already unconditional.
            (None, _) => {}
            (Some(_), true) => *e = None,
            (Some(v), false) => v.extend(rules),
        }
    }
    out.into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(kind: ThreadKind) -> Vec<i64> {
        rules(kind).unwrap().into_iter().map(|(nr, _)| nr).collect()
    }

    #[test]
    fn kvm_ioctl_numbers_match_linux() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
    }

    #[test]
    fn only_vcpu_threads_may_issue_kvm_ioctls_and_no_thread_may_exec() {
        for kind in ThreadKind::ALL {
            let r = rules(kind).unwrap();
            let ioctl = r.iter().find(|(nr, _)| *nr == libc::SYS_ioctl);
            match kind {
                ThreadKind::Vcpu => assert_eq!(ioctl.map(|(_, r)| r.len()), Some(2)),
                ThreadKind::Main
                | ThreadKind::ApiClient
                | ThreadKind::VhostUser
                | ThreadKind::Net => {
                    assert!(ioctl.is_none(), "{kind:?}")
                }
                // FIONBIO only.
                ThreadKind::Vsock | ThreadKind::Api => {
                    assert_eq!(ioctl.map(|(_, r)| r.len()), Some(1), "{kind:?}")
                }
            }
            let n = names(kind);
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_ptrace,
                libc::SYS_process_vm_writev,
                libc::SYS_kill,
                libc::SYS_mount,
                libc::SYS_setuid,
            ] {
                assert!(!n.contains(&forbidden), "{kind:?} allows {forbidden}");
            }
            // Conditional mmap: never unconditional.
            let mmap = r.iter().find(|(nr, _)| *nr == libc::SYS_mmap).unwrap();
            assert_eq!(mmap.1.len(), 1, "{kind:?}: mmap without PROT_EXEC only");
        }
    }

    #[test]
    fn only_the_control_listener_may_start_threads() {
        for kind in ThreadKind::ALL {
            let n = names(kind);
            assert_eq!(
                n.contains(&libc::SYS_clone3),
                kind == ThreadKind::Api,
                "{kind:?}"
            );
            assert!(!n.contains(&libc::SYS_clone), "{kind:?}");
        }
    }

    #[test]
    fn the_listener_allows_everything_a_client_thread_needs() {
        let api = rules(ThreadKind::Api).unwrap();
        for (nr, client_rules) in rules(ThreadKind::ApiClient).unwrap() {
            let (_, listener_rules) = api
                .iter()
                .find(|(n, _)| *n == nr)
                .unwrap_or_else(|| panic!("syscall {nr} missing from the listener"));
            // Unconditional in the listener, or the same conditions.
            assert!(
                listener_rules.is_empty() || listener_rules.len() >= client_rules.len(),
                "syscall {nr}"
            );
        }
    }

    #[test]
    fn the_vhost_user_thread_cannot_open_files_or_sockets() {
        // Its one socket is connected before privileges are dropped.
        let n = names(ThreadKind::VhostUser);
        for forbidden in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_openat,
            libc::SYS_open,
            libc::SYS_memfd_create,
        ] {
            assert!(!n.contains(&forbidden), "{forbidden}");
        }
        for needed in [libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_epoll_wait] {
            assert!(n.contains(&needed), "{needed}");
        }
    }

    #[test]
    fn the_net_thread_cannot_open_anything_or_configure_its_tap() {
        // The tap is opened, attached and configured before the thread
        // starts; the thread only moves frames.
        let n = names(ThreadKind::Net);
        for forbidden in [
            libc::SYS_ioctl,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_openat,
            libc::SYS_open,
            libc::SYS_sendmsg,
        ] {
            assert!(!n.contains(&forbidden), "{forbidden}");
        }
        for needed in [libc::SYS_read, libc::SYS_write, libc::SYS_epoll_wait] {
            assert!(n.contains(&needed), "{needed}");
        }
    }

    #[test]
    fn the_test_syscall_is_outside_every_allowlist() {
        for kind in ThreadKind::ALL {
            assert!(
                !names(kind).contains(&crate::api::TEST_SYSCALL_NR),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn merging_keeps_unconditional_rules_unconditional() {
        let cond = || SeccompRule::new(vec![Cond::new(1, Len::Dword, Op::Eq, 7).unwrap()]).unwrap();
        let m = merge(vec![
            (1, vec![cond()]),
            any(1),
            (1, vec![cond()]),
            (2, vec![cond()]),
            (2, vec![cond()]),
        ]);
        assert_eq!(m.len(), 2);
        assert!(m[0].1.is_empty());
        assert_eq!(m[1].1.len(), 2);
    }
}
