//! A hostile guest: writes to read-only registers, invalid queue sizes and
//! ring addresses, descriptors outside memory, huge lengths, looping and
//! out-of-range chains, oversized and forged vsock packets. The VMM must
//! keep running and keep serving both devices and its control socket.
//!
//! Also what a guest or a local client could use to exhaust or stall the
//! VMM: a TX queue flood, a guest closing a connection whose host reader
//! does not read, a serial flood, a huge shutdown deadline, many idle
//! control clients, a permissive umask, and GET_ID revealing host paths.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IO_LIMIT: Duration = Duration::from_secs(30);

/// One control command on a fresh connection; the reply line.
fn api_call(sock: &Path, line: &str) -> serde_json::Value {
    let mut c = UnixStream::connect(sock).expect("connect control socket");
    c.set_read_timeout(Some(IO_LIMIT)).unwrap();
    c.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(c)
        .read_line(&mut reply)
        .expect("control reply");
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad reply {reply:?}: {e}"))
}

/// Connects to guest port 1024 (the test guest's echo server) and checks
/// that `data` comes back.
fn vsock_echo(uds: &Path, data: &[u8]) {
    let mut c = UnixStream::connect(uds).expect("connect vsock socket");
    c.set_read_timeout(Some(IO_LIMIT)).unwrap();
    c.write_all(b"CONNECT 1024\n").unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).expect("OK line");
    assert!(line.starts_with("OK "), "{line:?}");
    c.write_all(data).unwrap();
    let mut got = vec![0u8; data.len()];
    r.read_exact(&mut got).expect("echo");
    assert_eq!(got, data);
}

/// A `/proc/<pid>/status` field in its unit (kB for memory).
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn hostile_guest_requests_fail_alone_and_the_vmm_keeps_serving() {
    if !have_kvm("hostile_guest_requests_fail_alone_and_the_vmm_keeps_serving") {
        return;
    }
    let s = Scratch::new("hostile");
    let disk = s.path("disk.img");
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 256) as u8).collect();
    std::fs::write(&disk, &data).unwrap();
    let uds = s.path("v.sock");
    let api = s.path("api.sock");
    let log = s.path("serial.log");
    let k = guest("linux64");
    let mut child = VmmChild(
        Command::new(VMM)
            .args(["--kernel", k.to_str().unwrap(), "--cmdline", "t=hostile"])
            .args(["--drive", &format!("path={}", disk.display())])
            .args([
                "--vsock-uds",
                uds.to_str().unwrap(),
                "--api-sock",
                api.to_str().unwrap(),
            ])
            .args(["--serial-log", log.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = wait_for_text(&log, "VSOCK-READY", RUN_LIMIT);
    assert!(
        out.contains("HOSTILE ro-registers magic=0x74726976 id=2"),
        "{out}"
    );
    // The device refused the bad rings (DEVICE_NEEDS_RESET set).
    let status_line = out
        .lines()
        .find(|l| l.starts_with("HOSTILE bad-rings"))
        .unwrap_or_default();
    let status =
        u32::from_str_radix(status_line.rsplit("0x").next().unwrap_or("0"), 16).unwrap_or(0);
    assert_ne!(status & 0x40, 0, "{status_line}");
    let want = format!("HOSTILE blk-after read=0 fnv={:#x}", fnv1a(&data[..512]));
    assert!(out.contains(&want), "want {want}\n{out}");
    assert!(out.contains("HOSTILE-DONE"), "{out}");
    assert_eq!(child.0.try_wait().unwrap(), None, "the VMM died");

    // vsock still serves.
    let mut c = UnixStream::connect(&uds).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"CONNECT 1024\n").unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK "), "{line:?}");
    c.write_all(b"still alive").unwrap();
    let mut echo = [0u8; 11];
    r.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still alive");

    // The control socket still serves.
    let mut a = UnixStream::connect(&api).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    a.write_all(b"status\n").unwrap();
    let mut ar = BufReader::new(a.try_clone().unwrap());
    let mut st = String::new();
    ar.read_line(&mut st).unwrap();
    assert!(st.contains("\"state\":\"running\""), "{st}");
    a.write_all(b"shutdown 30000\n").unwrap();
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read(&disk).unwrap(), data, "the disk changed");
}

/// Peak resident memory the VMM may reach while a guest floods its vsock
/// TX queue (a 32 MiB guest; the flood carries 2.5 GiB of data).
const FLOOD_RSS_LIMIT_KB: u64 = 64 * 1024;

