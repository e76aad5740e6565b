//! Helpers shared by the integration tests.
//!
//! VM tests call [`vm_test`] first: where `/dev/kvm` or `qemu-system-x86_64`
//! exists they must run (and fail on any problem); only on a host with
//! neither may they print `SKIPPED: <test>: <reason>` and return, and with
//! `AMPOULE_REQUIRE_VM=1` even that is a failure. VM tests hold
//! [`VmLock`] so that boots under TCG do not compete for the CPUs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use ampoule_runtime::Config;

/// True when this host must run VM tests.
pub fn host_can_run_vms() -> bool {
    Path::new("/dev/kvm").exists()
        || ampoule_runtime::host::resolve_binary(Path::new("qemu-system-x86_64")).is_some()
}

/// Call at the top of a VM test: `if !vm_test("name") { return; }`.
pub fn vm_test(name: &str) -> bool {
    if host_can_run_vms() {
        return true;
    }
    let reason = "neither /dev/kvm nor qemu-system-x86_64 on this host";
    if std::env::var("AMPOULE_REQUIRE_VM").as_deref() == Ok("1") {
        panic!("{name}: AMPOULE_REQUIRE_VM=1 but {reason}");
    }
    println!("SKIPPED: {name}: {reason}");
    false
}

/// An exclusive lock held while a test runs VMs (one VM test at a time,
/// across test binaries).
pub struct VmLock {
    _lock: nix::fcntl::Flock<File>,
}

impl VmLock {
    /// Blocks until the lock is ours.
    pub fn acquire() -> VmLock {
        let path = std::env::temp_dir().join("ampoule-tests-vm.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open lock file {}: {e}", path.display()));
        let mut file = file;
        loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive) {
                Ok(lock) => return VmLock { _lock: lock },
                Err((f, nix::errno::Errno::EINTR)) => file = f,
                Err((_, e)) => panic!("flock {}: {e}", path.display()),
            }
        }
    }
}

/// A private place for one test: a config whose run, log and cache
/// directories are inside a temporary directory.
pub struct TestEnv {
    pub tmp: tempfile::TempDir,
    pub config: Config,
}

impl TestEnv {
    /// The default config (installed kernel and initrd, `auto`), with private
    /// directories. `AMPOULE_TEST_KERNEL` / `AMPOULE_TEST_INITRD` override the
    /// guest image.
    pub fn new() -> TestEnv {
        // Short base path: Unix socket paths are limited to 108 bytes.
        let tmp = tempfile::Builder::new()
            .prefix("amp")
            .tempdir_in("/tmp")
            .expect("creating a temporary directory");
        let mut config = Config {
            run_dir: tmp.path().join("run"),
            log_dir: tmp.path().join("log"),
            cache_dir: tmp.path().join("cache"),
            ..Config::default()
        };
        if let Some(k) = std::env::var_os("AMPOULE_TEST_KERNEL") {
            config.kernel = k.into();
        }
        if let Some(i) = std::env::var_os("AMPOULE_TEST_INITRD") {
            config.initrd = i.into();
        }
        TestEnv { tmp, config }
    }

    /// Writes `config` as TOML to a file in the test directory and returns it.
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let c = &self.config;
        let text = format!(
            "kernel = {:?}\ninitrd = {:?}\nrun_dir = {:?}\nlog_dir = {:?}\ncache_dir = {:?}\n{extra}\n",
            c.kernel, c.initrd, c.run_dir, c.log_dir, c.cache_dir
        );
        let path = self.tmp.path().join("config.toml");
        std::fs::write(&path, text).expect("writing the test config");
        path
    }

    /// Whatever is left in the run directory and every host process whose
    /// command line mentions this test's directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = files_in(&self.config.run_dir);
        out.extend(processes_mentioning(self.tmp.path()));
        out
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Files and directories under `dir` (recursively), as strings.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(files_in(&p));
        }
    }
    out
}

/// Processes (`pid: cmdline`) whose command line contains `needle`.
pub fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        // Zombies have an empty cmdline; they would still be a leak.
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        if cmd.contains(&needle) || (zombie && is_child_of_me(&e.path())) {
            out.push(format!(
                "{pid}: {cmd}{}",
                if zombie { " (zombie)" } else { "" }
            ));
        }
    }
    out
}

fn is_child_of_me(proc_dir: &Path) -> bool {
    let me = std::process::id().to_string();
    std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().nth(1).map(|p| p == me))
        })
        .flatten()
        .unwrap_or(false)
}

/// Waits up to `secs` for `f` to be true.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    f()
}

/// The `ampoule` binary under test: `$AMPOULE_BIN_DIR/ampoule`, else the
/// workspace's `target/debug/ampoule` (built by `cargo build`).
pub fn ampoule_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("AMPOULE_BIN_DIR") {
        return PathBuf::from(dir).join("ampoule");
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| here.join("../target"));
    let p = target.join("debug/ampoule");
    let built = std::fs::metadata(&p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} not found: run `cargo build -p ampoule-runtime` first or set AMPOULE_BIN_DIR",
                p.display()
            )
        });
    // A binary older than its sources would test stale code.
    let newest = newest_mtime(&here.join("../runtime/src"));
    assert!(
        newest.is_none_or(|n| n <= built),
        "{} is older than runtime/src: run `cargo build -p ampoule-runtime` first",
        p.display()
    );
    p
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            e.metadata().ok().and_then(|m| m.modified().ok())
        };
        newest = newest.max(t);
    }
    newest
}

