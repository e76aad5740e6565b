//! The runc-compatible `ampoule` CLI with real microVMs and a busybox bundle.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use ampoule_tests::{host_kernel_release, show, vm_test, wait_until, CliEnv, TestNetns, VmLock};

fn run_out(env: &CliEnv, id: &str, bundle: &std::path::Path) -> std::process::Output {
    env.cmd()
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .expect("ampoule run")
}

fn assert_clean(env: &CliEnv) {
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn run_uname_prints_the_guest_kernel_release_not_the_hosts() {
    if !vm_test("run_uname_prints_the_guest_kernel_release_not_the_hosts") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let b = env.bundle("b", &["uname", "-r"], |_| {});
    let out = run_out(&env, "uname", &b);
    assert!(out.status.success(), "{}", show(&out));
    let release = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!release.is_empty(), "{}", show(&out));
    assert_ne!(release, host_kernel_release(), "uname ran in the guest");
    assert_clean(&env);
}

#[test]
fn run_exit_status_is_the_containers_and_sigkill_gives_137() {
    if !vm_test("run_exit_status_is_the_containers_and_sigkill_gives_137") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let b = env.bundle("b", &["sh", "-c", "echo before-exit; exit 7"], |_| {});
    let out = run_out(&env, "exit7", &b);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "before-exit\n",
        "output just before exit is kept"
    );
    // SIGKILL from outside (the container's init, as pid 1 of its
    // namespace, cannot be killed from inside).
    let b = env.bundle("k", &["sleep", "1000"], |_| {});
    let child = env
        .cmd()
        .args(["run", "--bundle"])
        .arg(&b)
        .arg("killed")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    assert!(
        wait_until(60, || env.status("killed") == "running"),
        "status {}",
        env.status("killed")
    );
    let k = env
        .cmd()
        .args(["kill", "killed", "9"])
        .output()
        .expect("kill");
    assert!(k.status.success(), "{}", show(&k));
    let out = child.wait_with_output().expect("wait run");
    assert_eq!(out.status.code(), Some(137), "{}", show(&out));
    assert_clean(&env);
}

#[test]
fn create_start_state_kill_delete_with_pid_file_and_states_at_every_step() {
    if !vm_test("create_start_state_kill_delete_with_pid_file_and_states_at_every_step") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let b = env.bundle("b", &["sleep", "1000"], |v| {
        v["annotations"] = serde_json::json!({"org.example.note": "hi"});
    });
    let pid_file = env.env.tmp.path().join("pid");
    let pid_arg = pid_file.display().to_string();
    let out = env.create(&b, "c1", &["--pid-file", &pid_arg]);
    assert!(out.status.success(), "{}", show(&out));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid-file names a live process"
    );
    let st = env.state("c1").expect("state");
    assert_eq!(st["status"], "created");
    assert_eq!(st["pid"], pid);
    assert_eq!(st["id"], "c1");
    assert_eq!(st["bundle"], b.display().to_string());
    assert_eq!(st["annotations"]["org.example.note"], "hi");

    // start of a started container is refused; start of a created one works.
    let out = env.cmd().args(["start", "c1"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(env.status("c1"), "running");
    let again = env
        .cmd()
        .args(["start", "c1"])
        .output()
        .expect("start again");
    assert!(
        !again.status.success(),
        "start of a running container: {}",
        show(&again)
    );

    // delete without --force refuses a running container.
    let out = env.cmd().args(["delete", "c1"]).output().expect("delete");
    assert!(!out.status.success(), "{}", show(&out));

    let out = env
        .cmd()
        .args(["kill", "c1", "KILL"])
        .output()
        .expect("kill");
    assert!(out.status.success(), "{}", show(&out));
    // The pid-file process exits with the container.
    assert!(
        wait_until(20, || !std::path::Path::new(&format!("/proc/{pid}"))
            .exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)),
        "pid-file process still alive after kill"
    );
    assert!(
        wait_until(10, || env.status("c1") == "stopped"),
        "status {}",
        env.status("c1")
    );
    let out = env.cmd().args(["delete", "c1"]).output().expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    assert!(env.state("c1").is_none(), "state gone after delete");
    assert!(
        wait_until(10, || env.leftovers().is_empty()),
        "left behind: {:#?}",
        env.leftovers()
    );
}

