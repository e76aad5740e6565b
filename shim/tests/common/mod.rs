//! Test harness: a private containerd (own config, root, state and sockets
//! under a temporary directory), a local busybox image built with umoci and
//! imported with `ctr`, and cleanup of everything at the end.
//!
//! Every helper panics with a message naming what failed: these are tests.
#![allow(dead_code)]

pub mod cri;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Runtime type of the Ampoule shim, as containerd spells it.
pub const AMPOULE: &str = "io.containerd.ampoule.v2";
/// The local image every test runs.
pub const IMAGE: &str = "localhost/busybox:latest";
/// An image whose default command sleeps forever (CRI pod sandboxes).
pub const PAUSE_IMAGE: &str = "localhost/pause:latest";

/// The shim binary cargo built for these tests.
pub fn shim_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-ampoule-v2"))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// What the containerd tests need from the host, or why they cannot run.
pub fn containerd_prerequisites() -> Result<(), String> {
    if !nix_is_root() {
        return Err("needs root".into());
    }
    for tool in ["containerd", "ctr", "umoci", "busybox"] {
        if which(tool).is_none() {
            return Err(format!("`{tool}` not found on PATH"));
        }
    }
    Ok(())
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether this host can run microVMs (KVM or QEMU). The rule: when it can,
/// a VM test fails on error rather than skipping.
pub fn vm_capable() -> bool {
    Path::new("/dev/kvm").exists() || which("qemu-system-x86_64").is_some()
}

/// Decides whether a test runs. Returns false (after printing
/// `SKIPPED: name: reason`) when it must skip; panics when skipping is not
/// allowed (`AMPOULE_REQUIRE_VM=1`, or a VM test on a VM-capable host).
pub fn should_run(name: &str, needs_vm: bool) -> bool {
    let reason = match containerd_prerequisites() {
        Err(reason) => Some(reason),
        Ok(()) if needs_vm && !vm_capable() => {
            Some("neither /dev/kvm nor qemu-system-x86_64".into())
        }
        Ok(()) => None,
    };
    let Some(reason) = reason else { return true };
    if std::env::var("AMPOULE_REQUIRE_VM").as_deref() == Ok("1") {
        panic!("{name}: cannot run ({reason}) and AMPOULE_REQUIRE_VM=1");
    }
    if needs_vm && vm_capable() {
        panic!("{name}: this host can run VMs but the test cannot run: {reason}");
    }
    println!("SKIPPED: {name}: {reason}");
    false
}

/// Guest kernel and initrd: `AMPOULE_TEST_KERNEL` / `AMPOULE_TEST_INITRD`,
/// else the runtime's default install paths.
pub fn guest_image() -> (PathBuf, PathBuf) {
    let d = ampoule_runtime::Config::default();
    (
        std::env::var_os("AMPOULE_TEST_KERNEL")
            .map(PathBuf::from)
            .unwrap_or(d.kernel),
        std::env::var_os("AMPOULE_TEST_INITRD")
            .map(PathBuf::from)
            .unwrap_or(d.initrd),
    )
}

/// One VM test at a time across test binaries (the same lock file as the
/// workspace's other VM tests): TCG boots must not compete for 2 cores.
pub struct VmLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

impl VmLock {
    pub fn acquire() -> VmLock {
        let path = std::env::temp_dir().join("ampoule-tests-vm.lock");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive) {
                Ok(l) => return VmLock(l),
                Err((f, nix::errno::Errno::EINTR)) => file = f,
                Err((_, e)) => panic!("flock {}: {e}", path.display()),
            }
        }
    }
}

