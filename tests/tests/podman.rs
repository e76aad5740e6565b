//! podman drives Ampoule as its OCI runtime (`--runtime`), with its own
//! bundle, mounts and default seccomp profile: a volume written in the
//! container is on the host afterwards, and the root filesystem podman
//! prepared is written in place. podman's storage, state and temporary
//! files are private to the test; the container has no network (podman's
//! default bridge would touch the host's network namespace).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ampoule_tests::{ampoule_bin, show, vm_test, CliEnv, VmLock};

struct Podman<'a> {
    env: &'a CliEnv,
    dir: PathBuf,
}

impl Podman<'_> {
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
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

    let left: Vec<_> = env
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
