//! containerd end to end: a private containerd, the local busybox image, and
//! the Ampoule shim selected with `--runtime io.containerd.ampoule.v2`.
//!
//! VM tests fail (never skip) on a host with /dev/kvm or qemu-system-x86_64;
//! elsewhere they print `SKIPPED: <name>: <reason>`, and with
//! `AMPOULE_REQUIRE_VM=1` skipping is itself a failure.

mod common;

use common::{Containerd, IMAGE};

/// The harness itself, under containerd's default runtime (runc): the image
/// imports, runs, and nothing is left behind.
#[test]
fn harness_runs_busybox_with_runc() {
    if !common::should_run("harness_runs_busybox_with_runc", false) {
        return;
    }
    let ctd = Containerd::start("harness");
    let out = ctd
        .ctr_ok(["run", "--rm", IMAGE, "harness-true", "/bin/true"])
        .unwrap_or_else(|e| panic!("{e}\ncontainerd log:\n{}", ctd.log()));
    assert_eq!(out, "");
    let out = ctd
        .ctr_ok(["run", "--rm", IMAGE, "harness-echo", "echo", "hello"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.trim(), "hello");
    let status = ctd
        .ctr(["run", "--rm", IMAGE, "harness-exit", "sh", "-c", "exit 7"])
        .status;
    assert_eq!(status.code(), Some(7));
    let left = ctd.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_for, VmLock, AMPOULE};

/// A VM test's containerd: fails (never skips) on a VM-capable host.
fn vm_containerd(name: &str, namespace: &str) -> Option<(VmLock, Containerd)> {
    if !common::should_run(name, true) {
        return None;
    }
    let lock = VmLock::acquire();
    Some((lock, Containerd::start(namespace)))
}

/// `ctr run --rm --runtime io.containerd.ampoule.v2 IMAGE ID ARGS...`.
fn ampoule_run(ctd: &Containerd, id: &str, args: &[&str]) -> std::process::Output {
    let mut a = vec!["run", "--rm", "--runtime", AMPOULE, IMAGE, id];
    a.extend_from_slice(args);
    ctd.ctr(a)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Shim and containerd logs, for failure messages.
fn diagnostics(ctd: &Containerd) -> String {
    let log = ctd.log();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("--- containerd log (tail) ---\n{}", tail.join("\n"))
}

fn assert_nothing_left(ctd: &Containerd, groups: &[&str]) {
    let left = wait_for(Duration::from_secs(10), || {
        let l = ctd.leftovers_with(groups);
        l.is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "left behind: {:?}\n{}",
        ctd.leftovers_with(groups),
        diagnostics(ctd)
    );
    let vm_dirs = std::fs::read_dir(ctd.vm_run_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        vm_dirs,
        0,
        "sandbox directories left in {}",
        ctd.vm_run_dir().display()
    );
}

fn host_kernel_release() -> String {
    text(
        &Command::new("uname")
            .arg("-r")
            .output()
            .expect("uname")
            .stdout,
    )
    .trim()
    .to_string()
}

#[test]
fn ctr_run_prints_the_guest_kernel_release() {
    let Some((_lock, ctd)) = vm_containerd("ctr_run_prints_the_guest_kernel_release", "vm-uname")
    else {
        return;
    };
    let out = ampoule_run(&ctd, "uname", &["uname", "-r"]);
    assert!(
        out.status.success(),
        "ctr run failed ({}): {}{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        diagnostics(&ctd)
    );
    let guest = text(&out.stdout).trim().to_string();
    assert!(!guest.is_empty(), "no output");
    assert_ne!(
        guest,
        host_kernel_release(),
        "the task ran on the host kernel"
    );
    assert_nothing_left(&ctd, &["uname"]);
}

#[test]
fn ctr_run_passes_exit_status_and_all_output() {
    let Some((_lock, ctd)) = vm_containerd("ctr_run_passes_exit_status_and_all_output", "vm-exit")
    else {
        return;
    };
    let out = ampoule_run(
        &ctd,
        "exit7",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        diagnostics(&ctd)
    );
    assert_eq!(text(&out.stdout).trim(), "out");
    assert!(text(&out.stderr).contains("err"));
    // Nothing lost at exit: a burst of output right before the end.
    let out = ampoule_run(&ctd, "seq", &["seq", "1", "20000"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        diagnostics(&ctd)
    );
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 20000);
    assert_eq!(stdout.lines().last(), Some("20000"));
    assert_nothing_left(&ctd, &["exit7", "seq"]);
}

fn task_status(ctd: &Containerd, id: &str) -> Option<String> {
    let ls = ctd.ctr_ok(["tasks", "ls"]).ok()?;
    ls.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&id))
        .and_then(|f| f.get(2).map(|s| s.to_string()))
}

#[test]
fn ctr_detached_task_lifecycle() {
    let Some((_lock, ctd)) = vm_containerd("ctr_detached_task_lifecycle", "vm-life") else {
        return;
    };
    let id = "life";
    ctd.ctr_ok([
        "run",
        "-d",
        "--runtime",
        AMPOULE,
        IMAGE,
        id,
        "sleep",
        "1000",
    ])
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(&ctd)));
    assert_eq!(task_status(&ctd, id).as_deref(), Some("RUNNING"));

    let out = ctd.ctr(["tasks", "exec", "--exec-id", "e1", id, "echo", "from-exec"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        diagnostics(&ctd)
    );
    assert_eq!(text(&out.stdout).trim(), "from-exec");
    let out = ctd.ctr(["tasks", "exec", "--exec-id", "e2", id, "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    let ps = ctd
        .ctr_ok(["tasks", "ps", id])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ps.lines().count() >= 2, "ctr task ps: {ps}");

    ctd.ctr_ok(["tasks", "pause", id])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(task_status(&ctd, id).as_deref(), Some("PAUSED"));
    ctd.ctr_ok(["tasks", "resume", id])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(task_status(&ctd, id).as_deref(), Some("RUNNING"));

    let metrics = ctd
        .ctr_ok(["tasks", "metrics", id])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        metrics.to_lowercase().contains("memory"),
        "ctr task metrics: {metrics}"
    );

    ctd.ctr_ok(["tasks", "kill", "-s", "SIGKILL", id])
        .unwrap_or_else(|e| panic!("{e}"));
    let stopped = wait_for(Duration::from_secs(20), || {
        (task_status(&ctd, id).as_deref() == Some("STOPPED")).then_some(())
    });
    assert!(
        stopped.is_some(),
        "task not stopped after kill: {:?}",
        task_status(&ctd, id)
    );
    ctd.ctr_ok(["tasks", "rm", id])
        .unwrap_or_else(|e| panic!("{e}"));
    ctd.ctr_ok(["containers", "rm", id])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn ctr_run_with_a_tty() {
    let Some((_lock, ctd)) = vm_containerd("ctr_run_with_a_tty", "vm-tty") else {
        return;
    };
    // ctr -t needs a terminal on its own stdin: script(1) gives it one.
    let cmd = format!(
        "ctr --address {} --namespace {} run --rm -t --runtime {AMPOULE} {IMAGE} tty sh -c 'tty; test -t 0 && echo IS-A-TTY'",
        ctd.socket().display(),
        ctd.namespace
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("running script");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        text(&out.stderr),
        diagnostics(&ctd)
    );
    assert!(
        stdout.contains("IS-A-TTY") && stdout.contains("/dev/"),
        "{stdout}"
    );
    assert_nothing_left(&ctd, &["tty"]);
}

#[test]
fn killing_the_vm_ends_the_task() {
    let Some((_lock, ctd)) = vm_containerd("killing_the_vm_ends_the_task", "vm-crash") else {
        return;
    };
    let id = "crash";
    ctd.ctr_ok([
        "run",
        "-d",
        "--runtime",
        AMPOULE,
        IMAGE,
        id,
        "sleep",
        "1000",
    ])
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(&ctd)));
    let vm_dir = ctd.vm_run_dir().display().to_string();
    let vms: Vec<u32> = common::processes_mentioning(&vm_dir)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("qemu") || cmd.contains("ampoule-vmm"))
        .map(|(pid, _)| pid)
        .collect();
    assert!(!vms.is_empty(), "no VM process found under {vm_dir}");
    for pid in vms {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let stopped = wait_for(Duration::from_secs(20), || {
        (task_status(&ctd, id).as_deref() == Some("STOPPED")).then_some(())
    });
    assert!(
        stopped.is_some(),
        "task still {:?} after the VM died\n{}",
        task_status(&ctd, id),
        diagnostics(&ctd)
    );
    // The guest console log outlives the VM, named after the task.
    let kept = ctd.dir().join("log").join(format!("{id}-serial.log"));
    assert!(kept.exists(), "{} missing", kept.display());
    ctd.ctr_ok(["tasks", "rm", id])
        .unwrap_or_else(|e| panic!("{e}"));
    ctd.ctr_ok(["containers", "rm", id])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn killed_shim_is_cleaned_up_by_delete() {
    let Some((_lock, ctd)) = vm_containerd("killed_shim_is_cleaned_up_by_delete", "vm-shimkill")
    else {
        return;
    };
    let id = "shimkill";
    ctd.ctr_ok([
        "run",
        "-d",
        "--runtime",
        AMPOULE,
        IMAGE,
        id,
        "sleep",
        "1000",
    ])
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(&ctd)));
    let shims = ctd.shim_processes();
    let shim: Vec<u32> = shims
        .iter()
        .filter(|(_, c)| c.contains("containerd-shim-ampoule-v2"))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(shim.len(), 1, "shims: {shims:?}");
    let _ = Command::new("kill")
        .args(["-KILL", &shim[0].to_string()])
        .status();
    // containerd notices the shim's death, runs `delete`, and the task is gone.
    let gone = wait_for(Duration::from_secs(20), || {
        task_status(&ctd, id).is_none().then_some(())
    });
    assert!(
        gone.is_some(),
        "task still listed: {:?}\n{}",
        task_status(&ctd, id),
        diagnostics(&ctd)
    );
    let _ = ctd.ctr(["containers", "rm", id]);
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn stdin_reaches_the_task_and_closes() {
    let Some((_lock, ctd)) = vm_containerd("stdin_reaches_the_task_and_closes", "vm-stdin") else {
        return;
    };
    use std::io::Write;
    let mut child = ctd
        .ctr_cmd()
        .args([
            "run",
            "--rm",
            "--runtime",
            AMPOULE,
            IMAGE,
            "stdin",
            "sh",
            "-c",
            "cat; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run -i");
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(b"line one\nline two\n")
            .expect("writing stdin");
    }
    let out = child.wait_with_output().expect("ctr run -i output");
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        diagnostics(&ctd)
    );
    assert_eq!(text(&out.stdout), "line one\nline two\ndone\n");
    assert_nothing_left(&ctd, &["stdin"]);
}

