//! virtio-net on a tap, against the real kernel network stack: each test
//! makes its own network namespace (`ip netns add ampoule-nettest-...`)
//! with a tap `tap0` at 10.77.0.1/24 in it, and removes it at the end,
//! whatever happens. The host's own network namespace is never changed.
//!
//! - The test guest (10.77.0.2) sends an ARP request and an ICMP echo
//!   request through a tap the VMM opens by name inside the namespace;
//!   the host kernel's replies come back through it. Deleting the tap
//!   then takes the NIC's link down, and the VMM goes on.
//! - A hostile guest posts oversized, looping, out-of-memory and other bad
//!   TX chains, and malformed and 4-byte RX buffers that the host fills
//!   with frames (an `AF_PACKET` socket on the tap), on a tap fd the test
//!   opened in the namespace and passed to a VMM outside it: the VMM keeps
//!   running, answers its control socket, does not poll the tap while the
//!   guest has no buffers, and the guest still exchanges an ARP afterwards.
//! - Bad `--net` values are clear errors that create no interface.
//!
//! These tests need root, `ip` (iproute2) and `/dev/net/tun`; where they
//! are missing the tests fail and say why.

mod common;
use common::*;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const TAP: &str = "tap0";
const HOST_ADDR: &str = "10.77.0.1/24";

/// Runs `ip` with `args`; its stdout, or a panic naming the failure.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `ip {}`: {e} (is iproute2 installed?)",
                args.join(" ")
            )
        });
    assert!(
        out.status.success(),
        "`ip {}` failed ({:?}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of this test, deleted on drop.
struct NetNs {
    name: String,
    file: File,
}

impl NetNs {
    fn new(tag: &str) -> NetNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ampoule-nettest-{}-{tag}{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the virtio-net tests need root to create a network namespace and a tap"
        );
        assert!(
            Path::new("/dev/net/tun").exists(),
            "the virtio-net tests need /dev/net/tun"
        );
        ip(&["netns", "add", &name]);
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                panic!("opening /run/netns/{name}: {e}");
            }
        };
        NetNs { name, file }
    }

    /// `ip -n NS args...`
    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// Creates tap `name` with `addr`, up, IPv6 off (no router
    /// solicitations or MLD reports in the guest's way).
    fn add_tap(&self, name: &str, addr: &str) {
        for key in ["default", "all"] {
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.name, "sysctl", "-qw"])
                .arg(format!("net.ipv6.conf.{key}.disable_ipv6=1"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        self.ip(&["addr", "add", addr, "dev", name]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// The tap's MAC, from its sysfs inside the namespace.
    fn mac(&self, name: &str) -> String {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "cat",
            &format!("/sys/class/net/{name}/address"),
        ])
        .trim()
        .to_string()
    }

    /// Runs `f` on a thread that entered the namespace.
    fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on an open namespace fd; it changes only
                // this thread's network namespace.
                let r = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in the namespace")
        })
    }

    /// Makes `cmd`'s process start inside the namespace.
    fn enter(&self, cmd: &mut Command) {
        let fd = self.file.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes the setns syscall (async-signal-safe) on an fd the
        // parent keeps open until the spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Names of the interfaces in the namespace.
    fn links(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect();
        v.sort();
        v
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// `struct ifreq` with `ifr_flags`.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Attaches a new /dev/net/tun fd to tap `name` of the calling thread's
/// namespace with `flags`.
fn open_tap(name: &str, flags: libc::c_int) -> OwnedFd {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("opening /dev/net/tun");
    let mut req = IfReq {
        name: [0; 16],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq (40 bytes, the
    // layout of IfReq) at a live local.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(
        r,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    OwnedFd::from(f)
}

/// Sends `count` broadcast frames of 60 bytes (ethertype 0x88b5) out of
/// `tap` with an AF_PACKET socket in `ns`: they go to the tap's reader,
/// the VMM.
fn send_frames(ns: &NetNs, tap: &str, count: usize) {
    ns.run_in(|| {
        let name = std::ffi::CString::new(tap).unwrap();
        // SAFETY: a valid NUL-terminated string, only read.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "no {tap} in the namespace");
        // SAFETY: plain socket creation, no pointers.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` was just returned by socket and is owned by no one else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = 0x88b5u16.to_be();
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].fill(0xff);
        for i in 0..count {
            let mut frame = [0u8; 60];
            frame[..6].fill(0xff);
            frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x99]);
            frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
            frame[14] = i as u8;
            // SAFETY: the buffer and the address are live locals of the
            // sizes given.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(n, 60, "sendto: {}", std::io::Error::last_os_error());
        }
    })
}

/// CPU time (user + system, in clock ticks) of thread `name` of `pid`.
fn thread_ticks(pid: u32, name: &str) -> u64 {
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let Ok(e) = e else { continue };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).expect("stat");
        let rest = &stat[stat.rfind(')').expect("comm end") + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        return f[11] + f[12];
    }
    panic!("no thread {name} in process {pid}");
}

