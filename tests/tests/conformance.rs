//! OCI runtime conformance over the bundle shapes real clients write: plain
//! `runc spec` (the real runc's output), podman's and containerd's CRI's
//! (their default seccomp profiles, masked and read-only paths, rlimits,
//! capabilities, cgroupsPath absolute and relative, namespaces with and
//! without paths, hooks), each run with `ampoule run` and checked from the
//! host the way runc would be: what the process wrote is in `rootfs/`, the
//! host cgroup has the limit (read by a poststart hook on the host while the
//! container runs), every hook ran with the state on stdin.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ampoule_tests::{show, vm_test, write_script, CliEnv, TestNetns, VmLock};
use serde_json::{json, Value};

const TESTDATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../agent/src/container/testdata"
);

/// One row of the table.
struct Case {
    name: &'static str,
    /// The process's script (busybox sh).
    script: &'static str,
    /// Turns the `runc spec` bundle into the client's shape.
    shape: fn(&mut Value, &Ctx),
    /// Checks after `ampoule run` returned.
    check: fn(&Outcome, &Ctx),
}

/// What a case's shape and checks share.
struct Ctx {
    /// Where host hooks write.
    out: PathBuf,
    /// A host hook script: `hook NAME [FILE...]` writes its stdin to
    /// `<out>/NAME.state`, its argv to `<out>/NAME.args`, and copies each
    /// FILE (read on the host while it runs) into `<out>/NAME.files`.
    hook: PathBuf,
    /// A unique absolute cgroup path prefix.
    cgroup_top: String,
    netns: Option<PathBuf>,
}

struct Outcome {
    stdout: String,
    code: Option<i32>,
    rootfs: PathBuf,
    out: PathBuf,
    full: String,
}

impl Outcome {
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", self.full))
    }
}

fn host_hook(ctx: &Ctx, name: &str, files: &[String]) -> Value {
    let mut args = vec![Value::from("hook"), Value::from(name)];
    args.extend(files.iter().map(|f| Value::from(f.as_str())));
    json!({"path": ctx.hook, "args": args, "env": ["HOOK_TEST=1"], "timeout": 20})
}

fn load(path: &str) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The host cgroup file `file` of the v1 hierarchy `hier` (or the unified
/// one) for the absolute cgroups path `path`.
fn cgroup_file(hier: &str, path: &str, file: &str) -> String {
    let root = Path::new("/sys/fs/cgroup");
    let base = if root.join("cgroup.controllers").exists() {
        root.to_path_buf()
    } else {
        root.join(hier)
    };
    base.join(path.trim_start_matches('/'))
        .join(file)
        .display()
        .to_string()
}

fn unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

fn runc_plain(_: &mut Value, _: &Ctx) {}

fn check_runc_plain(o: &Outcome, _: &Ctx) {
    assert_eq!(o.code, Some(0), "{}", o.full);
    // runc spec: read-only root, RLIMIT_NOFILE 1024, no new privileges.
    assert!(o.stdout.contains("ro-refused"), "{}", o.full);
    assert!(o.stdout.contains("nofile=1024"), "{}", o.full);
    assert!(o.stdout.contains("NoNewPrivs:\t1"), "{}", o.full);
    assert!(!o.rootfs.join("x").exists());
}

/// podman 4 with cgroupfs: its seccomp profile, capabilities, rlimits,
/// masked and read-only paths, /dev/shm and /run tmpfs, an absolute
/// cgroupsPath, and the OCI hooks an engine's hooks.d gives it.
fn podman(v: &mut Value, ctx: &Ctx) {
    v["root"]["readonly"] = false.into();
    v["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576},
        {"type": "RLIMIT_NPROC", "hard": 4194304, "soft": 4194304}
    ]);
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT"
    ]);
    v["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps
    });
    v["process"]["env"] = json!([
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "TERM=xterm",
        "container=podman",
        "HOSTNAME=conf-podman",
        "HOME=/root"
    ]);
    v["hostname"] = "conf-podman".into();
    v["mounts"] = json!([
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nodev", "noexec", "nosuid"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["rprivate", "nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["rw", "nosuid", "nodev", "noexec", "relatime", "size=64000k"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]}
    ]);
    let linux = &mut v["linux"];
    linux["seccomp"] = load(&format!("{TESTDATA}/seccomp-podman-amd64.json"));
    linux["maskedPaths"] = json!([
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/fs/selinux",
        "/sys/dev/block"
    ]);
    linux["readonlyPaths"] = json!([
        "/proc/asound",
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger"
    ]);
    let path = format!("{}/libpod_parent/libpod-conf", ctx.cgroup_top);
    linux["cgroupsPath"] = path.clone().into();
    linux["resources"] = json!({
        "cpu": {"quota": 50000, "period": 100000},
        "pids": {"limit": 2048}
    });
    let probe = if unified() {
        cgroup_file("", &path, "cpu.max")
    } else {
        cgroup_file("cpu", &path, "cpu.cfs_quota_us")
    };
    v["hooks"] = json!({
        "createRuntime": [host_hook(ctx, "createRuntime", &[])],
        "prestart": [host_hook(ctx, "prestart", &[])],
        "poststart": [host_hook(ctx, "poststart", &[probe])],
        "poststop": [host_hook(ctx, "poststop", &[])]
    });
}

