//! podman drives Ampoule as its OCI runtime (`--runtime`), with its own
//! bundle, mounts and default seccomp profile: a volume written in the
//! container is on the host afterwards, and the root filesystem podman
//! prepared is written in place. podman's storage, state and temporary
//! files are private to the test; the container has no network (podman's
//! default bridge would touch the host's network namespace).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ampoule_tests::{ampoule_bin, show, vm_test, wait_until, CliEnv, TestNetns, VmLock};

struct Podman<'a> {
    env: &'a CliEnv,
    dir: PathBuf,
    /// Run podman (and so its network setup) inside this namespace.
    netns: Option<PathBuf>,
}

impl Podman<'_> {
    fn cmd(&self) -> Command {
        // nsenter, not `ip netns exec`, which remounts /sys (and so hides
        // the cgroup hierarchies the runtime's jail needs).
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("podman");
                c
            }
            None => Command::new("podman"),
        };
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .arg("--network-config-dir")
            .arg(self.dir.join("networks"))
            .args([
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--storage-driver",
                "vfs",
                "--runtime",
            ])
            .arg(ampoule_bin())
            // The runtime's own configuration (private run, log and cache
            // directories): podman passes runtime flags, not its
            // environment. Not `--root`: podman does not pass runtime flags
            // to the cleanup command conmon runs at exit, which would then
            // look for the container's state in the default root.
            .arg("--runtime-flag")
            .arg(format!("config={}", self.env.config_file.display()))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("running podman")
    }
}

/// A busybox image imported into the test's podman storage.
fn import_busybox(p: &Podman, tmp: &Path) -> &'static str {
    const IMAGE: &str = "localhost/ampoule-busybox:test";
    let rootfs = tmp.join("image-rootfs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-image/busybox-rootfs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&rootfs)
        .output()
        .expect("busybox-rootfs.sh");
    assert!(out.status.success(), "{}", show(&out));
    let tar = tmp.join("busybox.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success(), "{}", show(&out));
    let out = p.run(&["import", &tar.display().to_string(), IMAGE]);
    assert!(out.status.success(), "podman import: {}", show(&out));
    IMAGE
}

/// Nothing of Ampoule is left (podman's own storage aside), and no
/// container state beyond `states_before`; then podman's storage goes.
fn assert_nothing_left(p: &Podman, states_before: &[String]) {
    let left: Vec<_> = p
        .env
        .env
        .leftovers()
        .into_iter()
        .filter(|l| !l.contains("/podman/"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:#?}");
    let states: Vec<_> = states_in_default_root()
        .into_iter()
        .filter(|s| !states_before.contains(s))
        .collect();
    assert!(states.is_empty(), "container states left: {states:?}");
    let _ = p.run(&["system", "reset", "--force"]);
}

/// Container state directories in the CLI's default `--root`.
fn states_in_default_root() -> Vec<String> {
    std::fs::read_dir("/run/ampoule")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("state.json").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn podman_run_with_a_volume_leaves_the_containers_write_on_the_host() {
    const NAME: &str = "podman_run_with_a_volume_leaves_the_containers_write_on_the_host";
    if !vm_test(NAME) {
        return;
    }
    assert!(
        Command::new("podman").arg("--version").output().is_ok(),
        "{NAME}: podman is not installed (scripts/setup.sh installs it)"
    );
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let tmp = env.env.tmp.path().to_path_buf();
    let p = Podman {
        env: &env,
        dir: tmp.join("podman"),
        netns: None,
    };
    let image = import_busybox(&p, &tmp);
    let states_before = states_in_default_root();
    let data = tmp.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("in"), "from-host\n").expect("host file");
    let volume = format!("{}:/data", data.display());
    let out = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &volume,
        image,
        "sh",
        "-c",
        "cat /data/in; echo from-podman > /data/out; grep ^Seccomp: /proc/self/status",
    ]);
    assert!(out.status.success(), "podman run: {}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("from-host\n"), "{stdout}");
    // podman's default seccomp profile was applied (mode 2: filter).
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap_or_default(),
        "from-podman\n"
    );

    // A container podman keeps: what it writes to its root is in podman's
    // copy of the image afterwards (`podman cp` reads it from there).
    let out = p.run(&[
        "run",
        "--name",
        "keep",
        "--network",
        "none",
        image,
        "sh",
        "-c",
        "echo kept > /written",
    ]);
    assert!(out.status.success(), "podman run: {}", show(&out));
    let copied = tmp.join("copied");
    let out = p.run(&["cp", "keep:/written", &copied.display().to_string()]);
    assert!(out.status.success(), "podman cp: {}", show(&out));
    assert_eq!(
        std::fs::read_to_string(&copied).unwrap_or_default(),
        "kept\n"
    );
    let out = p.run(&["rm", "keep"]);
    assert!(out.status.success(), "podman rm: {}", show(&out));

    assert_nothing_left(&p, &states_before);
}

#[test]
fn podman_bridge_network_and_a_published_port_reach_the_container_inside_a_private_namespace() {
    const NAME: &str =
        "podman_bridge_network_and_a_published_port_reach_the_container_inside_a_private_namespace";
    if !vm_test(NAME) {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let tmp = env.env.tmp.path().to_path_buf();
    // podman's default bridge (CNI: bridge, host-local, portmap with
    // iptables) is set up inside this namespace only.
    let ns = TestNetns::new(&format!("amp-podman-{}", std::process::id()));
    let p = Podman {
        env: &env,
        dir: tmp.join("podman"),
        netns: Some(ns.path()),
    };
    let image = import_busybox(&p, &tmp);
    let states_before = states_in_default_root();
    let out = p.run(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        image,
        "sh",
        "-c",
        "mkdir -p /tmp/w && echo hello-from-podman > /tmp/w/index.html && httpd -f -p 80 -h /tmp/w",
    ]);
    assert!(out.status.success(), "podman run: {}", show(&out));
    // The published port, from the namespace podman's network is in.
    let get = |url: &str| {
        Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["timeout", "3", "busybox", "wget", "-q", "-O-", url])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let reached = wait_until(60, || {
        get("http://127.0.0.1:8080/index.html").contains("hello-from-podman")
    });
    let logs = p.run(&["logs", "web"]);
    assert!(
        reached,
        "port 8080 did not reach the container: {}",
        show(&logs)
    );
    // And the container's own address on podman's bridge.
    let ip = p.run(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
    let ip = String::from_utf8_lossy(&ip.stdout).trim().to_string();
    assert!(!ip.is_empty(), "no container IP");
    assert!(get(&format!("http://{ip}:80/index.html")).contains("hello-from-podman"));
    // The container's network namespace (podman's) holds our tap while it
    // runs.
    let key = p.run(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "web"]);
    let key = String::from_utf8_lossy(&key.stdout).trim().to_string();
    let links = Command::new("nsenter")
        .arg(format!("--net={key}"))
        .args(["ip", "-o", "link", "show"])
        .output()
        .expect("ip link");
    assert!(
        String::from_utf8_lossy(&links.stdout).contains("tap0_amp"),
        "{}",
        show(&links)
    );
    let out = p.run(&["rm", "-f", "-t", "1", "web"]);
    assert!(out.status.success(), "podman rm: {}", show(&out));
    assert_nothing_left(&p, &states_before);
}