/// Runs the VMM with `args` inside `ns` to completion (at most RUN_LIMIT).
fn run_in_ns(ns: &NetNs, args: &[&str], keep_fd: Option<RawFd>) -> Output {
    let mut cmd = Command::new(VMM);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ns.enter(&mut cmd);
    if let Some(fd) = keep_fd {
        inherit(&mut cmd, fd);
    }
    let child = cmd.spawn().expect("spawning ampoule-vmm");
    let mut child = VmmChild(child);
    let mut so = child.0.stdout.take().expect("stdout");
    let mut se = child.0.stderr.take().expect("stderr");
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let status = child.wait(RUN_LIMIT);
    Output {
        status,
        stdout: t1.join().unwrap_or_default(),
        stderr: t2.join().unwrap_or_default(),
    }
}

/// Lets `cmd`'s process inherit `fd` under the same number.
fn inherit(cmd: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // clears FD_CLOEXEC (fcntl, async-signal-safe) on an fd the parent
    // keeps open until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The `net` entry of the status reply.
fn net_status(conn: &UnixStream) -> serde_json::Value {
    let st = api_send(conn, "status").expect("status reply");
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["state"], "running", "{st}");
    st["net"][0].clone()
}

#[test]
fn guest_exchanges_arp_and_icmp_echo_with_the_host_through_a_tap_opened_by_name() {
    if !have_kvm("guest_exchanges_arp_and_icmp_echo_with_the_host_through_a_tap_opened_by_name") {
        return;
    }
    let ns = NetNs::new("arp");
    ns.add_tap(TAP, HOST_ADDR);
    let tap_mac = ns.mac(TAP);
    let guest_mac = "02:aa:00:00:00:02";
    let s = Scratch::new("net");
    let log = s.path("serial.log");
    let api = s.path("api.sock");
    let k = guest("linux64");
    let mut cmd = Command::new(VMM);
    cmd.args(["--kernel", k.to_str().unwrap(), "--cmdline", "t=net"])
        .args(["--net", &format!("tap={TAP},mac={guest_mac}")])
        .args(["--api-sock", api.to_str().unwrap()])
        .args(["--serial-log", log.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    ns.enter(&mut cmd);
    let mut child = VmmChild(cmd.spawn().expect("spawn ampoule-vmm"));
    let out = wait_for_text(&log, "WAITING", RUN_LIMIT);
    for want in [
        format!("NET mac={guest_mac} status=1 features-mac=1 features-status=1"),
        // The host kernel's ARP reply, sent by the tap's MAC.
        format!("NET arp-reply from={tap_mac} ip=10.77.0.1 eth-src-matches=1"),
        "NET icmp-reply from=10.77.0.1 seq=1 ip-csum-ok=1 icmp-csum-ok=1 payload-ok=1".into(),
        // Every frame had a clean header with num_buffers 1.
        "bad-headers=0".into(),
        "NET-DONE".into(),
    ] {
        assert!(out.contains(&want), "want {want:?} in:\n{out}");
    }
    // The host learnt the guest's MAC from its ARP request.
    let neigh = ns.ip(&["neigh", "show", "10.77.0.2", "dev", TAP]);
    assert!(neigh.contains(guest_mac), "{neigh}");

    let conn = UnixStream::connect(&api).expect("connect control socket");
    let n = net_status(&conn);
    assert_eq!(n["mac"], guest_mac, "{n}");
    assert_eq!(n["tap"], TAP, "{n}");
    assert_eq!(n["vnet_hdr"], true, "{n}");
    assert_eq!(n["link"], "up", "{n}");
    assert!(n["tx_frames"].as_u64().unwrap() >= 2, "{n}");
    assert!(n["rx_frames"].as_u64().unwrap() >= 2, "{n}");
    for zero in [
        "tx_oversized",
        "tx_malformed",
        "tx_dropped",
        "rx_dropped_too_small",
        "rx_bad_buffers",
        "rx_dropped_bad_frame",
    ] {
        assert_eq!(n[zero], 0, "{zero}: {n}");
    }
    // The device thread runs under its seccomp filter.
    let threads = thread_statuses(child.id());
    let t = threads
        .iter()
        .find(|t| t.name == "net0")
        .unwrap_or_else(|| panic!("no net0 thread: {threads:?}"));
    assert_eq!((t.seccomp, t.no_new_privs), (2, 1), "{t:?}");

    // Deleting the tap under the running VM takes the link down; the VMM
    // goes on.
    ns.ip(&["link", "del", TAP]);
    let start = std::time::Instant::now();
    loop {
        let n = net_status(&conn);
        if n["link"] == "down" {
            break;
        }
        assert!(start.elapsed() < RUN_LIMIT, "the link stayed up: {n}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(child.0.try_wait().unwrap(), None, "the VMM died");

    let r = api_send(&conn, "shutdown 30000").expect("shutdown");
    assert_eq!(r["ok"], true, "{r}");
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
}

#[test]
fn hostile_tx_chains_and_small_rx_buffers_fail_alone_on_a_tap_fd_from_another_namespace() {
    if !have_kvm(
        "hostile_tx_chains_and_small_rx_buffers_fail_alone_on_a_tap_fd_from_another_namespace",
    ) {
        return;
    }
    let ns = NetNs::new("bad");
    ns.add_tap(TAP, HOST_ADDR);
    let tap_mac = ns.mac(TAP);
    // Opened in the namespace without IFF_VNET_HDR: the VMM adds and
    // strips the header itself. The VMM runs outside the namespace.
    let tap = ns.run_in(|| open_tap(TAP, libc::IFF_TAP | libc::IFF_NO_PI));
    let s = Scratch::new("netbad");
    let log = s.path("serial.log");
    let api = s.path("api.sock");
    let config = s.path("vm.json");
    let json = serde_json::json!({
        "kernel": guest("linux64"),
        "cmdline": "t=netbad",
        "api_sock": api,
        "serial_log": log,
        "net": [{"fd": tap.as_raw_fd(), "mac": "02:bb:00:00:00:02"}],
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let vmm_log = s.path("vmm.log");
    let mut cmd = Command::new(VMM);
    cmd.args(["--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&vmm_log).unwrap());
    inherit(&mut cmd, tap.as_raw_fd());
    let mut child = VmmChild(cmd.spawn().expect("spawn ampoule-vmm"));
    drop(tap);

    let out = wait_for_text(&log, "NETBAD RX-SMALL-POSTED", RUN_LIMIT);
    // Every bad TX chain came back (the one with a head index out of range
    // has no used entry to come back in).
    assert!(out.contains("NETBAD tx-bad posted=9 answered=8"), "{out}");
    // A read-only RX buffer and one outside memory: back at once, empty.
    assert!(out.contains("NETBAD rx-bad returned=2 len0=2"), "{out}");

    // Frames for the eight 4-byte buffers, and more than the guest has
    // buffers for.
    send_frames(&ns, TAP, 64);
    let out = wait_for_text(&log, "NETBAD PAUSED", RUN_LIMIT);
    assert!(
        out.contains("NETBAD rx-small returned=8 len0=8 untouched=1"),
        "{out}"
    );
    assert_eq!(child.0.try_wait().unwrap(), None, "the VMM died");
    let conn = UnixStream::connect(&api).expect("connect control socket");
    let n = net_status(&conn);
    assert_eq!(n["tap"], TAP, "{n}");
    assert_eq!(n["vnet_hdr"], false, "{n}");
    assert_eq!(n["rx_dropped_too_small"], 8, "{n}");
    assert_eq!(n["rx_bad_buffers"], 2, "{n}");
    assert_eq!(n["rx_frames"], 0, "{n}");
    assert_eq!(n["tx_oversized"], 2, "{n}");
    // Loop, outside memory, device-writable, too short, next index out of
    // range, head index out of range, GSO header.
    assert_eq!(n["tx_malformed"], 7, "{n}");
    assert_eq!(n["tx_frames"], 0, "{n}");

    // 56 frames wait in the tap and the guest has no buffer: the device
    // thread must not poll the tap meanwhile.
    let before = thread_ticks(child.id(), "net0");
    std::thread::sleep(Duration::from_secs(1));
    let after = thread_ticks(child.id(), "net0");
    assert!(
        after - before <= 10,
        "the net thread used {} ticks in 1 s while the guest had no RX buffer",
        after - before
    );

    // Ctrl-Alt-Del lets the guest go on: proper buffers, an ARP exchange
    // through the frames left in the tap, then a reset.
    let r = api_send(&conn, "shutdown 30000").expect("shutdown");
    assert_eq!(r["ok"], true, "{r}");
    let status = child.wait(RUN_LIMIT);
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.success(),
        "{status:?}\n{out}\n{}",
        std::fs::read_to_string(&vmm_log).unwrap_or_default()
    );
    assert!(out.contains("NETBAD RESUMED"), "{out}");
    assert!(
        out.contains(&format!(
            "NETBAD after arp-reply from={tap_mac} ip=10.77.0.1 eth-src-matches=1"
        )),
        "{out}"
    );
    assert!(out.contains("NETBAD-DONE"), "{out}");
    let text = std::fs::read_to_string(&vmm_log).unwrap_or_default();
    assert!(!text.contains("panicked"), "{text}");
    assert!(text.contains("TX chain dropped"), "{text}");
}

#[test]
fn missing_taps_bad_macs_and_fds_that_are_not_taps_are_clear_errors_that_create_nothing() {
    let ns = NetNs::new("cfg");
    let k = guest("linux64");
    let k = k.to_str().unwrap();
    let fail = |args: &[&str], keep: Option<RawFd>, want: &[&str]| {
        let o = run_in_ns(&ns, args, keep);
        assert!(!o.status.success(), "{args:?} succeeded");
        let e = stderr(&o);
        for w in want {
            assert!(e.contains(w), "want {w:?} for {args:?} in:\n{e}");
        }
        assert!(!e.contains("panicked"), "{e}");
    };
    // A missing tap is named, and not created.
    fail(
        &["--kernel", k, "--net", "tap=nosuch0,mac=02:00:00:00:00:01"],
        None,
        &["\"nosuch0\"", "no such network interface", "ip tuntap add"],
    );
    // An interface that is not a tap.
    fail(
        &["--kernel", k, "--net", "tap=lo,mac=02:00:00:00:00:01"],
        None,
        &["\"lo\"", "TUNSETIFF"],
    );
    fail(
        &["--kernel", k, "--net", "tap=lo,mac=01:00:5e:00:00:01"],
        None,
        &["unicast"],
    );
    fail(
        &[
            "--kernel",
            k,
            "--net",
            "tap=lo,mac=02:00:00:00:00:01,mtu=9000",
        ],
        None,
        &["mtu=9000"],
    );
    // An inherited fd that is not a tap, and one that is not open.
    let null = File::open("/dev/null").unwrap();
    let fd = null.as_raw_fd();
    fail(
        &[
            "--kernel",
            k,
            "--net",
            &format!("fd={fd},mac=02:00:00:00:00:01"),
        ],
        Some(fd),
        &[&format!("net fd {fd}"), "not an attached tap"],
    );
    fail(
        &["--kernel", k, "--net", "fd=999,mac=02:00:00:00:00:01"],
        None,
        &["fd 999", "not open"],
    );
    assert_eq!(ns.links(), ["lo"], "an interface was created");
}
