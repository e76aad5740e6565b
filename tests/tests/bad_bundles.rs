//! Bundles and ids the CLI must refuse before anything boots: each gets a
//! clear message and its own exit status (README, "Exit statuses"), and
//! nothing is written anywhere (state root, rootfs cache, run and log
//! directories, the places the bad paths point at). No VM is started.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use ampoule_tests::{files_in, show, CliEnv};

/// Exit statuses from README.md.
const EXIT_USAGE: i32 = 3;
const EXIT_BUNDLE: i32 = 4;
const EXIT_UNSAFE_PATH: i32 = 9;
const EXIT_TOO_LARGE: i32 = 10;
const EXIT_NAMESPACE: i32 = 11;

/// A bundle with an empty `rootfs/` and `ampoule spec`'s config.json,
/// edited by `edit`.
fn bundle(env: &CliEnv, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = env.env.tmp.path().join("bundles").join(name);
    std::fs::create_dir_all(dir.join("rootfs")).expect("rootfs dir");
    let out = env
        .cmd()
        .arg("spec")
        .arg("--bundle")
        .arg(&dir)
        .output()
        .expect("ampoule spec");
    assert!(out.status.success(), "spec: {}", show(&out));
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read config")).expect("json");
    v["process"]["terminal"] = false.into();
    v["process"]["args"] = serde_json::json!(["true"]);
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("encode")).expect("write config");
    dir
}

fn bind(source: &str) -> serde_json::Value {
    serde_json::json!({"destination": "/mnt/x", "type": "bind", "source": source, "options": ["rbind", "ro"]})
}

fn add_mount(v: &mut serde_json::Value, m: serde_json::Value) {
    v["mounts"].as_array_mut().expect("mounts").push(m);
}

/// Everything under the directories a create may write to, and under
/// `outside` (where the bad paths point).
fn written(env: &CliEnv, outside: &Path) -> Vec<String> {
    let c = &env.env.config;
    let mut all = Vec::new();
    for d in [&env.root, &c.run_dir, &c.log_dir, &c.cache_dir] {
        all.extend(files_in(d));
    }
    all.extend(files_in(outside));
    all.sort();
    all
}

fn run_cli(env: &CliEnv, cmd: &str, bundle: &Path, id: &str) -> Output {
    env.cmd()
        .arg(cmd)
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .expect("ampoule")
}