/// Without a pid namespace nothing kills what the init left behind when it
/// exits; a background `sleep` holding the container's stdout keeps the
/// output open. As with runc, the container is stopped once its init exits.
#[test]
fn a_leftover_holding_stdout_without_a_pid_namespace_does_not_keep_the_container_running() {
    if !vm_test(
        "a_leftover_holding_stdout_without_a_pid_namespace_does_not_keep_the_container_running",
    ) {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let args = ["sh", "-c", "sleep 1000 & echo started; exit 3"];
    let b = env.bundle("b", &args, |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .retain(|n| n["type"] != "pid");
    });
    let out = env.create(&b, "c1", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let out = env.cmd().args(["start", "c1"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        wait_until(60, || env.status("c1") == "stopped"),
        "status {} after the init exited",
        env.status("c1")
    );
    let out = env.cmd().args(["delete", "c1"]).output().expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    assert!(env.state("c1").is_none(), "state gone after delete");

    let out = run_out(&env, "r1", &b);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
    assert!(
        wait_until(10, || env.leftovers().is_empty()),
        "left behind: {:#?}",
        env.leftovers()
    );
}

#[test]
fn exec_ps_and_list_in_a_running_container() {
    if !vm_test("exec_ps_and_list_in_a_running_container") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let b = env.bundle("b", &["sleep", "1000"], |_| {});
    let log = env.env.tmp.path().join("c2.out");
    let status = env
        .cmd()
        .args(["run", "--detach", "--bundle"])
        .arg(&b)
        .arg("c2")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("out file"))
        .stderr(std::fs::File::create(env.env.tmp.path().join("c2.err")).expect("err file"))
        .status()
        .expect("run -d");
    let out = std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: std::fs::read(env.env.tmp.path().join("c2.err")).unwrap_or_default(),
    };
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(env.status("c2"), "running");
    let out = env
        .cmd()
        .args([
            "exec",
            "--env",
            "X=42",
            "c2",
            "--",
            "sh",
            "-c",
            "echo exec:$X; exit 3",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("exec");
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "exec:42\n");
    let out = env
        .cmd()
        .args(["ps", "--format", "json", "c2"])
        .output()
        .expect("ps");
    assert!(out.status.success(), "{}", show(&out));
    let pids: Vec<u32> = serde_json::from_slice(&out.stdout).expect("ps json");
    assert!(!pids.is_empty(), "{}", show(&out));
    let out = env.cmd().args(["ps", "c2"]).output().expect("ps table");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sleep 1000"),
        "{}",
        show(&out)
    );
    let out = env
        .cmd()
        .args(["list", "--format", "json"])
        .output()
        .expect("list");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list json");
    assert_eq!(v[0]["id"], "c2");
    assert_eq!(v[0]["status"], "running");
    let out = env.cmd().args(["list", "-q"]).output().expect("list -q");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "c2\n");
    // pause / resume.
    let out = env.cmd().args(["pause", "c2"]).output().expect("pause");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(env.status("c2"), "paused");
    let out = env.cmd().args(["resume", "c2"]).output().expect("resume");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(env.status("c2"), "running");
    // exec --detach: the pid-file process ends when the exec'd process does.
    let pid_file = env.env.tmp.path().join("exec.pid");
    let out = env
        .cmd()
        .args(["exec", "--detach", "--pid-file"])
        .arg(&pid_file)
        .args(["c2", "--", "sleep", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("exec -d");
    assert!(out.status.success(), "{}", show(&out));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
    };
    assert!(
        wait_until(20, gone),
        "exec --detach process {pid} still alive"
    );
    let out = env
        .cmd()
        .args(["delete", "--force", "c2"])
        .output()
        .expect("delete -f");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        wait_until(10, || env.leftovers().is_empty()),
        "left behind: {:#?}",
        env.leftovers()
    );
}

#[test]
fn one_mib_of_stdout_and_stderr_arrive_intact_and_stdin_reaches_the_process() {
    if !vm_test("one_mib_of_stdout_and_stderr_arrive_intact_and_stdin_reaches_the_process") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    // seq 1 160000 is 1,012,896 bytes; 1 MiB+ with a tail.
    let script = "seq 1 160000; seq 1 160000 >&2; head -c 50000 /dev/zero | tr '\\0' 'x'; echo; read line; echo got:$line";
    let b = env.bundle("b", &["sh", "-c", script], |_| {});
    let mut child = env
        .cmd()
        .args(["run", "--bundle"])
        .arg(&b)
        .arg("io")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello-stdin\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "status {:?}, stderr tail {:?}",
        out.status,
        tail(&out.stderr)
    );
    let mut expected: String = (1..=160000).map(|i| format!("{i}\n")).collect();
    let seq_err = expected.clone();
    expected.push_str(&"x".repeat(50000));
    expected.push_str("\ngot:hello-stdin\n");
    assert!(
        out.stdout.len() > 1024 * 1024,
        "stdout {} bytes",
        out.stdout.len()
    );
    assert!(
        out.stdout == expected.as_bytes(),
        "stdout differs: {} bytes vs {} expected; tail {:?}",
        out.stdout.len(),
        expected.len(),
        tail(&out.stdout)
    );
    assert!(
        out.stderr.starts_with(seq_err.as_bytes()),
        "stderr differs: {} bytes; tail {:?}",
        out.stderr.len(),
        tail(&out.stderr)
    );
    assert_clean(&env);
}

fn tail(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[b.len().saturating_sub(200)..]).into_owned()
}

#[test]
fn hostname_env_cwd_and_uid_from_the_spec_are_honoured() {
    if !vm_test("hostname_env_cwd_and_uid_from_the_spec_are_honoured") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let b = env.bundle(
        "b",
        &["sh", "-c", "hostname; echo $FOO; pwd; id -u; id -g"],
        |v| {
            v["hostname"] = "box1".into();
            v["process"]["env"]
                .as_array_mut()
                .expect("env")
                .push("FOO=bar".into());
            v["process"]["cwd"] = "/tmp".into();
            v["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1001});
        },
    );
    let out = run_out(&env, "ids", &b);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "box1\nbar\n/tmp\n1000\n1001\n",
        "{}",
        show(&out)
    );
    assert_clean(&env);
}

#[test]
fn memory_limit_kills_a_process_that_allocates_more_and_pids_limit_holds() {
    if !vm_test("memory_limit_kills_a_process_that_allocates_more_and_pids_limit_holds") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    // dd with a 200 MiB block allocates and touches 200 MiB.
    let b = env.bundle(
        "m",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"],
        |v| {
            v["linux"]["resources"] = serde_json::json!({"memory": {"limit": 64 * 1024 * 1024}});
        },
    );
    let out = run_out(&env, "oom", &b);
    assert_eq!(
        out.status.code(),
        Some(137),
        "killed by the OOM killer: {}",
        show(&out)
    );
    // 10 pids at most: the shell cannot start 15 background sleeps.
    let b = env.bundle(
        "p",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do sleep 30 & done; echo all-started",
        ],
        |v| {
            v["linux"]["resources"] = serde_json::json!({"pids": {"limit": 10}});
        },
    );
    let out = run_out(&env, "pids", &b);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("all-started") && !out.status.success(),
        "the pids limit let 15 processes start: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fork"),
        "{}",
        show(&out)
    );
    assert_clean(&env);
}