#[test]
fn runtime_config_path_selects_the_ampoule_config() {
    if !common::should_run("runtime_config_path_selects_the_ampoule_config", false) {
        return;
    }
    let ctd = Containerd::start("cfgpath");
    let cfg = ctd.dir().join("other.toml");
    std::fs::write(&cfg, "kernel = \"/nonexistent/vmlinux-from-config-path\"\n").expect("config");
    let cfg = cfg.display().to_string();
    let out = ctd.ctr([
        "run",
        "--rm",
        "--runtime",
        AMPOULE,
        "--runtime-config-path",
        &cfg,
        IMAGE,
        "cfgpath",
        "true",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/vmlinux-from-config-path"),
        "the error does not name the configured kernel: {err}"
    );
    let _ = ctd.ctr(["containers", "rm", "cfgpath"]);
    assert_nothing_left(&ctd, &["cfgpath"]);
}

/// The PID column of `ctr tasks ls` for `id`.
fn task_pid(ctd: &Containerd, id: &str) -> Option<u32> {
    let ls = ctd.ctr_ok(["tasks", "ls"]).ok()?;
    ls.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&id))
        .and_then(|f| f.get(1).and_then(|p| p.parse().ok()))
}

/// Parent pid of a host process.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// `(topic, container id, pid)` of every task event `ctr events` printed
/// (`<time> <namespace> <topic> <event as JSON>` per line).
fn task_events(out: &str) -> Vec<(String, String, Option<u64>)> {
    out.lines()
        .filter_map(|l| {
            let json = &l[l.find('{')?..];
            let topic = l[..l.find('{')?].split_whitespace().last()?.to_string();
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            let id = v.get("container_id")?.as_str()?.to_string();
            Some((topic, id, v.get("pid").and_then(|p| p.as_u64())))
        })
        .collect()
}

