//! virtio-fs through a real virtiofsd (the vhost-user backend; the VMM is
//! the frontend): the test guest speaks FUSE on the request queue (INIT,
//! LOOKUP, GETATTR, OPEN, READ of a host file, CREATE, WRITE, FLUSH,
//! RELEASE of a new one) and the host sees the file it wrote; the used-ring
//! interrupt reaches the guest; a device reset and new rings are served;
//! bad rings and descriptors on the fs queues
//! fail alone; a missing backend is a clear error at start; the socket is
//! connected before the VMM drops its privileges.
//!
//! virtiofsd must be installed (`/usr/local/bin/virtiofsd`, another path
//! in `AMPOULE_VIRTIOFSD`, or `virtiofsd` on PATH): where a VM can run and
//! it is missing, these tests fail and name it.

mod common;
use common::*;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOST_TEXT: &str = "hello from the host over virtio-fs\n";
const GUEST_TEXT: &str = "AMPOULE guest wrote this through FUSE_WRITE on virtio-fs\n";

/// The virtiofsd binary; panics (fails the test) when there is none.
fn virtiofsd() -> PathBuf {
    if let Some(p) = std::env::var_os("AMPOULE_VIRTIOFSD") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "AMPOULE_VIRTIOFSD={} is not a file: the virtio-fs tests need virtiofsd",
            p.display()
        );
        return p;
    }
    let mut candidates = vec![
        PathBuf::from("/usr/local/bin/virtiofsd"),
        PathBuf::from("/usr/libexec/virtiofsd"),
        PathBuf::from("/usr/lib/qemu/virtiofsd"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("virtiofsd")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "virtiofsd is not installed (looked in /usr/local/bin, /usr/libexec, \
                 /usr/lib/qemu and PATH; set AMPOULE_VIRTIOFSD): the virtio-fs tests \
                 need it (`cargo install virtiofsd`)"
            )
        })
}