fn check_podman(o: &Outcome, _: &Ctx) {
    assert_eq!(o.code, Some(0), "{}", o.full);
    assert_eq!(
        std::fs::read_to_string(o.rootfs.join("written"))
            .ok()
            .as_deref(),
        Some("podman\n"),
        "the write lands in the bundle's rootfs, as with runc: {}",
        o.full
    );
    assert!(o.stdout.contains("nofile=1048576"), "{}", o.full);
    assert!(o.stdout.contains("kcore=0"), "masked: {}", o.full);
    assert!(
        o.stdout.contains("sys-ro"),
        "read-only /proc/sys: {}",
        o.full
    );
    assert!(o.stdout.contains("host=conf-podman"), "{}", o.full);
    // Each host hook ran, in the lifecycle's order, with the state.
    for (hook, status) in [
        ("createRuntime", "creating"),
        ("prestart", "created"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let state: Value = serde_json::from_str(&o.read(&format!("{hook}.state")))
            .unwrap_or_else(|e| panic!("{hook}: state on stdin is JSON: {e}\n{}", o.full));
        assert_eq!(state["id"], "conf-podman", "{hook}: {state}");
        assert!(state["ociVersion"].is_string(), "{hook}: {state}");
        assert!(
            state["bundle"]
                .as_str()
                .is_some_and(|b| b.ends_with("podman")),
            "{hook}: {state}"
        );
        let got = state["status"].as_str().unwrap_or_default();
        assert!(
            got == status || (hook == "createRuntime" && got == "created"),
            "{hook}: status {got:?}, expected {status:?}"
        );
        assert_eq!(o.read(&format!("{hook}.args")).trim(), hook, "argv[1..]");
    }
    let quota = o.read("poststart.files");
    let quota = quota.trim();
    assert!(
        quota == "50000" || quota == "50000 100000",
        "the host cgroup has the CPU limit: {quota:?}"
    );
}

/// containerd 1.6's CRI for a kubelet pod container: its seccomp profile
/// and capabilities, the pod's network namespace by path, shared IPC/UTS
/// (here the container's own: one container per VM), hostname, the
/// files CRI bind-mounts (/etc/hosts, /etc/resolv.conf, /etc/hostname), an
/// absolute kubepods cgroupsPath with CPU shares and a memory limit.
fn cri(v: &mut Value, ctx: &Ctx) {
    v["root"]["readonly"] = false.into();
    v["hostname"] = "conf-cri".into();
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    v["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps
    });
    v["process"]["noNewPrivileges"] = false.into();
    v["process"].as_object_mut().map(|p| p.remove("rlimits"));
    let files = ctx.out.join("cri-files");
    std::fs::create_dir_all(&files).expect("CRI files");
    std::fs::write(
        files.join("hosts"),
        "127.0.0.1 localhost\n10.88.0.5 conf-cri\n",
    )
    .expect("hosts");
    std::fs::write(
        files.join("resolv.conf"),
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
    )
    .expect("resolv.conf");
    std::fs::write(files.join("hostname"), "conf-cri\n").expect("hostname");
    let mounts = v["mounts"].as_array_mut().expect("mounts");
    for f in ["hosts", "resolv.conf", "hostname"] {
        mounts.push(json!({
            "destination": format!("/etc/{f}"),
            "type": "bind",
            "source": files.join(f),
            "options": ["rbind", "rprivate", "rw"]
        }));
    }
    let linux = &mut v["linux"];
    linux["seccomp"] = load(&format!("{TESTDATA}/seccomp-containerd-amd64.json"));
    linux["maskedPaths"]
        .as_array_mut()
        .expect("masked")
        .push("/sys/devices/virtual/powercap".into());
    let netns = ctx.netns.as_ref().expect("a pod network namespace");
    linux["namespaces"] = json!([
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "network", "path": netns}
    ]);
    let path = format!("{}/kubepods/besteffort/pod0c0f/conf-cri", ctx.cgroup_top);
    linux["cgroupsPath"] = path.clone().into();
    linux["resources"] = json!({
        "cpu": {"shares": 2},
        "memory": {"limit": 134217728}
    });
    let probe = if unified() {
        cgroup_file("", &path, "cpu.weight")
    } else {
        cgroup_file("cpu", &path, "cpu.shares")
    };
    v["hooks"] = json!({"poststart": [host_hook(ctx, "poststart", &[probe])]});
}