#[test]
fn read_only_rootfs_refuses_writes_and_a_bind_mounted_host_file_is_visible() {
    if !vm_test("read_only_rootfs_refuses_writes_and_a_bind_mounted_host_file_is_visible") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let host_file = env.env.tmp.path().join("greeting.txt");
    std::fs::write(&host_file, "hello from the host\n").expect("write host file");
    let b = env.bundle("b", &["sh", "-c", "cat /greeting; if touch /newfile 2>/dev/null; then echo writable; else echo read-only; fi"], |v| {
        v["root"]["readonly"] = true.into();
        v["mounts"].as_array_mut().expect("mounts").push(serde_json::json!({
            "destination": "/greeting", "type": "bind", "source": host_file, "options": ["rbind", "ro"]
        }));
    });
    // The mount point exists in the image (a read-only rootfs cannot get
    // new mount points).
    std::fs::write(b.join("rootfs/greeting"), "").expect("mount point");
    let out = run_out(&env, "ro", &b);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the host\nread-only\n",
        "{}",
        show(&out)
    );
    assert_clean(&env);
}

#[test]
fn console_socket_receives_a_pty_master_and_tty_reports_a_terminal() {
    if !vm_test("console_socket_receives_a_pty_master_and_tty_reports_a_terminal") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let b = env.bundle("b", &["sh", "-c", "tty; sleep 1"], |v| {
        v["process"]["terminal"] = true.into();
    });
    let sock = env.env.tmp.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind console socket");
    let receiver = std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        recv_fd(&conn)
    });
    let out = env
        .cmd()
        .args(["create", "--bundle"])
        .arg(&b)
        .arg("--console-socket")
        .arg(&sock)
        .arg("tty1")
        .output()
        .expect("create");
    assert!(out.status.success(), "{}", show(&out));
    let master = receiver.join().expect("receiver thread");
    let out = env.cmd().args(["start", "tty1"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    let mut text = String::new();
    let mut f = std::fs::File::from(master);
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 256];
        let mut acc = Vec::new();
        while !String::from_utf8_lossy(&acc).contains("/dev/pts") {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => acc.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&acc).into_owned()
    });
    if wait_until(30, || reader.is_finished()) {
        text = reader.join().expect("reader");
    }
    assert!(text.contains("/dev/pts/"), "tty output: {text:?}");
    assert!(
        wait_until(20, || env.status("tty1") == "stopped"),
        "status {}",
        env.status("tty1")
    );
    let out = env.cmd().args(["delete", "tty1"]).output().expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        wait_until(10, || env.leftovers().is_empty()),
        "left behind: {:#?}",
        env.leftovers()
    );
}

fn recv_fd(conn: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .expect("recvmsg");
    for c in msg.cmsgs().expect("cmsgs") {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: SCM_RIGHTS just gave this process a new descriptor
                // that nothing else owns.
                return unsafe { std::os::fd::OwnedFd::from_raw_fd(*fd) };
            }
        }
    }
    panic!("no fd received on the console socket");
}

#[test]
fn bad_bundles_and_ids_give_clear_errors_and_leave_nothing() {
    let env = CliEnv::new();
    let create = |bundle: &std::path::Path, id: &str| env.create(bundle, id, &[]);
    let expect_err = |out: &std::process::Output, needle: &str| {
        assert!(!out.status.success(), "{}", show(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "stderr should mention {needle:?}: {}",
            show(out)
        );
    };
    // No config.json.
    let empty = env.env.tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("rootfs")).expect("mkdir");
    expect_err(&create(&empty, "a"), "no config.json");
    // Invalid JSON.
    std::fs::write(empty.join("config.json"), "{ not json").expect("write");
    expect_err(&create(&empty, "a"), "invalid");
    // Unknown namespace type.
    let b = env.bundle("ns", &["true"], |v| {
        v["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]);
    });
    expect_err(&create(&b, "a"), "bogus");
    // Missing rootfs.
    let b = env.bundle("nr", &["true"], |_| {});
    std::fs::remove_dir_all(b.join("rootfs")).expect("rm rootfs");
    expect_err(&create(&b, "a"), "rootfs");
    // Unknown id.
    for cmd in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["kill", "nope"],
        &["delete", "nope"],
    ] {
        expect_err(
            &env.cmd().args(cmd).output().expect("cmd"),
            "does not exist",
        );
    }
    // Invalid id.
    expect_err(
        &env.cmd().args(["state", "../x"]).output().expect("state"),
        "invalid container id",
    );
    assert!(
        env.leftovers().is_empty(),
        "left behind: {:#?}",
        env.leftovers()
    );
}

