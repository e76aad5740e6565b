//! A syscall outside the allowlist kills the VMM with SIGSYS. The trigger
//! is the `test-syscall` control command, compiled in only with the
//! `test-syscall` feature (this test target requires it):
//! `cargo test --release -p ampoule-vmm --features test-syscall --test seccomp_kill`.

mod common;
use common::*;

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;

#[test]
fn a_syscall_outside_the_allowlist_kills_the_vmm_with_sigsys() {
    if !have_kvm("a_syscall_outside_the_allowlist_kills_the_vmm_with_sigsys") {
        return;
    }
    let s = Scratch::new("sigsys");
    let mut child = spawn_with_sockets(&s, "t=hang", &[]);
    wait_for_text(&s.path("serial.log"), "HANGING", RUN_LIMIT);
    let conn = UnixStream::connect(s.path("api.sock")).expect("connect control socket");
    assert_eq!(api_send(&conn, "status").expect("status")["ok"], true);
    let reply = api_send(&conn, "test-syscall");
    assert!(reply.is_none(), "the VMM answered: {reply:?}");
    let status = child.wait(RUN_LIMIT);
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
}

#[test]
fn without_seccomp_the_test_syscall_is_made_and_answered() {
    if !have_kvm("without_seccomp_the_test_syscall_is_made_and_answered") {
        return;
    }
    let s = Scratch::new("nosigsys");
    let mut child = spawn_with_sockets(&s, "t=hang", &["--no-seccomp"]);
    wait_for_text(&s.path("serial.log"), "HANGING", RUN_LIMIT);
    let conn = UnixStream::connect(s.path("api.sock")).expect("connect control socket");
    let r = api_send(&conn, "test-syscall").expect("test-syscall reply");
    // getppid in the VMM: this test process.
    assert_eq!(r["ppid"], std::process::id(), "{r}");
    assert_eq!(
        api_send(&conn, "shutdown 100").expect("shutdown")["ok"],
        true
    );
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
}
