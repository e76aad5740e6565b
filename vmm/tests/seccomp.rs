//! Seccomp on by default: every thread of a running VMM (main, vCPU, vsock,
//! control listener, control client) is in filter mode with no_new_privs,
//! and `--no-seccomp` leaves them all unfiltered. (That a syscall outside
//! the allowlist kills the VMM is in `seccomp_kill.rs`, which needs the
//! `test-syscall` feature.)

mod common;
use common::*;

use std::os::unix::net::UnixStream;

/// Runs the hanging guest, holds one control client open, and returns the
/// threads' status while the client is served.
fn threads_of_running_vmm(s: &Scratch, extra: &[&str]) -> Vec<ThreadStatus> {
    let mut child = spawn_with_sockets(s, "t=hang", extra);
    wait_for_text(&s.path("serial.log"), "HANGING", RUN_LIMIT);
    let conn = UnixStream::connect(s.path("api.sock")).expect("connect control socket");
    // An answer means the client thread is running (and filtered).
    let st = api_send(&conn, "status").expect("status reply");
    assert_eq!(st["ok"], true, "{st}");
    // Tasks the kernel's KVM starts in the process (kvm-nx-lpage-recovery)
    // run no user code: when they are created, and so whose filters they
    // copy, depends on the kernel.
    let threads: Vec<ThreadStatus> = thread_statuses(child.id())
        .into_iter()
        .filter(|t| !t.name.starts_with("kvm-"))
        .collect();
    let r = api_send(&conn, "shutdown 100").expect("shutdown reply");
    assert_eq!(r["ok"], true, "{r}");
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
    threads
}

fn names(threads: &[ThreadStatus]) -> Vec<&str> {
    let mut n: Vec<&str> = threads.iter().map(|t| t.name.as_str()).collect();
    n.sort();
    n
}

#[test]
fn every_vmm_thread_runs_under_its_seccomp_filter_with_no_new_privs() {
    if !have_kvm("every_vmm_thread_runs_under_its_seccomp_filter_with_no_new_privs") {
        return;
    }
    let s = Scratch::new("seccomp-on");
    let threads = threads_of_running_vmm(&s, &[]);
    assert_eq!(
        names(&threads),
        ["ampoule-vmm", "api", "api-conn", "vcpu0", "vsock"],
        "{threads:?}"
    );
    for t in &threads {
        assert_eq!(t.seccomp, 2, "{t:?}");
        assert_eq!(t.no_new_privs, 1, "{t:?}");
        // A client thread adds its own filter to the listener's.
        let want = if t.name == "api-conn" { 2 } else { 1 };
        assert_eq!(t.seccomp_filters, want, "{t:?}");
    }
}

#[test]
fn no_seccomp_flag_leaves_every_thread_unfiltered() {
    if !have_kvm("no_seccomp_flag_leaves_every_thread_unfiltered") {
        return;
    }
    let s = Scratch::new("seccomp-off");
    let threads = threads_of_running_vmm(&s, &["--no-seccomp"]);
    assert_eq!(names(&threads).len(), 5, "{threads:?}");
    for t in &threads {
        assert_eq!((t.seccomp, t.seccomp_filters), (0, 0), "{t:?}");
    }
}