#[test]
fn vsock_tx_flood_keeps_vmm_memory_bounded_and_the_device_serving() {
    if !have_kvm("vsock_tx_flood_keeps_vmm_memory_bounded_and_the_device_serving") {
        return;
    }
    let s = Scratch::new("txflood");
    let mut child = spawn_with_sockets(&s, "t=vsock txflood=40000", &["--memory-mib", "32"]);
    let out = wait_for_text(&s.path("serial.log"), "VSOCK-READY", RUN_LIMIT);
    assert!(out.contains("VSOCK flood done n=40000"), "{out}");
    let peak = proc_status(child.id(), "VmHWM");
    println!("peak RSS during the TX flood: {peak} kB");
    assert!(
        peak < FLOOD_RSS_LIMIT_KB,
        "the VMM's peak RSS reached {peak} kB during the flood (limit {FLOOD_RSS_LIMIT_KB} kB)"
    );
    // The vsock thread is free again: a new connection is served.
    vsock_echo(&s.path("v.sock"), b"after the flood");
    assert_eq!(api_call(&s.path("api.sock"), "shutdown 100")["ok"], true);
    assert!(child.wait(RUN_LIMIT).success());
}

#[test]
fn guest_closing_into_a_stalled_host_reader_does_not_stall_other_connections() {
    if !have_kvm("guest_closing_into_a_stalled_host_reader_does_not_stall_other_connections") {
        return;
    }
    let s = Scratch::new("stall");
    // The host side accepts the guest's connection and does not read it
    // until told to.
    let listener = UnixListener::bind(s.path("v.sock_5557")).unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        go_rx.recv().unwrap();
        c.set_read_timeout(Some(IO_LIMIT)).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got)
            .expect("reading the stalled connection");
        got
    });
    let mut child = spawn_with_sockets(&s, "t=vsock stallport=5557", &[]);
    let out = wait_for_text(&s.path("serial.log"), "VSOCK-READY", RUN_LIMIT);
    let sent: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("VSOCK stall sent="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stall line:\n{out}"));
    // More than a Unix socket buffer holds: the VMM keeps the rest.
    assert!(sent >= 256 * 1024, "{out}");
    // While that reader sleeps, other connections still flow.
    vsock_echo(&s.path("v.sock"), b"other connections keep flowing");
    vsock_echo(&s.path("v.sock"), &[7u8; 100_000]);
    // The slow reader then gets everything the guest sent, and the end.
    go_tx.send(()).unwrap();
    let got = reader.join().unwrap();
    assert_eq!(got.len(), sent);
    let want: Vec<u8> = (0..sent).map(|i| (i * 7 + 3) as u8).collect();
    assert!(got == want, "the stalled connection's data differs");
    assert_eq!(api_call(&s.path("api.sock"), "shutdown 100")["ok"], true);
    assert!(child.wait(RUN_LIMIT).success());
}

#[test]
fn serial_flood_leaves_the_log_capped_with_the_newest_output() {
    if !have_kvm("serial_flood_leaves_the_log_capped_with_the_newest_output") {
        return;
    }
    let s = Scratch::new("serial");
    let log = s.path("serial.log");
    let k = guest("linux64");
    let o = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "t=serialflood bytes=12000",
        "--serial-log",
        log.to_str().unwrap(),
        // The smallest limit: every byte is a slow port-I/O exit here.
        "--serial-log-max-bytes",
        "4096",
    ]);
    assert_ok(&o);
    let text = std::fs::read(&log).unwrap();
    assert!(
        text.len() <= 4096,
        "the serial log holds {} bytes",
        text.len()
    );
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.starts_with("[ampoule-vmm: older serial output dropped]\n"),
        "{}",
        &text[..200]
    );
    assert!(
        text.ends_with("SERIAL-FLOOD-END\nDONE\n"),
        "the newest output is kept"
    );
    assert!(
        !text.contains("SERIAL-FLOOD 0 "),
        "the oldest output is dropped"
    );
    assert!(text.len() >= 2048 - 100, "at least half the limit is kept");
}

#[test]
fn huge_shutdown_deadline_does_not_kill_the_vmm() {
    if !have_kvm("huge_shutdown_deadline_does_not_kill_the_vmm") {
        return;
    }
    let s = Scratch::new("deadline");
    let mut child = spawn_with_sockets(&s, "t=hang", &[]);
    let api = s.path("api.sock");
    wait_for_text(&s.path("serial.log"), "HANGING", RUN_LIMIT);
    let r = api_call(&api, &format!("shutdown {}", u64::MAX));
    assert_eq!(r["ok"], true, "{r}");
    let st = api_call(&api, "status");
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(child.0.try_wait().unwrap(), None, "the VMM died");
    // A shorter deadline still ends it (the guest ignores Ctrl-Alt-Del).
    assert_eq!(api_call(&api, "shutdown 100")["ok"], true);
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
}