#[test]
fn duplicate_id_missing_binary_and_start_of_a_stopped_container_are_refused() {
    if !vm_test("duplicate_id_missing_binary_and_start_of_a_stopped_container_are_refused") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let b = env.bundle("b", &["true"], |_| {});
    let out = env.create(&b, "d1", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let dup = env.create(&b, "d1", &[]);
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already exists"),
        "{}",
        show(&dup)
    );
    let out = env.cmd().args(["start", "d1"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        wait_until(20, || env.status("d1") == "stopped"),
        "status {}",
        env.status("d1")
    );
    let again = env
        .cmd()
        .args(["start", "d1"])
        .output()
        .expect("start stopped");
    assert!(!again.status.success(), "{}", show(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("stopped"),
        "{}",
        show(&again)
    );
    let out = env.cmd().args(["delete", "d1"]).output().expect("delete");
    assert!(out.status.success(), "{}", show(&out));

    // args[0] not in the image: create or run fails, nothing remains.
    let b = env.bundle("nb", &["/no/such/binary"], |_| {});
    let out = run_out(&env, "nobin", &b);
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/binary"), "{}", show(&out));
    // One line a person reads: what, which container, the agent's words.
    assert!(
        err.starts_with("ampoule: create container \"nobin\": in the guest: "),
        "{}",
        show(&out)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{}", show(&out));
    for debris in ["Status {", "special_fields", "rpc status"] {
        assert!(!err.contains(debris), "{}", show(&out));
    }
    assert!(
        wait_until(10, || env.leftovers().is_empty()),
        "left behind: {:#?}",
        env.leftovers()
    );
}

#[test]
fn twenty_create_start_delete_cycles_leave_nothing_behind() {
    if !vm_test("twenty_create_start_delete_cycles_leave_nothing_behind") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let b = env.bundle("b", &["sleep", "1000"], |_| {});
    for i in 0..20 {
        let id = format!("cyc{i}");
        let out = env.create(&b, &id, &[]);
        assert!(out.status.success(), "cycle {i}: {}", show(&out));
        let out = env.cmd().args(["start", &id]).output().expect("start");
        assert!(out.status.success(), "cycle {i}: {}", show(&out));
        let out = env
            .cmd()
            .args(["delete", "--force", &id])
            .output()
            .expect("delete");
        assert!(out.status.success(), "cycle {i}: {}", show(&out));
        assert!(
            wait_until(10, || env.leftovers().is_empty()),
            "cycle {i}: left behind: {:#?}",
            env.leftovers()
        );
    }
}

#[test]
fn spec_features_and_version_work_without_a_vm() {
    let env = CliEnv::new();
    let dir = env.env.tmp.path().join("s");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = env
        .cmd()
        .args(["spec", "--bundle"])
        .arg(&dir)
        .output()
        .expect("spec");
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(v["root"]["path"], "rootfs");
    let again = env
        .cmd()
        .args(["spec", "--bundle"])
        .arg(&dir)
        .output()
        .expect("spec again");
    assert!(
        !again.status.success(),
        "spec refuses to overwrite: {}",
        show(&again)
    );
    let out = env.cmd().arg("features").output().expect("features");
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).expect("features json");
    assert!(f["linux"]["namespaces"]
        .as_array()
        .is_some_and(|n| !n.is_empty()));
    let out = Command::new(ampoule_tests::ampoule_bin())
        .arg("--version")
        .output()
        .expect("version");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ampoule"),
        "{}",
        show(&out)
    );
}

#[test]
fn json_log_format_writes_runc_style_error_lines() {
    let env = CliEnv::new();
    let log = env.env.tmp.path().join("log.json");
    let out = env
        .cmd()
        .args(["--log"])
        .arg(&log)
        .args(["--log-format", "json", "state", "missing"])
        .output()
        .expect("state");
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&log).expect("log file");
    let line = text.lines().last().expect("a log line");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(v["level"], "error");
    assert!(
        v["msg"].as_str().unwrap_or("").contains("missing"),
        "{line}"
    );
    assert!(v["time"].is_string());
    let _ = Duration::from_secs(0);
}