#[test]
fn bad_bundles_and_ids_are_refused_with_their_own_status_and_write_nothing() {
    let env = CliEnv::new();
    // A directory outside every bundle, with something worth stealing.
    let outside = env.env.tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("rootfs")).expect("outside dir");
    std::fs::write(outside.join("secret"), b"host secret").expect("secret");

    let mut cases: Vec<(&str, PathBuf, &str, i32, &str)> = Vec::new();

    let b = bundle(&env, "rootfs-symlink", |_| {});
    std::fs::remove_dir(b.join("rootfs")).expect("rm rootfs");
    symlink(outside.join("rootfs"), b.join("rootfs")).expect("symlink rootfs");
    cases.push(("symlinked rootfs", b, "c1", EXIT_UNSAFE_PATH, "symlink"));

    let b = bundle(&env, "rootfs-dotdot", |v| {
        v["root"]["path"] = "../../outside/rootfs".into();
    });
    cases.push(("'..' in root.path", b, "c1", EXIT_UNSAFE_PATH, "'..'"));

    let b = bundle(&env, "rootfs-through-link", |v| {
        v["root"]["path"] = "via/rootfs".into();
    });
    symlink(&outside, b.join("via")).expect("symlink via");
    cases.push((
        "root.path through a symlink",
        b,
        "c1",
        EXIT_UNSAFE_PATH,
        "symlink",
    ));

    let b = bundle(&env, "bind-dotdot", |v| add_mount(v, bind("../../outside")));
    cases.push(("'..' in a bind source", b, "c1", EXIT_UNSAFE_PATH, "'..'"));

    let b = bundle(&env, "bind-abs-dotdot", |v| {
        add_mount(
            v,
            bind(&format!(
                "{}/rootfs/../../outside",
                env.env.tmp.path().display()
            )),
        )
    });
    cases.push((
        "'..' in an absolute bind source",
        b,
        "c1",
        EXIT_UNSAFE_PATH,
        "'..'",
    ));

    let b = bundle(&env, "bind-symlink", |v| add_mount(v, bind("data")));
    symlink(&outside, b.join("data")).expect("symlink data");
    cases.push((
        "symlinked bind source",
        b,
        "c1",
        EXIT_UNSAFE_PATH,
        "symlink",
    ));

    let b = bundle(&env, "bind-through-link", |v| {
        add_mount(v, bind("data/secret"))
    });
    symlink(&outside, b.join("data")).expect("symlink data");
    cases.push((
        "bind source through a symlink",
        b,
        "c1",
        EXIT_UNSAFE_PATH,
        "symlink",
    ));

    let b = bundle(&env, "bind-abs-symlink", |_| {});
    let link = b.join("abs-link");
    symlink(outside.join("secret"), &link).expect("symlink abs");
    let text = std::fs::read(b.join("config.json")).expect("read");
    let mut v: serde_json::Value = serde_json::from_slice(&text).expect("json");
    add_mount(&mut v, bind(&link.display().to_string()));
    std::fs::write(
        b.join("config.json"),
        serde_json::to_vec(&v).expect("encode"),
    )
    .expect("write");
    cases.push((
        "absolute symlinked bind source",
        b,
        "c1",
        EXIT_UNSAFE_PATH,
        "symlink",
    ));

    let b = bundle(&env, "config-symlink", |_| {});
    std::fs::rename(b.join("config.json"), outside.join("config.json")).expect("move config");
    symlink(outside.join("config.json"), b.join("config.json")).expect("symlink config");
    cases.push((
        "symlinked config.json",
        b,
        "c1",
        EXIT_UNSAFE_PATH,
        "symlink",
    ));

    let b = bundle(&env, "config-huge", |_| {});
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(b.join("config.json"))
        .expect("open config");
    f.set_len(100 * 1024 * 1024).expect("100 MB config.json");
    drop(f);
    cases.push((
        "100 MB config.json",
        b,
        "c1",
        EXIT_TOO_LARGE,
        "over the limit",
    ));

    let b = bundle(&env, "config-fifo", |_| {});
    std::fs::remove_file(b.join("config.json")).expect("rm config");
    nix::unistd::mkfifo(
        &b.join("config.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    cases.push((
        "config.json a FIFO",
        b,
        "c1",
        EXIT_BUNDLE,
        "not a regular file",
    ));

    // A podman pod's infra container (runc-style sibling): its namespaces
    // are another host process's, not in this container's microVM.
    let b = bundle(&env, "ns-of-sibling", |v| {
        v["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid"}, {"type": "mount"}, {"type": "network"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"}, {"type": "uts"}
        ]);
    });
    cases.push((
        "ipc namespace of another process",
        b,
        "c1",
        EXIT_NAMESPACE,
        "joining the ipc namespace of PID 4242 (/proc/4242/ns/ipc) is not possible: it is not \
         in this container's microVM",
    ));
    // podman's --network host: no network namespace of its own.
    let b = bundle(&env, "host-network", |v| {
        v["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}
        ]);
    });
    cases.push((
        "host networking",
        b,
        "c1",
        EXIT_NAMESPACE,
        "host networking is not possible in a microVM",
    ));

    let good = bundle(&env, "good", |_| {});
    for id in ["a/b", "..", "../x", "x/../../y", ".", "/abs", ""] {
        cases.push((
            "bad id",
            good.clone(),
            id,
            EXIT_USAGE,
            "invalid container id",
        ));
    }

    let before = written(&env, &outside);
    for (what, b, id, code, needle) in &cases {
        for cmd in ["create", "run"] {
            let out = run_cli(&env, cmd, b, id);
            assert_eq!(
                out.status.code(),
                Some(*code),
                "{what} ({cmd} {id:?}): {}",
                show(&out)
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(needle), "{what}: {needle:?} in {}", show(&out));
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{what}: one line: {}",
                show(&out)
            );
            assert_eq!(
                written(&env, &outside),
                before,
                "{what} ({cmd}) wrote something"
            );
        }
    }
}

/// `cmd` run from a shell that sets `LISTEN_FDS` and, as systemd does for
/// the process it activates, `LISTEN_PID` to the pid that then execs it.
fn socket_activated(cmd: &std::process::Command) -> std::process::Command {
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$@""#)
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

/// `cmd` with its descriptors 3 and 4 closed, whatever the test process
/// holds there.
fn without_fds_3_and_4(mut cmd: std::process::Command) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only calls close(2), which
    // is async-signal-safe, on the child's own descriptors.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(3);
            libc::close(4);
            Ok(())
        });
    }
    cmd
}

#[test]
fn extra_fds_that_cannot_be_carried_are_refused_naming_them_before_anything_boots() {
    let env = CliEnv::new();
    let outside = env.env.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside dir");
    let good = bundle(&env, "good", |_| {});
    let before = written(&env, &outside);
    let check = |what: &str, out: Output, needle: &str| {
        assert_eq!(
            out.status.code(),
            Some(EXIT_USAGE),
            "{what}: {}",
            show(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{what}: {needle:?} in {}", show(&out));
        assert!(
            err.contains("microVM"),
            "{what}: the reason in {}",
            show(&out)
        );
        assert_eq!(written(&env, &outside), before, "{what} wrote something");
    };
    for cmd in ["create", "run"] {
        let mut c = without_fds_3_and_4(env.cmd());
        let out = c
            .arg(cmd)
            .arg("--preserve-fds")
            .arg("2")
            .arg("--bundle")
            .arg(&good)
            .arg("c1")
            .stdin(Stdio::null())
            .output()
            .expect("ampoule");
        // Descriptors 3 and 4 are not open in `ampoule`.
        check(cmd, out, "--preserve-fds: descriptor 3 ");

        let mut plain = env.cmd();
        plain
            .arg(cmd)
            .arg("--bundle")
            .arg(&good)
            .arg("c1")
            .stdin(Stdio::null());
        let out = socket_activated(&plain).output().expect("sh");
        check(&format!("socket-activated {cmd}"), out, "LISTEN_FDS=1");
    }
    let out = without_fds_3_and_4(env.cmd())
        .args(["exec", "--preserve-fds", "1", "c1", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("ampoule");
    check("exec", out, "--preserve-fds: descriptor 3 ");
}