/// The OCI image tars, built once and cached in cargo's per-target test
/// directory (a build artifact, like the test binary itself).
pub fn image_tars() -> &'static (PathBuf, PathBuf) {
    static TARS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    TARS.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ampoule-images-v2");
        let busybox = cache.join("busybox-oci.tar");
        let pause = cache.join("pause-oci.tar");
        if !(busybox.exists() && pause.exists()) {
            fs::create_dir_all(cache.parent().expect("cache has a parent"))
                .expect("creating the image cache");
            let work = tempfile::Builder::new()
                .prefix("ampoule-images-")
                .tempdir_in(cache.parent().expect("cache has a parent"))
                .expect("creating the image build directory");
            build_image(work.path(), "busybox", &["--config.cmd=sh"]);
            build_image(
                work.path(),
                "pause",
                &["--config.cmd=sleep", "--config.cmd=2147483647"],
            );
            for d in ["busybox-layout", "pause-layout"] {
                let _ = fs::remove_dir_all(work.path().join(d));
            }
            // Another test process may have won the race: either copy is fine.
            let built = work.keep();
            if fs::rename(&built, &cache).is_err() {
                let _ = fs::remove_dir_all(&built);
            }
        }
        (busybox, pause)
    })
}

/// `umoci init/new/unpack`, busybox and its applets copied in, `repack`,
/// `config`, then a tar of the layout. Returns the tar.
fn build_image(dir: &Path, name: &str, config: &[&str]) -> PathBuf {
    let layout = dir.join(format!("{name}-layout"));
    let bundle = dir.join(format!("{name}-bundle"));
    let image = format!("{}:latest", layout.display());
    run_ok(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    );
    run_ok(Command::new("umoci").args(["new", "--image", &image]));
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
    );
    let rootfs = bundle.join("rootfs");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root",
    ] {
        fs::create_dir_all(rootfs.join(d)).expect("creating rootfs dirs");
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copying /bin/busybox");
    let list = run_ok(Command::new("/bin/busybox").arg("--list"));
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = rootfs.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).expect("linking an applet");
        }
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("group");
    // Mount points CRI binds over (a read-only sandbox rootfs cannot get
    // them created at run time).
    for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        fs::write(rootfs.join(f), "").expect("an /etc file");
    }
    run_ok(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    );
    run_ok(
        Command::new("umoci")
            .args(["config", "--image", &image])
            .arg("--config.env=PATH=/usr/sbin:/usr/bin:/sbin:/bin")
            .args(config),
    );
    let tar = dir.join(format!("{name}-oci.tar"));
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    let _ = fs::remove_dir_all(&bundle);
    tar
}

/// Runs a command, panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A private containerd. Dropped: every task and container of its namespace
/// is removed, containerd is stopped, mounts under its root are undone and
/// its directory is deleted.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub namespace: String,
}