#[test]
fn container_whose_vm_died_reports_stopped_and_delete_cleans_up() {
    if !vm_test("container_whose_vm_died_reports_stopped_and_delete_cleans_up") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let b = env.bundle("b", &["sleep", "1000"], |_| {});
    let out = env.create(&b, "vmdies", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let out = env.cmd().args(["start", "vmdies"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(env.status("vmdies"), "running");
    // Kill the VM process itself (QEMU or ampoule-vmm), not the monitor.
    let vms: Vec<i32> = ampoule_tests::processes_mentioning(&env.root)
        .iter()
        .filter(|p| p.contains("qemu-system") || p.contains("ampoule-vmm"))
        .filter_map(|p| p.split(':').next().and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(
        vms.len(),
        1,
        "one VM process: {:#?}",
        ampoule_tests::processes_mentioning(&env.root)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vms[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill VM");
    assert!(
        wait_until(20, || env.status("vmdies") == "stopped"),
        "status {}",
        env.status("vmdies")
    );
    let out = env
        .cmd()
        .args(["delete", "vmdies"])
        .output()
        .expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        wait_until(10, || env.leftovers().is_empty()),
        "left behind: {:#?}",
        env.leftovers()
    );
}

/// Iterations of [`kill_then_delete_in_a_private_rshared_mount_namespace`]:
/// one took 1.0-1.2 s under TCG here (boot ~0.85 s, then start, kill, state
/// polls and delete), so 50 take about a minute.
const KILL_DELETE_ITERATIONS: u32 = 50;

#[test]
fn kill_then_delete_in_a_private_rshared_mount_namespace() {
    if !vm_test("kill_then_delete_in_a_private_rshared_mount_namespace") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    // Issue 12's bundle: a shell that traps TERM, USR1 and USR2 and exits.
    // "ready" comes after the traps are set: a signal that reaches the
    // container's init (pid 1 of its namespace) before it has a handler is
    // discarded by the kernel, and the container rightly stays running.
    let b = env.bundle(
        "trap",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM USR1 USR2; echo ready; while :; do sleep 1 & wait $!; done",
        ],
        |_| {},
    );
    let tmpdir = env.env.tmp.path().join("tmpdir");
    std::fs::create_dir_all(&tmpdir).expect("TMPDIR");
    let q = |p: &std::path::Path| format!("'{}'", p.display());
    // As the suite runs: from the bundle's own directory (`--bundle .`),
    // TMPDIR set, in a private mount namespace whose / is rshared.
    let script = format!(
        r#"set -u
mount --make-rshared / || {{ echo "FAIL mount --make-rshared"; exit 1; }}
cd {bundle} || exit 1
export TMPDIR={tmpdir}
A=({bin} --config {config} --root {root})
sigs=(TERM USR1 USR2)
for i in $(seq 1 {n}); do
  id=k$i
  "${{A[@]}}" create --bundle . $id >{tmpdir}/out.$i 2>{tmpdir}/err.$i </dev/null || {{ echo "FAIL create $i: $(cat {tmpdir}/err.$i)"; exit 1; }}
  "${{A[@]}}" start $id || {{ echo "FAIL start $i"; exit 1; }}
  for t in $(seq 400); do grep -q ready {tmpdir}/out.$i && break; sleep 0.05; done
  grep -q ready {tmpdir}/out.$i || {{ echo "FAIL no ready $i"; exit 1; }}
  "${{A[@]}}" kill $id ${{sigs[$((i % 3))]}} || {{ echo "FAIL kill $i"; exit 1; }}
  st=
  for t in $(seq 200); do st=$("${{A[@]}}" state $id | grep '"status"'); case "$st" in *stopped*) break;; esac; sleep 0.05; done
  "${{A[@]}}" delete $id || {{ echo "FAIL delete $i after state $st"; exit 1; }}
  echo "ok $i"
done
"#,
        bundle = q(&b),
        tmpdir = q(&tmpdir),
        bin = q(&ampoule_tests::ampoule_bin()),
        config = q(&env.config_file),
        root = q(&env.root),
        n = KILL_DELETE_ITERATIONS,
    );
    let path = env.env.tmp.path().join("kill-delete.sh");
    std::fs::write(&path, script).expect("script");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "unchanged", "bash"])
        .arg(&path)
        .env_remove("AMPOULE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    let done = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("ok "))
        .count();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(done, KILL_DELETE_ITERATIONS as usize, "{}", show(&out));
    assert_clean(&env);
}

#[test]
fn the_guest_console_file_never_grows_past_serial_log_max_bytes() {
    if !vm_test("the_guest_console_file_never_grows_past_serial_log_max_bytes") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    // Every kernel message on the console: far more than 4 KiB of boot log.
    let config = env
        .env
        .write_config("serial_log_max_bytes = 4096\nkernel_params = \"ignore_loglevel\"");
    let b = env.bundle("b", &["sleep", "1000"], |_| {});
    let cmd = |args: &[&str]| {
        let mut c = ampoule_tests::ampoule();
        c.arg("--config").arg(&config).arg("--root").arg(&env.root);
        c.args(args);
        c
    };
    let out = cmd(&["create", "--bundle", &b.display().to_string(), "con"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("create");
    assert!(out.success(), "create failed");
    let logs: Vec<std::path::PathBuf> = ampoule_tests::files_in(&env.root.join(".vm"))
        .into_iter()
        .filter(|f| f.ends_with("/serial.log"))
        .map(Into::into)
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let data = std::fs::read(&logs[0]).expect("serial log");
    assert!(
        data.len() > 1000 && data.len() <= 4096,
        "{} bytes of console kept",
        data.len()
    );
    let out = cmd(&["delete", "--force", "con"]).output().expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    assert_clean(&env);
}

#[test]
fn writes_to_the_rootfs_and_a_bind_mount_land_on_the_host_live_both_ways() {
    if !vm_test("writes_to_the_rootfs_and_a_bind_mount_land_on_the_host_live_both_ways") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let data = env.env.tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    // The container writes to its root and to the volume, then waits for a
    // file the host writes while it runs, and answers through the volume.
    let script = "echo in-root > /written-in-root; echo in-volume > /data/from-container; \
                  i=0; while [ ! -e /data/from-host ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; \
                  cat /data/from-host > /data/echoed 2>&1";
    let b =
        env.bundle("b", &["sh", "-c", script], |v| {
            v["root"]["readonly"] = false.into();
            v["mounts"].as_array_mut().expect("mounts").push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]
        }));
        });
    let child = env
        .cmd()
        .args(["run", "live"])
        .current_dir(&b)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ampoule run");
    let from_container = data.join("from-container");
    let seen = wait_until(60, || from_container.exists());
    assert!(
        seen,
        "the container's write to the volume never reached the host"
    );
    std::fs::write(data.join("from-host"), "written-by-host\n").expect("host write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        std::fs::read_to_string(&from_container).unwrap_or_default(),
        "in-volume\n"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("echoed")).unwrap_or_default(),
        "written-by-host\n",
        "the host's write did not reach the running container"
    );
    // As with runc: the root filesystem is the bundle's rootfs, written in
    // place, and what the container wrote is there after it exited.
    assert_eq!(
        std::fs::read_to_string(b.join("rootfs/written-in-root")).unwrap_or_default(),
        "in-root\n"
    );
    assert_clean(&env);
}

#[test]
fn a_bind_source_that_climbs_out_or_is_a_symlink_is_refused_before_boot() {
    if !vm_test("a_bind_source_that_climbs_out_or_is_a_symlink_is_refused_before_boot") {
        return;
    }
    let env = CliEnv::new();
    let link = env.env.tmp.path().join("link-to-etc");
    std::os::unix::fs::symlink("/etc", &link).expect("symlink");
    for (name, source) in [
        ("up", serde_json::json!("../../etc")),
        ("link", serde_json::json!(link)),
        ("missing", serde_json::json!("/nonexistent/ampoule-source")),
    ] {
        let b = env.bundle(name, &["true"], |v| {
            v["mounts"]
                .as_array_mut()
                .expect("mounts")
                .push(serde_json::json!({
                    "destination": "/x", "type": "bind", "source": source, "options": ["rbind"]
                }));
        });
        let out = run_out(&env, name, &b);
        assert!(!out.status.success(), "{name}: {}", show(&out));
        let _ = env.cmd().args(["delete", "--force", name]).output();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bind mount source") || err.contains("could reach outside"),
            "{name}: {err}"
        );
        // Refused before boot: no sandbox directory was ever made.
        let sandboxes: Vec<_> = std::fs::read_dir(&env.env.config.run_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(sandboxes.is_empty(), "{name}: sandboxes {sandboxes:?}");
    }
    assert_clean(&env);
}