fn check_cri(o: &Outcome, _: &Ctx) {
    assert_eq!(o.code, Some(0), "{}", o.full);
    assert_eq!(
        std::fs::read_to_string(o.rootfs.join("written"))
            .ok()
            .as_deref(),
        Some("cri\n"),
        "{}",
        o.full
    );
    assert!(o.stdout.contains("host=conf-cri"), "{}", o.full);
    assert!(o.stdout.contains("nameserver 10.96.0.10"), "{}", o.full);
    assert!(o.stdout.contains("10.88.0.5 conf-cri"), "{}", o.full);
    assert!(
        o.stdout.contains("nets=lo;"),
        "only the pod's lo: {}",
        o.full
    );
    let shares = o.read("poststart.files");
    assert!(
        shares.trim() == "2" || shares.trim() == "1",
        "the host cgroup has the CPU shares: {shares:?}"
    );
}

const RUNC_SCRIPT: &str = "touch /x 2>/dev/null && echo ro-allowed || echo ro-refused; \
     echo nofile=$(ulimit -n); grep NoNewPrivs /proc/self/status";
const PODMAN_SCRIPT: &str = "echo podman > /written; echo nofile=$(ulimit -n); \
     echo kcore=$(cat /proc/kcore | wc -c); \
     (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo sys-rw || echo sys-ro; \
     echo host=$(hostname)";
const CRI_SCRIPT: &str = "echo cri > /written; echo host=$(hostname); cat /etc/resolv.conf; \
     cat /etc/hosts; echo nets=$(ls /sys/class/net | tr '\\n' ';')";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "runc",
            script: RUNC_SCRIPT,
            shape: runc_plain,
            check: check_runc_plain,
        },
        Case {
            name: "podman",
            script: PODMAN_SCRIPT,
            shape: podman,
            check: check_podman,
        },
        Case {
            name: "cri",
            script: CRI_SCRIPT,
            shape: cri,
            check: check_cri,
        },
    ]
}

/// A bundle whose config.json is the real `runc spec` with `script`.
fn runc_spec_bundle(env: &CliEnv, name: &str, script: &str) -> PathBuf {
    let dir = env.bundle(name, &["true"], |_| {});
    std::fs::remove_file(dir.join("config.json")).expect("remove config.json");
    let out = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&dir)
        .output()
        .expect("runc spec");
    assert!(out.status.success(), "runc spec: {}", show(&out));
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).expect("config.json"))
        .expect("runc's config.json");
    v["process"]["terminal"] = false.into();
    v["process"]["args"] = json!(["sh", "-c", script]);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("encode")).expect("write");
    dir
}

#[test]
fn bundles_in_the_shapes_runc_spec_podman_and_cri_write_run_as_runc_would_run_them() {
    if !vm_test("bundles_in_the_shapes_runc_spec_podman_and_cri_write_run_as_runc_would_run_them") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let pod_ns = TestNetns::new(&format!("amp-conf-{}", std::process::id()));
    let top = format!("/ampoule-conformance-{}", std::process::id());
    for case in cases() {
        let out = env.env.tmp.path().join(format!("{}-out", case.name));
        std::fs::create_dir_all(&out).expect("out dir");
        let hook = env.env.tmp.path().join("hook.sh");
        write_script(
            &hook,
            &format!(
                "name=$1; shift\nd={}\ncat > \"$d/$name.state\"\necho \"$name\" > \"$d/$name.args\"\nfor f in \"$@\"; do cat \"$f\"; done > \"$d/$name.files\"\n[ \"$HOOK_TEST\" = 1 ] || exit 9",
                out.display()
            ),
        );
        let ctx = Ctx {
            out: out.clone(),
            hook,
            cgroup_top: top.clone(),
            netns: Some(pod_ns.path()),
        };
        let bundle = runc_spec_bundle(&env, case.name, case.script);
        let path = bundle.join("config.json");
        let mut v: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("JSON");
        (case.shape)(&mut v, &ctx);
        std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("encode")).expect("write");
        let id = format!("conf-{}", case.name);
        let run = env
            .cmd()
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .output()
            .expect("ampoule run");
        let outcome = Outcome {
            stdout: String::from_utf8_lossy(&run.stdout).into_owned(),
            code: run.status.code(),
            rootfs: bundle.join("rootfs"),
            out,
            full: format!("case {}: {}", case.name, show(&run)),
        };
        (case.check)(&outcome, &ctx);
        println!("conformance case {}: ok", case.name);
    }
    let root = Path::new("/sys/fs/cgroup");
    let leftover: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join(top.trim_start_matches('/')))
                .chain(std::iter::once(root.join(top.trim_start_matches('/'))))
                .filter(|p| p.join("libpod_parent").exists() || p.join("kubepods").exists())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    for d in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(d.path().join(top.trim_start_matches('/')));
    }
    let _ = std::fs::remove_dir(root.join(top.trim_start_matches('/')));
    assert!(leftover.is_empty(), "cgroups left: {leftover:?}");
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}
