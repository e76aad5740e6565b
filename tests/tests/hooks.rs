//! OCI hooks with real microVMs: prestart, createRuntime, poststart and
//! poststop run on the host by the `ampoule` CLI; createContainer and
//! startContainer run in the guest, in the container, from its rootfs.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use ampoule_tests::{show, vm_test, wait_until, write_script, CliEnv, VmLock};

/// A host hook script that records, under `dir`, for the name in its
/// first argument: its stdin (`NAME.state`), its arguments (`NAME.argv`),
/// and one line `NAME HOOK_ENV=... HOME=...` appended to `order`.
fn recorder(dir: &Path) -> PathBuf {
    let path = dir.join("record-hook");
    write_script(
        &path,
        &format!(
            "d={}\ncat > \"$d/$1.state\"\necho \"$*\" > \"$d/$1.argv\"\n\
             echo \"$1 HOOK_ENV=$HOOK_ENV HOME=${{HOME-unset}}\" >> \"$d/order\"",
            dir.display()
        ),
    );
    path
}

/// A hook entry for config.json running the recorder as `name`.
fn record(script: &Path, name: &str) -> serde_json::Value {
    serde_json::json!({
        "path": script,
        "args": ["record-hook", name, "extra-arg"],
        "env": ["HOOK_ENV=from-spec"],
        "timeout": 60,
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn state_of(dir: &Path, name: &str) -> serde_json::Value {
    let path = dir.join(format!("{name}.state"));
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| {
        panic!(
            "{}: not state JSON ({e}): {:?}",
            path.display(),
            read(&path)
        )
    })
}

fn order(dir: &Path) -> Vec<String> {
    read(&dir.join("order"))
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

fn assert_clean(env: &CliEnv) {
    assert!(
        wait_until(10, || env.leftovers().is_empty()),
        "left behind: {:#?}",
        env.leftovers()
    );
}

#[test]
fn host_hooks_run_in_order_at_create_start_and_delete_with_the_state_on_stdin_and_failing_poststart_or_poststop_only_warn(
) {
    if !vm_test("host_hooks_run_in_order_at_create_start_and_delete_with_the_state_on_stdin_and_failing_poststart_or_poststop_only_warn") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let rec_dir = env.env.tmp.path().join("hooks");
    std::fs::create_dir_all(&rec_dir).expect("hooks dir");
    let rec = recorder(&rec_dir);
    let failing = rec_dir.join("failing-hook");
    write_script(&failing, "echo 'this hook fails' >&2; exit 5");
    let b = env.bundle("b", &["sleep", "1000"], |v| {
        v["annotations"] = serde_json::json!({"org.example.hooks": "yes"});
        v["hooks"] = serde_json::json!({
            "createRuntime": [record(&rec, "createRuntime1"), record(&rec, "createRuntime2")],
            "prestart": [record(&rec, "prestart")],
            "poststart": [{"path": failing}, record(&rec, "poststart")],
            "poststop": [{"path": failing}, record(&rec, "poststop")],
        });
    });
    let pid_file = env.env.tmp.path().join("pid");
    let out = env.create(&b, "h1", &["--pid-file", &pid_file.display().to_string()]);
    assert!(out.status.success(), "{}", show(&out));
    // At create: prestart, then createRuntime (the spec's lifecycle), each
    // in its list's order; nothing of start or delete yet.
    assert_eq!(
        order(&rec_dir),
        ["prestart", "createRuntime1", "createRuntime2"]
    );
    let pid: u64 = read(&pid_file).trim().parse().expect("pid file");
    for name in ["prestart", "createRuntime1", "createRuntime2"] {
        let st = state_of(&rec_dir, name);
        assert_eq!(st["status"], "created", "{name}: {st}");
        assert_eq!(st["id"], "h1", "{name}: {st}");
        assert_eq!(st["pid"], pid, "{name}: {st}");
        assert_eq!(st["bundle"], b.display().to_string(), "{name}: {st}");
        assert_eq!(
            st["annotations"]["org.example.hooks"], "yes",
            "{name}: {st}"
        );
        assert!(st["ociVersion"].is_string(), "{name}: {st}");
        // args[0] is argv[0] (a script sees its path there), the rest
        // follow; the environment is the hook's own only.
        assert_eq!(
            read(&rec_dir.join(format!("{name}.argv"))).trim(),
            format!("{name} extra-arg")
        );
    }
    assert!(
        read(&rec_dir.join("order"))
            .lines()
            .all(|l| l.ends_with("HOOK_ENV=from-spec HOME=unset")),
        "{}",
        read(&rec_dir.join("order"))
    );
    assert_eq!(env.status("h1"), "created");

    // start: poststart once the process runs; a failing one is a warning.
    let out = env.cmd().args(["start", "h1"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("poststart hook"), "{}", show(&out));
    assert!(
        stderr.contains(&failing.display().to_string()),
        "{}",
        show(&out)
    );
    assert!(stderr.contains("this hook fails"), "{}", show(&out));
    assert_eq!(
        order(&rec_dir),
        ["prestart", "createRuntime1", "createRuntime2", "poststart"]
    );
    let st = state_of(&rec_dir, "poststart");
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["pid"], pid, "{st}");
    assert_eq!(env.status("h1"), "running");

    // delete: poststop once the container is gone.
    let out = env
        .cmd()
        .args(["kill", "h1", "KILL"])
        .output()
        .expect("kill");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        wait_until(30, || env.status("h1") == "stopped"),
        "status {}",
        env.status("h1")
    );
    assert_eq!(order(&rec_dir).len(), 4, "no hook runs at the exit itself");
    let out = env.cmd().args(["delete", "h1"]).output().expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("poststop hook"),
        "{}",
        show(&out)
    );
    assert_eq!(
        order(&rec_dir),
        [
            "prestart",
            "createRuntime1",
            "createRuntime2",
            "poststart",
            "poststop"
        ]
    );
    let st = state_of(&rec_dir, "poststop");
    assert_eq!(st["status"], "stopped", "{st}");
    assert_eq!(st["id"], "h1", "{st}");
    assert_eq!(st["bundle"], b.display().to_string(), "{st}");
    assert!(env.state("h1").is_none(), "state gone after delete");
    assert_clean(&env);
}

#[test]
fn run_in_the_foreground_runs_the_host_hooks_of_create_start_and_delete_in_order() {
    if !vm_test("run_in_the_foreground_runs_the_host_hooks_of_create_start_and_delete_in_order") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let rec_dir = env.env.tmp.path().join("hooks");
    std::fs::create_dir_all(&rec_dir).expect("hooks dir");
    let rec = recorder(&rec_dir);
    let b = env.bundle("b", &["sh", "-c", "echo ran; exit 4"], |v| {
        v["hooks"] = serde_json::json!({
            "createRuntime": [record(&rec, "createRuntime")],
            "prestart": [record(&rec, "prestart")],
            "poststart": [record(&rec, "poststart")],
            "poststop": [record(&rec, "poststop")],
        });
    });
    let out = env
        .cmd()
        .args(["run", "--bundle"])
        .arg(&b)
        .arg("r1")
        .stdin(Stdio::null())
        .output()
        .expect("ampoule run");
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    assert_eq!(
        order(&rec_dir),
        ["prestart", "createRuntime", "poststart", "poststop"]
    );
    assert_eq!(state_of(&rec_dir, "createRuntime")["status"], "created");
    assert_eq!(state_of(&rec_dir, "poststart")["status"], "running");
    let st = state_of(&rec_dir, "poststop");
    assert_eq!(st["status"], "stopped", "{st}");
    assert_eq!(st["id"], "r1", "{st}");
    assert!(env.state("r1").is_none(), "state gone after run");
    assert_clean(&env);
}

#[test]
fn a_failing_prestart_hook_fails_create_with_its_error_and_leaves_nothing_behind() {
    if !vm_test("a_failing_prestart_hook_fails_create_with_its_error_and_leaves_nothing_behind") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let rec_dir = env.env.tmp.path().join("hooks");
    std::fs::create_dir_all(&rec_dir).expect("hooks dir");
    let rec = recorder(&rec_dir);
    let failing = rec_dir.join("no-gpu-hook");
    write_script(&failing, "echo 'no GPU on this host' >&2; exit 3");
    let b = env.bundle("b", &["sleep", "1000"], |v| {
        v["hooks"] = serde_json::json!({
            "prestart": [{"path": failing}, record(&rec, "prestart-after")],
            "createRuntime": [record(&rec, "createRuntime")],
            "poststart": [record(&rec, "poststart")],
            "poststop": [record(&rec, "poststop")],
        });
    });
    let pid_file = env.env.tmp.path().join("pid");
    let out = env.create(&b, "h2", &["--pid-file", &pid_file.display().to_string()]);
    assert_eq!(
        out.status.code(),
        Some(12),
        "hook failure status: {}",
        show(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "prestart hook",
        &failing.display().to_string(),
        "exit status 3",
        "no GPU on this host",
    ] {
        assert!(stderr.contains(want), "{want:?} in {}", show(&out));
    }
    // The hooks after the failing one did not run; the container was
    // deleted, which runs poststop (the spec's lifecycle goes on there).
    assert_eq!(order(&rec_dir), ["poststop"]);
    assert!(!pid_file.exists(), "no pid file for a failed create");
    assert!(env.state("h2").is_none(), "no state after a failed create");
    let out = env.cmd().args(["list", "-q"]).output().expect("list");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{}", show(&out));
    assert_clean(&env);
}

#[test]
fn a_create_runtime_hook_past_its_timeout_is_killed_and_fails_create() {
    if !vm_test("a_create_runtime_hook_past_its_timeout_is_killed_and_fails_create") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let dir = env.env.tmp.path().join("hooks");
    let slow = dir.join("slow-hook");
    let sleeper = dir.join("sleeper.pid");
    write_script(
        &slow,
        &format!("sleep 300 & echo $! > {}; wait", sleeper.display()),
    );
    let b = env.bundle("b", &["sleep", "1000"], |v| {
        v["hooks"] = serde_json::json!({
            "createRuntime": [{"path": slow, "timeout": 2}],
        });
    });
    let t0 = std::time::Instant::now();
    let out = env.create(&b, "h3", &[]);
    assert_eq!(out.status.code(), Some(12), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("createRuntime hook"), "{}", show(&out));
    assert!(stderr.contains("timeout of 2s"), "{}", show(&out));
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(200),
        "create waited for the hook: {:?}",
        t0.elapsed()
    );
    // The hook's own child went with it.
    let pid = read(&sleeper);
    assert!(!pid.trim().is_empty(), "the hook started its child");
    assert!(
        wait_until(5, || read(&PathBuf::from(format!(
            "/proc/{}/stat",
            pid.trim()
        )))
        .split(") ")
        .nth(1)
        .is_none_or(|s| s.starts_with('Z'))),
        "the hook's child {pid} survived"
    );
    assert!(env.state("h3").is_none(), "no state after a failed create");
    assert_clean(&env);
}

#[test]
fn create_container_and_start_container_hooks_run_from_the_rootfs_in_the_containers_namespaces_and_write_into_it(
) {
    if !vm_test("create_container_and_start_container_hooks_run_from_the_rootfs_in_the_containers_namespaces_and_write_into_it") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    // The container records its own namespaces, then waits.
    let args = [
        "sh",
        "-c",
        "{ readlink /proc/self/ns/mnt; readlink /proc/self/ns/pid; } > /container.ns; sleep 1000",
    ];
    // Scripts in the container's rootfs, run by the agent in the guest:
    // each writes its stdin, arguments, environment and namespaces into
    // the container's root (the bundle's rootfs/ on the host, through
    // virtio-fs).
    let body = |name: &str| {
        format!(
            "cat > /{name}.state\necho \"$*\" > /{name}.argv\n\
             echo \"GUEST_HOOK=$GUEST_HOOK HOME=${{HOME-unset}}\" > /{name}.env\n\
             {{ readlink /proc/self/ns/mnt; readlink /proc/self/ns/pid; }} > /{name}.ns"
        )
    };
    let b = env.bundle("b", &args, |v| {
        // Writable, so that the startContainer hook and the container can
        // write in it too (`ampoule spec` makes it read-only).
        v["root"]["readonly"] = false.into();
        v["hooks"] = serde_json::json!({
            "createContainer": [{
                "path": "/hooks/create-container",
                "args": ["create-container", "one", "two"],
                "env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin", "GUEST_HOOK=yes"],
                "timeout": 30,
            }],
            "startContainer": [{
                "path": "/hooks/start-container",
                "env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin", "GUEST_HOOK=yes"],
            }],
        });
    });
    let rootfs = b.join("rootfs");
    write_script(&rootfs.join("hooks/create-container"), &body("cc"));
    write_script(&rootfs.join("hooks/start-container"), &body("sc"));
    let out = env.create(&b, "h4", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let st: serde_json::Value =
        serde_json::from_str(&read(&rootfs.join("cc.state"))).expect("createContainer state");
    assert_eq!(st["id"], "h4", "{st}");
    assert_eq!(st["status"], "creating", "{st}");
    assert!(st["pid"].as_u64().is_some_and(|p| p > 0), "{st}");
    assert_eq!(read(&rootfs.join("cc.argv")).trim(), "one two");
    assert_eq!(
        read(&rootfs.join("cc.env")).trim(),
        "GUEST_HOOK=yes HOME=unset"
    );
    assert!(
        !rootfs.join("sc.state").exists(),
        "startContainer ran before start"
    );

    let out = env.cmd().args(["start", "h4"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    let st: serde_json::Value =
        serde_json::from_str(&read(&rootfs.join("sc.state"))).expect("startContainer state");
    assert_eq!(st["id"], "h4", "{st}");
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(
        read(&rootfs.join("sc.env")).trim(),
        "GUEST_HOOK=yes HOME=unset"
    );
    // Both ran in the container's mount and pid namespaces.
    assert!(
        // Both lines: the shell writes them one after the other.
        wait_until(30, || rootfs.join("container.ns").exists()
            && read(&rootfs.join("container.ns")).contains("pid:[")),
        "the container did not record its namespaces"
    );
    let ns = read(&rootfs.join("container.ns"));
    assert!(ns.contains("mnt:[") && ns.contains("pid:["), "{ns}");
    assert_eq!(
        read(&rootfs.join("cc.ns")),
        ns,
        "createContainer namespaces"
    );
    assert_eq!(read(&rootfs.join("sc.ns")), ns, "startContainer namespaces");

    let out = env
        .cmd()
        .args(["delete", "--force", "h4"])
        .output()
        .expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    assert_clean(&env);
}

#[test]
fn a_create_container_hook_not_in_the_container_fails_create_naming_its_path() {
    if !vm_test("a_create_container_hook_not_in_the_container_fails_create_naming_its_path") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    // A host path: it exists here, but not in the container.
    let host_only = env.env.tmp.path().join("host-only-hook");
    write_script(&host_only, "exit 0");
    let b = env.bundle("b", &["sleep", "1000"], |v| {
        v["hooks"] = serde_json::json!({
            "createContainer": [{"path": host_only}],
        });
    });
    let out = env.create(&b, "h5", &[]);
    assert!(!out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&host_only.display().to_string()),
        "{}",
        show(&out)
    );
    assert!(
        stderr.contains("does not exist in the container"),
        "{}",
        show(&out)
    );
    assert!(env.state("h5").is_none(), "no state after a failed create");
    assert_clean(&env);
}

#[test]
fn a_failing_start_container_hook_fails_start_and_the_program_never_runs() {
    if !vm_test("a_failing_start_container_hook_fails_start_and_the_program_never_runs") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let args = ["sh", "-c", "touch /program-ran; sleep 1000"];
    let b = env.bundle("b", &args, |v| {
        v["root"]["readonly"] = false.into();
        v["hooks"] = serde_json::json!({
            "startContainer": [{"path": "/hooks/refuse"}],
        });
    });
    let rootfs = b.join("rootfs");
    write_script(
        &rootfs.join("hooks/refuse"),
        "echo 'refusing to start' >&2; exit 7",
    );
    let out = env.create(&b, "h6", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let out = env.cmd().args(["start", "h6"]).output().expect("start");
    assert!(!out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "startContainer hook",
        "/hooks/refuse",
        "exit status 7",
        "refusing to start",
    ] {
        assert!(stderr.contains(want), "{want:?} in {}", show(&out));
    }
    assert!(
        !rootfs.join("program-ran").exists(),
        "the program ran after its startContainer hook failed"
    );
    assert!(
        wait_until(30, || env.status("h6") == "stopped"),
        "status {}",
        env.status("h6")
    );
    let out = env.cmd().args(["delete", "h6"]).output().expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    assert_clean(&env);
}