/// The cgroup directories of `rel` under every hierarchy of this host.
fn cgroup_dirs(rel: &str) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)];
    }
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .filter(|e| e.path().join("cgroup.procs").exists())
                .map(|e| e.path().join(rel))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn create_places_the_sandboxs_host_processes_in_cgroups_path_and_delete_removes_it() {
    if !vm_test("create_places_the_sandboxs_host_processes_in_cgroups_path_and_delete_removes_it") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let rel = format!("ampoule-test-{}/c1", std::process::id());
    let b = env.bundle("b", &["sleep", "1000"], |v| {
        v["linux"]["cgroupsPath"] = format!("/{rel}").into();
    });
    let out = env.create(&b, "cg", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let vm_pids: Vec<u32> = ampoule_tests::processes_mentioning(env.env.tmp.path())
        .into_iter()
        .filter(|l| l.contains("qemu-system") || l.contains("ampoule-vmm"))
        .filter_map(|l| l.split(':').next().and_then(|p| p.parse().ok()))
        .collect();
    assert_eq!(vm_pids.len(), 1, "one VM process");
    // Every hierarchy but the jail's memory one holds the VM process.
    let placed: Vec<_> = cgroup_dirs(&rel)
        .into_iter()
        .filter(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .map(|p| p.lines().any(|l| l.trim() == vm_pids[0].to_string()))
                .unwrap_or(false)
        })
        .collect();
    assert!(
        !placed.is_empty(),
        "the VM process is in no {rel} cgroup: {:?}",
        cgroup_dirs(&rel)
    );
    let out = env
        .cmd()
        .args(["delete", "--force", "cg"])
        .output()
        .expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    let gone = wait_until(10, || cgroup_dirs(&rel).iter().all(|d| !d.exists()));
    assert!(gone, "cgroups left: {:?}", cgroup_dirs(&rel));
    for d in cgroup_dirs(&format!("ampoule-test-{}", std::process::id())) {
        let _ = std::fs::remove_dir(d);
    }
    assert_clean(&env);
}

/// The directory of the relative cgroupsPath `rel` in the v1 hierarchy
/// (or the unified one) `hier`: under the cgroup this process is in there,
/// as for the `ampoule` it starts.
fn own_relative_dir(hier: &str, rel: &str) -> std::path::PathBuf {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let unified = root.join("cgroup.controllers").exists();
    let base = own
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            let hit = if unified {
                ctl.is_empty()
            } else {
                ctl.split(',').any(|c| c == hier)
            };
            hit.then(|| path.trim_start_matches('/').to_string())
        })
        .unwrap_or_default();
    let top = if unified {
        root.to_path_buf()
    } else {
        root.join(hier)
    };
    top.join(base).join(rel)
}