#[test]
fn control_socket_serves_a_bounded_number_of_clients() {
    if !have_kvm("control_socket_serves_a_bounded_number_of_clients") {
        return;
    }
    const MAX_CLIENTS: usize = 16;
    let s = Scratch::new("clients");
    let mut child = spawn_with_sockets(&s, "t=hang", &[]);
    let api = s.path("api.sock");
    wait_for_text(&s.path("serial.log"), "HANGING", RUN_LIMIT);
    let threads_before = proc_status(child.id(), "Threads");
    let mut idle: Vec<UnixStream> = (0..3 * MAX_CLIENTS)
        .map(|_| UnixStream::connect(&api).expect("connect control socket"))
        .collect();
    let (mut served, mut busy) = (0, 0);
    for c in &mut idle {
        c.set_read_timeout(Some(IO_LIMIT)).unwrap();
        // A refused client may already be closed: the write may fail.
        let _ = c.write_all(b"status\n");
        let mut line = String::new();
        BufReader::new(&*c)
            .read_line(&mut line)
            .expect("a reply line");
        if line.contains("\"state\":\"running\"") {
            served += 1;
        } else if line.contains("too many control connections") {
            busy += 1;
        } else {
            panic!("unexpected reply {line:?}");
        }
    }
    assert_eq!((served, busy), (MAX_CLIENTS, 2 * MAX_CLIENTS));
    let threads = proc_status(child.id(), "Threads");
    assert!(
        threads <= threads_before + MAX_CLIENTS as u64,
        "{threads} threads for {} clients (before: {threads_before})",
        idle.len()
    );
    // Once the clients leave, new ones are served again.
    drop(idle);
    let start = Instant::now();
    loop {
        let r = api_call(&api, "status");
        if r["ok"] == true {
            break;
        }
        assert!(
            start.elapsed() < RUN_LIMIT,
            "the control socket stays busy: {r}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(api_call(&api, "shutdown 100")["ok"], true);
    assert!(child.wait(RUN_LIMIT).success());
}

#[test]
fn sockets_are_owner_only_whatever_the_umask() {
    if !have_kvm("sockets_are_owner_only_whatever_the_umask") {
        return;
    }
    let s = Scratch::new("umask");
    let k = guest("linux64");
    let api = s.path("api.sock");
    let uds = s.path("v.sock");
    let mut child = VmmChild(
        Command::new("sh")
            .args(["-c", "umask 000 && exec \"$0\" \"$@\"", VMM])
            .args(["--kernel", k.to_str().unwrap(), "--cmdline", "t=hang"])
            .args(["--vsock-uds", uds.to_str().unwrap()])
            .args(["--api-sock", api.to_str().unwrap()])
            .args(["--serial-log", s.path("serial.log").to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_text(&s.path("serial.log"), "HANGING", RUN_LIMIT);
    for p in [&api, &uds] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", p.display());
    }
    assert_eq!(api_call(&api, "shutdown 100")["ok"], true);
    assert!(child.wait(RUN_LIMIT).success());
}

#[test]
fn blk_get_id_answers_the_drive_id_not_the_host_file_name() {
    if !have_kvm("blk_get_id_answers_the_drive_id_not_the_host_file_name") {
        return;
    }
    let s = Scratch::new("blkid");
    let disk = s.path("host-secret.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let k = guest("linux64");
    let o = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "t=blkid",
        "--drive",
        &format!("path={},id=rootfs", disk.display()),
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("BLKID status=0 id=rootfs\n"), "{out}");
    assert!(!out.contains("host-secret"), "{out}");
}

#[test]
fn guest_connect_to_a_host_listener_with_a_full_backlog_is_refused_without_blocking() {
    if !have_kvm("guest_connect_to_a_host_listener_with_a_full_backlog_is_refused_without_blocking")
    {
        return;
    }
    use nix::sys::socket::{bind, connect, listen, socket};
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let s = Scratch::new("backlog");
    // A host listener that never accepts, its backlog filled up.
    let path = s.path("v.sock_5558");
    let unix = || {
        socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap()
    };
    let listener = unix();
    bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    listen(&listener, Backlog::new(1).unwrap()).unwrap();
    let mut queued = Vec::new();
    loop {
        let c = unix();
        match connect(c.as_raw_fd(), &UnixAddr::new(&path).unwrap()) {
            Ok(()) => queued.push(c),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(queued.len() < 64, "the backlog does not fill");
    }
    let mut child = spawn_with_sockets(&s, "t=vsock hostport=5558", &[]);
    let out = wait_for_text(&s.path("serial.log"), "VSOCK-READY", RUN_LIMIT);
    assert!(out.contains("VSOCK connect refused"), "{out}");
    // The vsock thread did not wait for that listener.
    vsock_echo(&s.path("v.sock"), b"not blocked by a full backlog");
    assert_eq!(api_call(&s.path("api.sock"), "shutdown 100")["ok"], true);
    assert!(child.wait(RUN_LIMIT).success());
    drop(queued);
}