impl Containerd {
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// containerd in a network namespace of its own with a CNI bridge
    /// network (bridge `amptest0`, 10.88.7.0/24 from host-local, a default
    /// route via the bridge): what CRI pods with their own network need,
    /// without touching the host's network namespace.
    pub fn start_with_pod_network(namespace: &str) -> Containerd {
        let ctd = Self::start_opts(namespace, true);
        let conf = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "ampoule-test",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "amptest0",
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.88.7.0/24"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": ctd.dir().join("cni/ipam").display().to_string()
                    }
                },
                {"type": "loopback"}
            ]
        });
        fs::write(
            ctd.cni_conf_dir().join("10-ampoule-test.conflist"),
            serde_json::to_vec_pretty(&conf).expect("json"),
        )
        .expect("writing the CNI config");
        ctd
    }

    /// Runs `program args` in containerd's network namespace (where CNI's
    /// bridge is, with [`Containerd::start_opts`]'s `own_netns`).
    pub fn in_netns(&self, program: &str, args: &[&str]) -> Output {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter")
    }

    /// Where containerd's CRI plugin reads CNI network configs.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("cni/conf")
    }

    /// The runtime's sandbox directories (one per pod VM).
    pub fn vm_run_dir(&self) -> PathBuf {
        self.dir.path().join("vm")
    }

    /// Starts containerd with the overlayfs snapshotter, the CRI plugin with
    /// runtimes `ampoule` and `runc`, and this test's shim first on PATH;
    /// then imports the local images into `namespace`.
    pub fn start(namespace: &str) -> Containerd {
        Self::start_opts(namespace, false)
    }

    /// As [`Containerd::start`], with containerd (and so its CNI plugins and
    /// shims) in a network namespace of its own when `own_netns`: pod
    /// networks set up by CNI then never touch the host's namespace. The
    /// CNI binaries are Debian's (`/usr/lib/cni`); the test writes its
    /// network config into [`Containerd::cni_conf_dir`].
    pub fn start_opts(namespace: &str, own_netns: bool) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("actd-")
            .tempdir_in("/tmp")
            .expect("creating containerd's directory");
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
oom_score = 0
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "info"
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{pause}"
    restrict_oom_score_adj = true
    disable_apparmor = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{d}/cni/bin"
      conf_dir = "{d}/cni/conf"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ampoule]
        runtime_type = "{AMPOULE}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
            pause = PAUSE_IMAGE,
            d = d.display(),
        );
        fs::write(d.join("config.toml"), config).expect("writing containerd's config");
        // The Ampoule configuration every shim of this containerd reads
        // (through AMPOULE_CONFIG, inherited from containerd): private run,
        // log and cache directories; the guest image from the environment.
        let (kernel, initrd) = guest_image();
        let ampoule_config = format!(
            "kernel = {kernel:?}\ninitrd = {initrd:?}\nrun_dir = {:?}\nlog_dir = {:?}\ncache_dir = {:?}\n",
            d.join("vm"),
            d.join("log"),
            d.join("cache")
        );
        fs::write(d.join("ampoule.toml"), ampoule_config).expect("writing the Ampoule config");
        let shim_dir = shim_binary()
            .parent()
            .expect("the shim binary has a directory")
            .to_path_buf();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let log = fs::File::create(d.join("containerd.log")).expect("creating containerd.log");
        fs::create_dir_all(d.join("cni/conf")).expect("creating the CNI config directory");
        if own_netns {
            std::os::unix::fs::symlink("/usr/lib/cni", d.join("cni/bin"))
                .expect("linking the CNI plugins");
        }
        let mut cmd = if own_netns {
            let mut c = Command::new("unshare");
            c.args(["--net", "--", "containerd"]);
            c
        } else {
            Command::new("containerd")
        };
        let child = cmd
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("AMPOULE_CONFIG", d.join("ampoule.toml"))
            .env("AMPOULE_SHIM_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let mut ctd = Containerd {
            dir,
            child: Some(child),
            namespace: namespace.to_string(),
        };
        ctd.wait_ready();
        let (busybox, pause) = image_tars();
        for (tar, base) in [(busybox, "localhost/busybox"), (pause, "localhost/pause")] {
            let out = ctd.ctr([
                OsStr::new("images"),
                OsStr::new("import"),
                OsStr::new("--base-name"),
                OsStr::new(base),
                tar.as_os_str(),
            ]);
            assert!(
                out.status.success(),
                "importing {base}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ctd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("containerd exited with {status}: {}", self.log());
                }
            }
            if self.socket().exists() && self.ctr(["version"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A `ctr` command against this containerd and namespace.
    pub fn ctr_cmd(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    /// Runs `ctr ARGS` and returns its output, whatever its status.
    pub fn ctr<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctr_cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ctr")
    }

    /// Runs `ctr ARGS`, returns stdout; Err with stderr when it fails.
    pub fn ctr_ok<I, S>(&self, args: I) -> Result<String, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.ctr(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ctr failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Removes every task and container of the namespace.
    pub fn remove_all(&self) {
        if let Ok(tasks) = self.ctr_ok(["tasks", "ls", "-q"]) {
            for id in tasks.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(["tasks", "kill", "-a", "-s", "SIGKILL", id]);
            }
            for id in tasks.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(["tasks", "rm", "-f", id]);
            }
        }
        if let Ok(containers) = self.ctr_ok(["containers", "ls", "-q"]) {
            for id in containers.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(["containers", "rm", id]);
            }
        }
    }

    /// Shim processes of this containerd still alive (their command line
    /// names its socket).
    pub fn shim_processes(&self) -> Vec<(u32, String)> {
        processes_mentioning(&self.socket().display().to_string())
            .into_iter()
            .filter(|(_, cmd)| !cmd.starts_with("containerd ") && !cmd.starts_with("ctr "))
            .collect()
    }

    /// Processes whose command line names this containerd's directory
    /// (shims, VMs, vsock daemons), other than containerd itself.
    pub fn leftover_processes(&self) -> Vec<(u32, String)> {
        let me = self.child.as_ref().map(|c| c.id());
        processes_mentioning(&self.dir.path().display().to_string())
            .into_iter()
            .filter(|(pid, cmd)| Some(*pid) != me && !cmd.starts_with("ctr "))
            .collect()
    }

    /// Mount points under this containerd's directory.
    pub fn leftover_mounts(&self) -> Vec<String> {
        let prefix = self.dir.path().display().to_string();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect()
    }

    /// The socket of the shim serving `group` (as containerd-shim hashes it).
    pub fn shim_socket(&self, group: &str) -> PathBuf {
        use sha2::Digest;
        let key = format!("{}/{}/{group}", self.socket().display(), self.namespace);
        let hash: String = sha2::Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Path::new("/run/containerd/s").join(hash)
    }

    /// Host cgroup directories named after the namespace (ctr's default
    /// cgroupsPath is `/<namespace>/<id>`).
    pub fn leftover_cgroups(&self) -> Vec<String> {
        let Ok(hiers) = fs::read_dir("/sys/fs/cgroup") else {
            return Vec::new();
        };
        let mut out: Vec<String> = hiers
            .flatten()
            .map(|h| h.path().join(&self.namespace))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// [`Containerd::leftovers`] plus the shim sockets of `groups` and the
    /// namespace's host cgroups (runc leaves the latter: not checked there).
    pub fn leftovers_with(&self, groups: &[&str]) -> Vec<String> {
        let mut out = self.leftovers();
        out.extend(
            self.leftover_cgroups()
                .into_iter()
                .map(|c| format!("cgroup {c}")),
        );
        for g in groups {
            let s = self.shim_socket(g);
            if s.exists() {
                out.push(format!("shim socket {} of {g}", s.display()));
            }
        }
        out
    }

    /// Everything a finished test must not leave behind, as readable lines.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .leftover_processes()
            .into_iter()
            .map(|(pid, cmd)| format!("process {pid}: {cmd}"))
            .collect();
        out.extend(
            self.leftover_mounts()
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        let tasks = self.ctr_ok(["tasks", "ls", "-q"]).unwrap_or_default();
        out.extend(
            tasks
                .lines()
                .filter(|l| !l.is_empty())
                .map(|t| format!("task {t}")),
        );
        out
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 5 s).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all();
        // Anything of ours still running (a killed test's shim or VM): end it.
        for (pid, cmd) in self.leftover_processes() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            // A killed shim leaves its socket.
            if let Some(sock) = cmd
                .split_whitespace()
                .find_map(|a| a.strip_prefix("unix://"))
            {
                let _ = fs::remove_file(sock);
            }
        }
        self.stop();
        let mut mounts = self.leftover_mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
        // runc removes a task's cgroup but not the `/<namespace>` parent.
        for c in self.leftover_cgroups() {
            let _ = Command::new("find")
                .args([c.as_str(), "-depth", "-type", "d", "-delete"])
                .status();
        }
        if std::env::var_os("AMPOULE_KEEP_TEST_DIRS").is_some() {
            let kept = self.dir.path().to_path_buf();
            eprintln!("keeping {}", kept.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("placeholder tempdir"),
            ));
        }
    }
}

/// (pid, command line) of every process whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim()
            .to_string();
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