#[test]
fn linux_resources_limit_the_relative_cgroups_path_on_the_host_and_the_cpuset_maps_onto_the_vcpus()
{
    let name = "linux_resources_limit_the_relative_cgroups_path_on_the_host_and_the_cpuset_maps_onto_the_vcpus";
    if !vm_test(name) {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let top = format!("ampoule-test-res-{}", std::process::id());
    let rel = format!("{top}/c2");
    let host_cpus = std::fs::read_to_string("/sys/fs/cgroup/cpuset/cpuset.cpus")
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/cpuset.cpus.effective"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "0".into());
    let b = env.bundle(
        "b",
        &[
            "sh",
            "-c",
            "grep Cpus_allowed_list /proc/self/status > /cpus; sleep 1000",
        ],
        |v| {
            v["root"]["readonly"] = false.into();
            // Relative: from the runtime's own cgroup, as runc takes it.
            v["linux"]["cgroupsPath"] = rel.clone().into();
            v["linux"]["resources"] = serde_json::json!({
                "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": host_cpus},
                "memory": {"limit": 67108864}
            });
            // One vCPU, whatever the cpuset names.
            v["annotations"] = serde_json::json!({"io.ampoule.vcpus": "1"});
        },
    );
    let out = env.create(&b, "res", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let out = env.cmd().args(["start", "res"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let read = |hier: &str, file: &str| {
        let p = own_relative_dir(hier, &rel).join(file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    };
    if unified {
        assert_eq!(read("", "cpu.max"), "50000 100000");
        assert_eq!(read("", "cpu.weight"), "20");
    } else {
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpuset", "cpuset.cpus"), host_cpus);
    }
    // The memory limit is the sandbox's budget, which holds the jail's
    // memory cgroup (and so the VM's processes) inside it.
    let (mem_hier, limit_file) = if unified {
        ("", "memory.max")
    } else {
        ("memory", "memory.limit_in_bytes")
    };
    let pod_limit: u64 = read(mem_hier, limit_file).parse().expect("a number");
    assert!(pod_limit > 64 << 20, "guest and VMM fit: {pod_limit}");
    let mem_dir = own_relative_dir(mem_hier, &rel);
    let jail: Vec<_> = std::fs::read_dir(&mem_dir)
        .expect("memory cgroup")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    assert_eq!(
        jail.len(),
        1,
        "the jail's memory cgroup is inside: {jail:?}"
    );
    let procs = std::fs::read_to_string(jail[0].join("cgroup.procs")).expect("procs");
    assert!(!procs.trim().is_empty(), "the VM's processes are in it");
    // In the guest, the cpuset is the one vCPU.
    let cpus = b.join("rootfs/cpus");
    let written = || std::fs::read_to_string(&cpus).is_ok_and(|t| t.ends_with('\n'));
    assert!(wait_until(60, written), "the container ran");
    let text = std::fs::read_to_string(&cpus).expect("cpus");
    assert_eq!(text.split_whitespace().nth(1), Some("0"), "{text:?}");

    let out = env
        .cmd()
        .args(["delete", "--force", "res"])
        .output()
        .expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    let dirs = ["cpu", "cpuset", "memory", ""].map(|h| own_relative_dir(h, &top));
    let gone = wait_until(10, || dirs.iter().all(|d| !d.join("c2").exists()));
    assert!(gone, "cgroups left under {dirs:?}");
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
    assert_clean(&env);
}

/// A "pod" namespace holding `eth0` (10.77.3.2/24, default route via
/// .1), the veth peer of `veth-out` (10.77.3.1/24) in an "outside"
/// namespace: what a CNI bridge or podman's netavark leave, in namespaces
/// the test made.
fn pod_and_outside(tag: &str) -> (TestNetns, TestNetns) {
    let pod = TestNetns::new(&format!("amp-pod-{tag}-{}", std::process::id()));
    let out = TestNetns::new(&format!("amp-out-{tag}-{}", std::process::id()));
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "veth-out", "netns", &out.name,
    ]);
    pod.ip(&["addr", "add", "10.77.3.2/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "mtu", "1400", "up"]);
    pod.ip(&["route", "add", "10.77.9.0/24", "dev", "eth0"]);
    pod.ip(&["route", "add", "default", "via", "10.77.3.1"]);
    out.ip(&["addr", "add", "10.77.3.1/24", "dev", "veth-out"]);
    out.ip(&["link", "set", "veth-out", "mtu", "1400", "up"]);
    (pod, out)
}

#[test]
fn a_network_namespace_with_only_lo_gives_the_container_only_lo() {
    if !vm_test("a_network_namespace_with_only_lo_gives_the_container_only_lo") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    // What podman with --network none... and a namespace file: only lo.
    let ns = TestNetns::new(&format!("amp-lo-{}", std::process::id()));
    let path = ns.path();
    let b = env.bundle(
        "b",
        &[
            "sh",
            "-c",
            "ls /sys/class/net; cat /sys/class/net/lo/operstate",
        ],
        |v| {
            v["linux"]["namespaces"] = serde_json::json!([
                {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "network", "path": path}
            ]);
        },
    );
    let out = run_out(&env, "net", &b);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"lo"), "{stdout}");
    assert_eq!(lines.len(), 2, "only lo: {stdout}");
    assert_clean(&env);
}

#[test]
fn the_pod_namespaces_interface_becomes_the_guest_nic_and_traffic_flows_both_ways() {
    if !vm_test("the_pod_namespaces_interface_becomes_the_guest_nic_and_traffic_flows_both_ways") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let (pod, outside) = pod_and_outside("web");
    let pod_mac = pod.ip(&["-j", "link", "show", "eth0"]);
    let pod_mac: serde_json::Value = serde_json::from_str(&pod_mac).expect("ip -j");
    let pod_mac = pod_mac[0]["address"].as_str().expect("mac").to_string();
    // A web server outside the pod, and one in the container.
    let www = env.env.tmp.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("index.html"), "hello-from-outside\n").expect("index");
    let mut server = outside
        .exec("busybox")
        .args(["httpd", "-f", "-p", "10.77.3.1:8080", "-h"])
        .arg(&www)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("httpd outside");
    let path = pod.path();
    let script = "mkdir -p /tmp/www && echo hello-from-the-pod > /tmp/www/index.html && \
                  httpd -p 8080 -h /tmp/www && \
                  cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu && ip -4 -o addr show dev eth0 && ip route && \
                  timeout 10 wget -q -O- http://10.77.3.1:8080/index.html; exec sleep 1000";
    let b = env.bundle("b", &["sh", "-c", script], |v| {
        v["root"]["readonly"] = false.into();
        v["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"},
            {"type": "network", "path": path}
        ]);
    });
    let log = env.env.tmp.path().join("web.out");
    let out = env
        .cmd()
        .args(["create", "--bundle"])
        .arg(&b)
        .arg("web")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .expect("log"),
        )
        .status()
        .expect("create");
    assert!(out.success(), "create failed");
    let started = env.cmd().args(["start", "web"]).output().expect("start");
    assert!(started.status.success(), "{}", show(&started));
    // From outside the pod to the container's server, at the pod's address.
    let reached = wait_until(60, || {
        // (Debian's busybox wget crashes with -T: bound it with timeout.)
        outside
            .exec("timeout")
            .args([
                "3",
                "busybox",
                "wget",
                "-q",
                "-O-",
                "http://10.77.3.2:8080/index.html",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("hello-from-the-pod"))
            .unwrap_or(false)
    });
    // The container's own GET of the server outside runs meanwhile.
    wait_until(20, || {
        std::fs::read_to_string(&log)
            .map(|l| l.contains("hello-from-outside"))
            .unwrap_or(false)
    });
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        reached,
        "the container's server was not reached from outside; it printed: {seen}"
    ); // The container saw the pod's MAC, MTU, address and routes, and reached
       // the server outside through the default route.
    assert!(seen.contains(&pod_mac), "MAC {pod_mac}: {seen}");
    assert!(seen.contains("\n1400\n"), "MTU: {seen}");
    assert!(seen.contains("10.77.3.2/24"), "address: {seen}");
    assert!(
        seen.contains("default via 10.77.3.1"),
        "default route: {seen}"
    );
    assert!(seen.contains("10.77.9.0/24 dev eth0"), "link route: {seen}");
    assert!(
        seen.contains("hello-from-outside"),
        "outside server: {seen}"
    );
    // The tap and its redirects are in the pod's namespace only.
    let links = pod.ip(&["-o", "link", "show"]);
    assert!(links.contains("tap0_amp"), "{links}");
    let out = env
        .cmd()
        .args(["delete", "--force", "web"])
        .output()
        .expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    let _ = server.kill();
    let _ = server.wait();
    // Nothing of the sandbox is left in the pod's namespace.
    let gone = wait_until(10, || !pod.ip(&["-o", "link", "show"]).contains("_amp"));
    assert!(gone, "tap left: {}", pod.ip(&["-o", "link", "show"]));
    let qdiscs = Command::new("tc")
        .args(["-n", &pod.name, "qdisc", "show", "dev", "eth0"])
        .output()
        .expect("tc");
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout).into_owned();
    assert!(!qdiscs.contains("ingress"), "redirect left: {qdiscs}");
    assert_clean(&env);
}