/// containerd is told the host pid of the pod's VM process (QEMU or
/// ampoule-vmm), never a guest pid, for the task and its execs: in
/// `ctr tasks ls` and in the task events. `ctr tasks ps` still lists the
/// guest's processes. A failed exec reads as one line naming the task.
#[test]
fn ctr_task_pids_are_the_host_vm_process_and_errors_read_as_one_line() {
    let Some((_lock, ctd)) = vm_containerd(
        "ctr_task_pids_are_the_host_vm_process_and_errors_read_as_one_line",
        "vm-pid",
    ) else {
        return;
    };
    let id = "pidtask";
    let events_log = ctd.dir().join("events.log");
    let mut events = ctd
        .ctr_cmd()
        .arg("events")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&events_log).expect("events log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("ctr events");
    ctd.ctr_ok([
        "run",
        "-d",
        "--runtime",
        AMPOULE,
        IMAGE,
        id,
        "sleep",
        "1000",
    ])
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(&ctd)));

    let pid = task_pid(&ctd, id).unwrap_or_else(|| panic!("no pid for {id} in ctr tasks ls"));
    assert_ne!(pid, 0);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_else(|e| panic!("task pid {pid} is no host process: {e}"));
    assert!(
        comm.starts_with("qemu-system") || comm.starts_with("ampoule-vmm"),
        "task pid {pid} is {comm:?}, not the VM process"
    );
    // ... and the VM of this task: a child of this containerd's shim.
    let shims: Vec<u32> = ctd.shim_processes().iter().map(|(p, _)| *p).collect();
    let mut ancestor = parent_of(pid);
    while let Some(a) = ancestor.filter(|a| *a > 1 && !shims.contains(a)) {
        ancestor = parent_of(a);
    }
    assert!(
        ancestor.is_some_and(|a| shims.contains(&a)),
        "VM process {pid} does not descend from the shim {shims:?}"
    );

    let out = ctd.ctr(["tasks", "exec", "--exec-id", "e1", id, "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ps = ctd
        .ctr_ok(["tasks", "ps", id])
        .unwrap_or_else(|e| panic!("{e}"));
    let guest_pids: Vec<u32> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!guest_pids.is_empty(), "ctr tasks ps: {ps}");
    assert!(
        !guest_pids.contains(&pid),
        "ctr tasks ps lists the VM's host pid: {ps}"
    );

    // An exec the guest cannot start: containerd's error is one line with
    // the task and the agent's reason, no Rust Debug structures.
    let out = ctd.ctr([
        "tasks",
        "exec",
        "--exec-id",
        "bad",
        id,
        "/nonexistent/program",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr).trim().to_string();
    println!("containerd shows: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(
        err.contains("exec bad of container pidtask") && err.contains("/nonexistent/program"),
        "{err}"
    );
    for debris in ["Status {", "special_fields", "rpc status", "code:"] {
        assert!(!err.contains(debris), "{debris:?} in {err}");
    }

    ctd.ctr_ok(["tasks", "kill", "-s", "SIGKILL", id])
        .unwrap_or_else(|e| panic!("{e}"));
    let exit_seen = wait_for(Duration::from_secs(20), || {
        let log = std::fs::read_to_string(&events_log).unwrap_or_default();
        task_events(&log)
            .iter()
            .any(|(t, c, _)| t == "/tasks/exit" && c == id)
            .then_some(())
    });
    let _ = events.kill();
    let _ = events.wait();
    assert!(exit_seen.is_some(), "no /tasks/exit event for {id}");
    let log = std::fs::read_to_string(&events_log).unwrap_or_default();
    let ours: Vec<_> = task_events(&log)
        .into_iter()
        .filter(|(t, c, _)| c == id && t != "/tasks/delete" && t != "/tasks/exec-added")
        .collect();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-started",
        "/tasks/exit",
    ] {
        assert!(
            ours.iter().any(|(t, _, _)| t == topic),
            "no {topic} event: {ours:?}"
        );
    }
    for (topic, _, event_pid) in &ours {
        if topic.starts_with("/tasks/") && topic != "/tasks/oom" {
            assert_eq!(
                *event_pid,
                Some(u64::from(pid)),
                "{topic} carries another pid: {ours:?}"
            );
        }
    }
    let _ = wait_for(Duration::from_secs(20), || {
        (task_status(&ctd, id).as_deref() == Some("STOPPED")).then_some(())
    });
    ctd.ctr_ok(["tasks", "rm", id])
        .unwrap_or_else(|e| panic!("{e}"));
    ctd.ctr_ok(["containers", "rm", id])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_nothing_left(&ctd, &[id]);
}