/// A running virtiofsd, killed on drop.
struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Virtiofsd {
    /// Serves `shared` on `<scratch>/vfs.sock` and waits until it listens.
    fn start(s: &Scratch, shared: &Path) -> Virtiofsd {
        let socket = s.path("vfs.sock");
        let log = s.path("virtiofsd.log");
        let child = Command::new(virtiofsd())
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", shared.display()))
            .arg("--sandbox=none")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("virtiofsd log"))
            .spawn()
            .expect("spawning virtiofsd");
        let mut v = Virtiofsd { child, socket, log };
        // Logged once the socket listens (a test connection would use up
        // virtiofsd's one client).
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&v.log).unwrap_or_default();
            if text.contains("Waiting for vhost-user socket connection") && v.socket.exists() {
                break;
            }
            if let Ok(Some(st)) = v.child.try_wait() {
                panic!("virtiofsd exited at start ({st:?}):\n{text}");
            }
            assert!(
                start.elapsed() < RUN_LIMIT,
                "virtiofsd did not listen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        v
    }

    /// Whether it has exited, waiting at most `limit` for it to.
    fn exited_within(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A scratch directory with `share/hello.txt` for virtiofsd to serve.
fn shared_dir(s: &Scratch) -> PathBuf {
    let share = s.path("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), HOST_TEXT).unwrap();
    share
}

/// Asserts the FUSE session of the `t=fs` guest in `out`.
fn assert_fuse_session(out: &str, tag: &str) {
    let n = HOST_TEXT.len();
    for want in [
        format!("FS tag={tag} num_request_queues=1"),
        "FS init error=0 major=7".into(),
        "FS irq delivered=1 status=1".into(),
        format!("FS lookup error=0 size={n} regular=1"),
        format!("FS getattr error=0 size={n}"),
        "FS open error=0".into(),
        format!(
            "FS read error=0 n={n} data={}",
            HOST_TEXT.replace('\n', "\\n")
        ),
        "FS create error=0".into(),
        format!("FS write error=0 size={}", GUEST_TEXT.len()),
        // After a driver reset (rings stopped with GET_VRING_BASE), the
        // rings set up again are served.
        "FS after-reset getattr error=0 dir=1".into(),
        "FS-DONE".into(),
    ] {
        assert!(out.contains(&want), "want {want:?} in:\n{out}");
    }
    assert_eq!(
        out.matches("FS flush error=0 release=0").count(),
        2,
        "{out}"
    );
}

#[test]
fn guest_reads_a_host_file_and_writes_a_new_one_with_fuse_through_virtiofsd() {
    if !have_kvm("guest_reads_a_host_file_and_writes_a_new_one_with_fuse_through_virtiofsd") {
        return;
    }
    let s = Scratch::new("fs");
    let share = shared_dir(&s);
    let mut vfs = Virtiofsd::start(&s, &share);
    let k = guest("linux64");
    let o = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "t=fs file=hello.txt",
        "--fs",
        &format!("tag=ampoule-share,socket={}", vfs.socket.display()),
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    assert_fuse_session(&out, "ampoule-share");
    // The guest's FUSE_CREATE and FUSE_WRITE reached the host directory.
    let written = std::fs::read_to_string(share.join("written-by-guest.txt"))
        .expect("the file the guest created");
    assert_eq!(written, GUEST_TEXT);
    assert_eq!(
        std::fs::read_to_string(share.join("hello.txt")).unwrap(),
        HOST_TEXT
    );
    // virtiofsd serves one client and leaves when it disconnects.
    assert!(vfs.exited_within(RUN_LIMIT), "{}", vfs.log());
}

#[test]
fn bad_fs_rings_and_descriptors_fail_alone_and_the_vmm_keeps_serving() {
    if !have_kvm("bad_fs_rings_and_descriptors_fail_alone_and_the_vmm_keeps_serving") {
        return;
    }
    let s = Scratch::new("fsbad");
    let share = shared_dir(&s);
    let mut vfs = Virtiofsd::start(&s, &share);
    let api = s.path("api.sock");
    let log = s.path("serial.log");
    // The JSON form of the configuration.
    let config = s.path("vm.json");
    let json = serde_json::json!({
        "kernel": guest("linux64"),
        "cmdline": "t=fsbad",
        "api_sock": api,
        "serial_log": log,
        "fs": [{"tag": "hostile", "socket": vfs.socket}],
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let vmm_log = s.path("vmm.log");
    let mut child = VmmChild(
        Command::new(VMM)
            .args(["--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&vmm_log).unwrap())
            .spawn()
            .expect("spawn ampoule-vmm"),
    );
    let out = wait_for_text(&log, "WAITING", RUN_LIMIT);
    let status_of = |prefix: &str| -> u32 {
        let line = out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"));
        let hex = line.rsplit("0x").next().unwrap_or_default();
        u32::from_str_radix(hex.trim(), 16).unwrap_or_else(|_| panic!("{line}"))
    };
    // A descriptor table outside guest memory: DEVICE_NEEDS_RESET, no
    // activation.
    assert_ne!(status_of("FSBAD bad-rings status=") & 0x40, 0, "{out}");
    // Set up properly afterwards, the device serves.
    assert!(out.contains("FSBAD init error=0\n"), "{out}");
    assert!(out.contains("FSBAD posted=4 answered="), "{out}");
    assert!(out.contains("FSBAD-DONE"), "{out}");
    assert_eq!(child.0.try_wait().unwrap(), None, "the VMM died");

    // The device thread runs under its seccomp filter.
    let threads = thread_statuses(child.id());
    let fs_thread = threads
        .iter()
        .find(|t| t.name == "vhost-fs0")
        .unwrap_or_else(|| panic!("no vhost-fs0 thread: {threads:?}"));
    assert_eq!((fs_thread.seccomp, fs_thread.no_new_privs), (2, 1));

    // virtiofsd may give up on the bad descriptors (1.14 exits); the VMM
    // then reports the device as needing a reset and goes on.
    let conn = UnixStream::connect(&api).expect("connect control socket");
    let st = api_send(&conn, "status").expect("status");
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["fs"][0]["tag"], "hostile", "{st}");
    if vfs.exited_within(Duration::from_secs(5)) {
        println!("virtiofsd gave up on the bad descriptors: {}", vfs.log());
        assert_eq!(st["fs"][0]["backend"], "disconnected", "{st}");
        assert_ne!(status_of("FSBAD after status=") & 0x40, 0, "{out}");
        // Setting the device up again is refused, without harm.
        assert_ne!(status_of("FSBAD again init=") & 0x40, 0, "{out}");
        let text = std::fs::read_to_string(&vmm_log).unwrap_or_default();
        assert!(text.contains("hung up"), "{text}");
    } else {
        println!("virtiofsd survived the bad descriptors");
        assert_eq!(st["fs"][0]["backend"], "connected", "{st}");
    }
    let r = api_send(&conn, "shutdown 30000").expect("shutdown");
    assert_eq!(r["ok"], true, "{r}");
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains("CTRL-ALT-DEL"), "{out}");
}

#[test]
fn missing_or_dead_virtiofsd_socket_is_a_clear_error_at_start_leaving_nothing() {
    let s = Scratch::new("fsnone");
    let k = guest("linux64");
    let api = s.path("api.sock");
    // No such socket: refused when the configuration is checked.
    let missing = s.path("missing.sock");
    let o = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--api-sock",
        api.to_str().unwrap(),
        "--fs",
        &format!("tag=x,socket={}", missing.display()),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("missing.sock") && e.contains("virtiofsd") && !e.contains("panicked"),
        "{e}"
    );
    // A socket file nobody listens on: the connection is refused.
    if !have_kvm("missing_or_dead_virtiofsd_socket_is_a_clear_error_at_start_leaving_nothing") {
        return;
    }
    let dead = s.path("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let o = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--api-sock",
        api.to_str().unwrap(),
        "--fs",
        &format!("tag=x,socket={}", dead.display()),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("cannot connect to the vhost-user socket")
            && e.contains("dead.sock")
            && !e.contains("panicked"),
        "{e}"
    );
    assert_eq!(s.entries(), ["dead.sock"], "files left behind");
}

#[test]
fn fs_socket_is_connected_before_the_vmm_drops_its_privileges() {
    if !have_kvm("fs_socket_is_connected_before_the_vmm_drops_its_privileges") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("dropping privileges needs root (the VM tests run as root)");
    }
    let s = Scratch::new("fsjail");
    let share = shared_dir(&s);
    // virtiofsd's socket is root's, mode 0700 in a root directory: the
    // dropped identity could not connect to it.
    let vfs = Virtiofsd::start(&s, &share);
    let k = guest("linux64");
    let o = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "t=fs file=hello.txt",
        "--fs",
        &format!("tag=jailed,socket={}", vfs.socket.display()),
        "--uid",
        "65534",
        "--gid",
        "65533",
    ]);
    assert_ok(&o);
    assert_fuse_session(&stdout(&o), "jailed");
    assert_eq!(
        std::fs::read_to_string(share.join("written-by-guest.txt")).unwrap(),
        GUEST_TEXT
    );
}
