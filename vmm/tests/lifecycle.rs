//! Control socket, graceful and forced shutdown, SIGTERM, and many boots in
//! a row leaving nothing behind.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn api_call(sock: &std::path::Path, line: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).expect("connect control socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut reply = String::new();
    r.read_line(&mut reply).expect("control reply");
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad reply {reply:?}: {e}"))
}

fn spawn_guest(mode: &str, s: &Scratch, extra: &[&str]) -> VmmChild {
    let k = guest("linux64");
    let api = s.path("api.sock");
    let log = s.path("serial.log");
    let child = Command::new(VMM)
        .args(["--kernel", k.to_str().unwrap(), "--cmdline", mode])
        .args([
            "--api-sock",
            api.to_str().unwrap(),
            "--serial-log",
            log.to_str().unwrap(),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ampoule-vmm");
    VmmChild(child)
}

#[test]
fn control_socket_reports_status_and_graceful_shutdown_stops_the_guest() {
    if !have_kvm("control_socket_reports_status_and_graceful_shutdown_stops_the_guest") {
        return;
    }
    let s = Scratch::new("ctl");
    let mut child = spawn_guest("t=wait", &s, &["--vcpus", "2", "--memory-mib", "40"]);
    let api = s.path("api.sock");
    let log = s.path("serial.log");
    wait_for_path(&api, RUN_LIMIT);
    wait_for_text(&log, "WAITING", RUN_LIMIT);
    let st = api_call(&api, "status");
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["vcpus"], 2, "{st}");
    assert_eq!(st["memory_mib"], 40, "{st}");
    let bad = api_call(&api, "make-coffee");
    assert_eq!(bad["ok"], false, "{bad}");
    // Generous deadline: the guest must stop by itself (Ctrl-Alt-Del).
    let r = api_call(&api, "shutdown 30000");
    assert_eq!(r["ok"], true, "{r}");
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("CTRL-ALT-DEL"),
        "guest did not see the request: {text}"
    );
    assert!(!api.exists(), "control socket left behind");
}

#[test]
fn shutdown_deadline_stops_a_guest_that_ignores_it() {
    if !have_kvm("shutdown_deadline_stops_a_guest_that_ignores_it") {
        return;
    }
    let s = Scratch::new("force");
    let mut child = spawn_guest("t=hang", &s, &[]);
    let api = s.path("api.sock");
    wait_for_path(&api, RUN_LIMIT);
    wait_for_text(&s.path("serial.log"), "HANGING", RUN_LIMIT);
    let r = api_call(&api, "shutdown 100");
    assert_eq!(r["ok"], true, "{r}");
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
    assert!(!api.exists(), "control socket left behind");
}

#[test]
fn sigterm_shuts_down_and_removes_the_sockets() {
    if !have_kvm("sigterm_shuts_down_and_removes_the_sockets") {
        return;
    }
    let s = Scratch::new("term");
    let vsock = s.path("v.sock");
    let mut child = spawn_guest(
        "t=wait",
        &s,
        &[
            "--vsock-uds",
            vsock.to_str().unwrap(),
            "--shutdown-timeout-ms",
            "30000",
        ],
    );
    let api = s.path("api.sock");
    wait_for_path(&api, RUN_LIMIT);
    wait_for_path(&vsock, RUN_LIMIT);
    wait_for_text(&s.path("serial.log"), "WAITING", RUN_LIMIT);
    let pid = child.id() as libc::pid_t;
    // SAFETY: sending SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(s.path("serial.log")).unwrap();
    assert!(text.contains("CTRL-ALT-DEL"), "{text}");
    assert_eq!(s.entries(), vec!["serial.log".to_string()]);
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{name}: {cmd}"));
            }
        }
    }
    found
}

#[test]
fn fifty_boots_in_a_row_leave_no_process_socket_or_file_behind() {
    if !have_kvm("fifty_boots_in_a_row_leave_no_process_socket_or_file_behind") {
        return;
    }
    let s = Scratch::new("fifty");
    let k = guest("pvh");
    let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    for i in 0..50 {
        let api = s.path("api.sock");
        let vsock = s.path("v.sock");
        let log = s.path("serial.log");
        let o = run_vmm(&[
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            "t=hello",
            "--vcpus",
            if i % 2 == 0 { "1" } else { "2" },
            "--api-sock",
            api.to_str().unwrap(),
            "--vsock-uds",
            vsock.to_str().unwrap(),
            "--serial-log",
            log.to_str().unwrap(),
        ]);
        assert_ok(&o);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("DONE"), "boot {i}: {text}");
        assert_eq!(s.entries(), vec!["serial.log".to_string()], "boot {i}");
        std::fs::remove_file(&log).unwrap();
    }
    assert!(s.entries().is_empty());
    let left = processes_mentioning(&s.0.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let fds_after = std::fs::read_dir("/proc/self/fd").unwrap().count();
    assert!(
        fds_after <= fds_before + 8,
        "fd leak: {fds_before} -> {fds_after}"
    );
}
