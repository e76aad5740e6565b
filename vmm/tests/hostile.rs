//! A hostile guest: writes to read-only registers, invalid queue sizes and
//! ring addresses, descriptors outside memory, huge lengths, looping and
//! out-of-range chains, oversized and forged vsock packets. The VMM must
//! keep running and keep serving both devices and its control socket.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

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
