//! `--uid`/`--gid`: the VMM drops to that identity with no capabilities
//! once everything is open, and the guest's devices keep working.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

/// A `/proc/<pid>/task/<tid>/status` line's value, for every thread.
fn status_lines(pid: u32, field: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc task dir") {
        let Ok(text) = std::fs::read_to_string(e.expect("task").path().join("status")) else {
            continue;
        };
        let name = text.lines().next().unwrap_or_default().to_string();
        if name.contains("kvm-") {
            // The kernel's KVM worker runs no user code.
            continue;
        }
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field}"));
        out.push(v.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    out
}

#[test]
fn uid_and_gid_flags_drop_the_running_vmm_to_that_identity_without_capabilities() {
    if !have_kvm("uid_and_gid_flags_drop_the_running_vmm_to_that_identity_without_capabilities") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: dropping privileges needs root");
        return;
    }
    let s = Scratch::new("jail");
    // The dropped VMM removes its sockets on the way out: the directory is
    // the new identity's, as the runtime would make it.
    std::os::unix::fs::chown(&s.0, Some(65534), Some(65533)).expect("chown scratch dir");
    let mut child = spawn_with_sockets(&s, "t=vsock", &["--uid", "65534", "--gid", "65533"]);
    wait_for_text(&s.path("serial.log"), "VSOCK-READY", RUN_LIMIT);
    // The vsock thread serves the guest after the drop.
    let mut c = UnixStream::connect(s.path("v.sock")).expect("connect vsock socket");
    c.set_read_timeout(Some(RUN_LIMIT)).unwrap();
    c.write_all(b"CONNECT 1024\nafter the drop").unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).expect("OK line");
    assert!(line.starts_with("OK "), "{line:?}");
    let mut got = vec![0u8; 14];
    r.read_exact(&mut got).expect("echo");
    assert_eq!(got, b"after the drop");

    let conn = UnixStream::connect(s.path("api.sock")).expect("connect control socket");
    assert_eq!(api_send(&conn, "status").expect("status")["ok"], true);
    let pid = child.id();
    let threads = status_lines(pid, "Uid").len();
    assert_eq!(threads, 5, "main, vcpu0, vsock, api, api-conn");
    for (field, want) in [
        ("Uid", "65534 65534 65534 65534"),
        ("Gid", "65533 65533 65533 65533"),
        ("Groups", ""),
        ("CapInh", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapEff", "0000000000000000"),
        ("CapBnd", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
    ] {
        assert_eq!(status_lines(pid, field), vec![want; threads], "{field}");
    }
    assert_eq!(
        api_send(&conn, "shutdown 100").expect("shutdown")["ok"],
        true
    );
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
    assert_eq!(s.entries(), ["serial.log"], "sockets left behind");
}

#[test]
fn uid_without_gid_is_refused() {
    let k = guest("linux64");
    let o = run_vmm(&["--kernel", k.to_str().unwrap(), "--uid", "65534"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("uid and gid must be given together"),
        "{}",
        stderr(&o)
    );
}