/// A test environment for the OCI CLI: a private `--root`, config file and
/// cache, and a busybox bundle.
pub struct CliEnv {
    pub env: TestEnv,
    pub root: PathBuf,
    pub config_file: PathBuf,
}

impl CliEnv {
    pub fn new() -> CliEnv {
        let env = TestEnv::new();
        let root = env.tmp.path().join("root");
        let config_file = env.write_config("");
        CliEnv {
            env,
            root,
            config_file,
        }
    }

    /// `ampoule --config C --root R <args>`.
    pub fn cmd(&self) -> Command {
        let mut c = ampoule();
        c.arg("--config")
            .arg(&self.config_file)
            .arg("--root")
            .arg(&self.root);
        c
    }

    /// A busybox bundle (Debian's busybox-static, via
    /// guest-image/busybox-rootfs.sh) in `name`, whose config.json is
    /// `ampoule spec`'s default with `args`, no terminal, then `edit`.
    pub fn bundle(
        &self,
        name: &str,
        args: &[&str],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> PathBuf {
        let dir = self.env.tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("bundle dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-image/busybox-rootfs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir.join("rootfs"))
            .output()
            .expect("running busybox-rootfs.sh");
        assert!(out.status.success(), "busybox-rootfs.sh: {}", show(&out));
        let out = self
            .cmd()
            .arg("spec")
            .arg("--bundle")
            .arg(&dir)
            .output()
            .expect("ampoule spec");
        assert!(out.status.success(), "ampoule spec: {}", show(&out));
        let path = dir.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("config.json"))
                .expect("config.json is JSON");
        v["process"]["terminal"] = false.into();
        v["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
        edit(&mut v);
        std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("encode"))
            .expect("write config.json");
        dir
    }

    /// `create --bundle BUNDLE [EXTRA] ID` with its stdio on files: the
    /// container's monitor keeps the fds `create` was started with, so
    /// pipes would never reach EOF.
    pub fn create(&self, bundle: &Path, id: &str, extra: &[&str]) -> std::process::Output {
        let dir = self.env.tmp.path();
        let out_path = dir.join(format!("{id}.create.out"));
        let err_path = dir.join(format!("{id}.create.err"));
        let status = self
            .cmd()
            .args(["create", "--bundle"])
            .arg(bundle)
            .args(extra)
            .arg(id)
            .stdin(std::process::Stdio::null())
            .stdout(File::create(&out_path).expect("stdout file"))
            .stderr(File::create(&err_path).expect("stderr file"))
            .status()
            .expect("ampoule create");
        std::process::Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        }
    }

    /// `state ID` as JSON, or None if the command failed.
    pub fn state(&self, id: &str) -> Option<serde_json::Value> {
        let out = self
            .cmd()
            .args(["state", id])
            .output()
            .expect("ampoule state");
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Status word from `state ID`.
    pub fn status(&self, id: &str) -> String {
        self.state(id)
            .and_then(|v| v["status"].as_str().map(String::from))
            .unwrap_or_else(|| "<no state>".into())
    }

    /// Leftovers: processes mentioning the test directory, files under the
    /// root (sandboxes and state).
    pub fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = files_in(&self.root)
            .into_iter()
            .filter(|f| !f.ends_with("/.vm"))
            .collect();
        out.extend(processes_mentioning(self.env.tmp.path()));
        out
    }
}

impl Default for CliEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// A `Command` for the `ampoule` binary with `AMPOULE_CONFIG` cleared.
pub fn ampoule() -> Command {
    let mut c = Command::new(ampoule_bin());
    c.env_remove("AMPOULE_CONFIG");
    c
}

/// Output of a finished command, for assertion messages.
pub fn show(out: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `uname -r` of the host.
pub fn host_kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A network namespace the test creates (`ip netns add`, at
/// `/run/netns/NAME`) and deletes when dropped. Test traffic stays in such
/// namespaces; the host's own is never touched.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(name: &str) -> TestNetns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .expect("running ip");
        assert!(out.status.success(), "ip netns add {name}: {}", show(&out));
        let ns = TestNetns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS`, which must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            show(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command run inside the namespace (`ip netns exec NAME ...`).
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The `ampoule-vmm` binary under test: `$AMPOULE_BIN_DIR/ampoule-vmm`,
/// else the workspace's `target/debug/ampoule-vmm`.
pub fn vmm_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("AMPOULE_BIN_DIR") {
        return PathBuf::from(dir).join("ampoule-vmm");
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| here.join("../target"))
        .join("debug/ampoule-vmm")
}

/// ampoule-vmm's freestanding test guest (64-bit Linux boot protocol),
/// built with gcc from `vmm/test-guests` into `dir`: what the VMM runs on a
/// host where no standard Linux guest boots (PVM).
pub fn vmm_test_guest(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/test-guests/build.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("running vmm/test-guests/build.sh (needs gcc)");
    assert!(
        out.status.success(),
        "building the test guests: {}",
        show(&out)
    );
    dir.join("guest-linux64.elf")
}

/// Writes an executable `#!/bin/sh` script with `body` at `path`.
pub fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("script dir");
    }
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
