//! Shared helpers for the VMM integration tests: building the freestanding
//! test guests with gcc, KVM presence, running the real binary with a
//! time limit, and scratch directories.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The binary under test.
pub const VMM: &str = env!("CARGO_BIN_EXE_ampoule-vmm");

/// Whether VM tests can run here. Where /dev/kvm is absent prints the skip
/// line (or panics when AMPOULE_REQUIRE_VM=1); where it exists the test
/// must run and fail on any problem.
pub fn have_kvm(name: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("AMPOULE_REQUIRE_VM").as_deref() == Ok("1") {
        panic!("{name}: /dev/kvm is missing and AMPOULE_REQUIRE_VM=1");
    }
    println!("SKIPPED: {name}: no /dev/kvm");
    false
}

/// Whether /dev/kvm is PVM (standard guest kernels cannot boot).
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Directory holding guest-linux64.elf, guest-pvh.elf and bench-guest.elf,
/// built from vmm/test-guests with gcc once per version of their sources.
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-guests");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&src)
            .expect("vmm/test-guests")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for n in &names {
            n.file_name().hash(&mut h);
            std::fs::read(n).unwrap_or_default().hash(&mut h);
        }
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.join(format!("test-guests-{:016x}", h.finish()));
        if dir.join("bench-guest.elf").exists() {
            return dir;
        }
        let work = tmp.join(format!("test-guests-build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("creating guest build dir");
        let out = Command::new("sh")
            .arg(src.join("build.sh"))
            .arg(&work)
            .output()
            .expect("running test-guests/build.sh (needs gcc)");
        assert!(
            out.status.success(),
            "building test guests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another test process may have won the race: keep either copy.
        if std::fs::rename(&work, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&work);
        }
        assert!(dir.join("bench-guest.elf").exists());
        dir
    })
}

/// A test guest's path: "linux64", "pvh" or "bench".
pub fn guest(kind: &str) -> PathBuf {
    match kind {
        "bench" => guests().join("bench-guest.elf"),
        k => guests().join(format!("guest-{k}.elf")),
    }
}

/// A fresh scratch directory under /tmp (short, for socket paths), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = PathBuf::from(format!("/tmp/avt-{}-{}-{}", tag, std::process::id(), n));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Names of the entries in the directory, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running VMM that is killed if the test fails before it exits.
pub struct VmmChild(pub Child);

impl VmmChild {
    /// Waits for the exit (at most `limit`).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        wait_limited(&mut self.0, limit)
    }
    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for VmmChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Longest any single VMM run may take before the test fails.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Waits for `child` at most `limit`, killing it (and failing) after.
pub fn wait_limited(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ampoule-vmm did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the VMM with `args` to completion and returns its output.
pub fn run_vmm(args: &[&str]) -> Output {
    let mut child = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ampoule-vmm");
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let status = wait_limited(&mut child, RUN_LIMIT);
    Output {
        status,
        stdout: t1.join().unwrap_or_default(),
        stderr: t2.join().unwrap_or_default(),
    }
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean exit with status 0, showing the output otherwise.
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "ampoule-vmm failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Waits until `path` exists (e.g. a socket the VMM binds).
pub fn wait_for_path(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the file at `path` contains `needle`.
pub fn wait_for_text(path: &Path, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(needle) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{needle:?} did not appear in {}; it holds:\n{s}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// FNV-1a, as the test guest computes it over the initrd.
pub fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(2166136261u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(16777619)
    })
}

/// Spawns the VMM on the linux64 test guest with `cmdline`, a serial log,
/// a vsock socket and a control socket in `s`, plus `extra` flags.
pub fn spawn_with_sockets(s: &Scratch, cmdline: &str, extra: &[&str]) -> VmmChild {
    let k = guest("linux64");
    VmmChild(
        Command::new(VMM)
            .args(["--kernel", k.to_str().unwrap(), "--cmdline", cmdline])
            .args(["--vsock-uds", s.path("v.sock").to_str().unwrap()])
            .args(["--api-sock", s.path("api.sock").to_str().unwrap()])
            .args(["--serial-log", s.path("serial.log").to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ampoule-vmm"),
    )
}

/// Sends one control command on `conn` and returns the reply line, or
/// `None` if the VMM closed the connection without answering.
pub fn api_send(conn: &std::os::unix::net::UnixStream, line: &str) -> Option<serde_json::Value> {
    use std::io::{BufRead, BufReader, Write};
    conn.set_read_timeout(Some(RUN_LIMIT)).unwrap();
    (&mut &*conn)
        .write_all(format!("{line}\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply).ok()?;
    if reply.is_empty() {
        return None;
    }
    Some(serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad reply {reply:?}: {e}")))
}

/// One thread of a process as `/proc/PID/task/TID/status` shows it.
#[derive(Debug)]
pub struct ThreadStatus {
    pub name: String,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    pub no_new_privs: u32,
    /// Filters stacked on the thread.
    pub seccomp_filters: u32,
}

/// Every thread of `pid`.
pub fn thread_statuses(pid: u32) -> Vec<ThreadStatus> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc task dir") {
        let Ok(e) = e else { continue };
        let Ok(text) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |f: &str| -> String {
            text.lines()
                .find_map(|l| l.strip_prefix(f)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {f} in {}", e.path().display()))
        };
        let num = |f: &str| field(f).parse::<u32>().expect("a number");
        out.push(ThreadStatus {
            name: field("Name"),
            seccomp: num("Seccomp"),
            no_new_privs: num("NoNewPrivs"),
            seccomp_filters: num("Seccomp_filters"),
        });
    }
    out
}