#[test]
fn a_user_namespace_maps_the_containers_root_to_the_specs_ids_for_init_and_exec() {
    if !vm_test("a_user_namespace_maps_the_containers_root_to_the_specs_ids_for_init_and_exec") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    // `runc spec` plus a user namespace, as rootless-style engines map it.
    let b = env.bundle("userns", &["sleep", "1000"], |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .push(serde_json::json!({"type": "user"}));
        let maps = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        v["linux"]["uidMappings"] = maps.clone();
        v["linux"]["gidMappings"] = maps;
    });
    let out = env.create(&b, "u1", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let out = env.cmd().args(["start", "u1"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    let script = "cat /proc/self/uid_map /proc/self/gid_map /proc/1/uid_map; \
                  echo uid=$(id -u) gid=$(id -g); stat -c owner=%u /bin/busybox";
    let out = env
        .cmd()
        .args(["exec", "u1", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("exec");
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let maps: Vec<Vec<&str>> = text
        .lines()
        .take(3)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        maps,
        vec![vec!["0", "100000", "65536"]; 3],
        "the exec and the init are in the mapped namespace: {}",
        show(&out)
    );
    assert!(text.contains("uid=0 gid=0"), "root in it: {}", show(&out));
    // The image's files, owned by the guest's root, which is not mapped.
    assert!(text.contains("owner=65534"), "{}", show(&out));
    let out = env
        .cmd()
        .args(["delete", "--force", "u1"])
        .output()
        .expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    assert_clean(&env);
}

/// `cmd` with `fds` as its descriptors 3, 4, ... (as an engine passes
/// `--preserve-fds`).
fn with_fds(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only calls fcntl(2) and
    // dup2(2), async-signal-safe, on descriptors of the child; `fds` was
    // built before the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 8];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, h) in high.iter().take(fds.len()).enumerate() {
                if libc::dup2(*h, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[test]
fn preserved_descriptors_carry_their_bytes_into_the_container_both_ways_for_run_create_and_exec() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    if !vm_test(
        "preserved_descriptors_carry_their_bytes_into_the_container_both_ways_for_run_create_and_exec",
    ) {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    // run --preserve-fds 2: the container reads fd 3, writes fd 4.
    let b = env.bundle(
        "fds",
        &["sh", "-c", "read l <&3; echo \"got $l\" >&4"],
        |_| {},
    );
    let (in_r, in_w) = nix::unistd::pipe().expect("pipe");
    let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
    let mut cmd = env.cmd();
    cmd.args(["run", "--preserve-fds", "2", "--bundle"])
        .arg(&b)
        .arg("f1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    with_fds(&mut cmd, vec![in_r.as_raw_fd(), out_w.as_raw_fd()]);
    let child = cmd.spawn().expect("ampoule run");
    drop(in_r);
    drop(out_w);
    let mut w = std::fs::File::from(in_w);
    w.write_all(b"hello\n").expect("write fd 3");
    drop(w);
    let mut got = String::new();
    std::fs::File::from(out_r)
        .read_to_string(&mut got)
        .expect("read fd 4 to its end");
    let out = child.wait_with_output().expect("run ends");
    assert_eq!(got, "got hello\n", "{}", show(&out));
    assert!(out.status.success(), "{}", show(&out));

    // exec --preserve-fds 1 with a connected socket, both ways.
    let b = env.bundle("fds2", &["sleep", "1000"], |_| {});
    let out = env.create(&b, "f2", &[]);
    assert!(out.status.success(), "{}", show(&out));
    let out = env.cmd().args(["start", "f2"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
    let mut cmd = env.cmd();
    cmd.args([
        "exec",
        "--preserve-fds",
        "1",
        "f2",
        "sh",
        "-c",
        "read l <&3; echo \"back $l\" >&3",
    ])
    .stdin(Stdio::null());
    with_fds(&mut cmd, vec![theirs.as_raw_fd()]);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec");
    drop(theirs);
    (&mine).write_all(b"ping\n").expect("write");
    mine.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mine), &mut line).expect("read");
    let out = child.wait_with_output().expect("exec ends");
    assert_eq!(line, "back ping\n", "{}", show(&out));
    assert!(out.status.success(), "{}", show(&out));
    // create --preserve-fds 1: its monitor carries the descriptor on.
    let b = env.bundle("fds3", &["sh", "-c", "echo created >&3"], |_| {});
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let mut cmd = env.cmd();
    cmd.args(["create", "--preserve-fds", "1", "--bundle"])
        .arg(&b)
        .arg("f3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    with_fds(&mut cmd, vec![w.as_raw_fd()]);
    let status = cmd.status().expect("create");
    drop(w);
    assert!(status.success(), "create --preserve-fds 1");
    let out = env.cmd().args(["start", "f3"]).output().expect("start");
    assert!(out.status.success(), "{}", show(&out));
    let mut got = String::new();
    std::fs::File::from(r)
        .read_to_string(&mut got)
        .expect("read to the end");
    assert_eq!(got, "created\n");
    let out = env
        .cmd()
        .args(["delete", "--force", "f3"])
        .output()
        .expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    // A listening socket has no byte stream to carry: refused by name.
    let dir = env.env.tmp.path().join("l");
    std::fs::create_dir_all(&dir).expect("dir");
    let l = std::os::unix::net::UnixListener::bind(dir.join("s")).expect("listen");
    let mut cmd = env.cmd();
    cmd.args(["exec", "--preserve-fds", "1", "f2", "true"])
        .stdin(Stdio::null());
    with_fds(&mut cmd, vec![l.as_raw_fd()]);
    let out = cmd.output().expect("exec");
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listening socket"),
        "{}",
        show(&out)
    );
    let out = env
        .cmd()
        .args(["delete", "--force", "f2"])
        .output()
        .expect("delete");
    assert!(out.status.success(), "{}", show(&out));
    assert_clean(&env);
}
