//! The jail with the real binaries: QEMU and vhost-device-vsock of a booted
//! sandbox run unprivileged, without capabilities, under seccomp, in their
//! own mount namespace and root, inside the sandbox's memory cgroup; a call
//! outside vhost-device-vsock's allowlist kills it; nothing is left behind.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ampoule_runtime::hypervisor::qemu::{vhost_argv, vhost_socket, VHOST_PROCESS};
use ampoule_runtime::hypervisor::VmConfig;
use ampoule_runtime::jail::cgroup::MemoryController;
use ampoule_runtime::jail::plan::JailedProcess;
use ampoule_runtime::jail::status::{self, JailState};
use ampoule_runtime::jail::{JailSettings, SandboxJail, CGROUP_ROOT, QEMU_SANDBOX};
use ampoule_runtime::process::ProcessGroup;
use ampoule_runtime::{HypervisorKind, Sandbox, SandboxError, SandboxSpec};
use ampoule_tests::{ampoule, show, vm_test, wait_until, TestEnv, VmLock};

/// A test environment on the qemu backend whose sandbox cgroups live under
/// a parent of their own (so the test can tell they are gone).
fn jail_env() -> TestEnv {
    let mut env = TestEnv::new();
    env.config.hypervisor = HypervisorKind::Qemu;
    let name = env
        .tmp
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    env.config.jail_cgroup_parent = format!("/ampoule-test-{name}");
    env
}

fn memory_root() -> PathBuf {
    MemoryController::probe(Path::new(CGROUP_ROOT))
        .expect("this host has a memory cgroup controller")
        .root()
        .to_path_buf()
}

fn cgroup_parent_dir(env: &TestEnv) -> PathBuf {
    memory_root().join(env.config.jail_cgroup_parent.trim_start_matches('/'))
}

/// Asserts every property of a jailed process.
fn assert_jailed(s: &JailState, seccomp: bool) {
    assert!(
        s.uids.iter().all(|u| *u != 0),
        "{} runs as root: {s:?}",
        s.name
    );
    assert!(
        s.gids.iter().all(|g| *g != 0),
        "{} has gid 0: {s:?}",
        s.name
    );
    assert_eq!(
        (s.cap_eff, s.cap_prm, s.cap_inh, s.cap_bnd, s.cap_amb),
        (0, 0, 0, 0, 0),
        "{} keeps capabilities: {s:?}",
        s.name
    );
    assert!(s.no_new_privs, "{}: NoNewPrivs: {s:?}", s.name);
    if seccomp {
        assert_eq!(s.seccomp, 2, "{}: seccomp filter mode: {s:?}", s.name);
    }
    assert!(s.own_root, "{} sees the host's root", s.name);
    for ns in ["mnt", "ipc", "uts", "net"] {
        assert!(
            s.own_namespaces.iter().any(|n| n == ns),
            "{}: no own {ns} namespace: {s:?}",
            s.name
        );
    }
}

/// What the jailed process sees at `/`: its root directory's entries.
fn root_entries(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/"))
        .expect("reading the jail's root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_and_vhost_device_vsock_run_jailed_and_the_agent_answers() {
    if !vm_test("qemu_and_vhost_device_vsock_run_jailed_and_the_agent_answers") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = jail_env();
    let sandbox = Sandbox::start(&env.config, SandboxSpec::default())
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let vm_pid = sandbox.vm_pid().expect("QEMU's pid");
    let vhost_pid = sandbox
        .pids()
        .into_iter()
        .find(|p| *p != vm_pid)
        .expect("vhost-device-vsock's pid");

    let qemu = status::read(vm_pid).expect("QEMU's /proc status");
    let vhost = status::read(vhost_pid).expect("vhost-device-vsock's /proc status");
    assert_jailed(&qemu, true);
    assert_jailed(&vhost, true);
    assert_eq!(qemu.uids[0], vhost.uids[0], "one uid per sandbox");
    // The root is not the host's (/proc/PID/root/. against /).
    let host = std::fs::metadata("/").expect("stat /");
    for pid in [vm_pid, vhost_pid] {
        let root = std::fs::metadata(format!("/proc/{pid}/root/.")).expect("stat root");
        assert_ne!(
            (root.dev(), root.ino()),
            (host.dev(), host.ino()),
            "pid {pid}"
        );
        let seen = root_entries(pid);
        for hidden in ["etc", "home", "root", "var", "proc", "sys"] {
            if hidden == "etc" {
                // Only the loader's cache is there.
                let etc: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/etc"))
                    .map(|r| {
                        r.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                assert!(
                    etc.iter().all(|e| e == "ld.so.cache"),
                    "{pid}: /etc {etc:?}"
                );
                continue;
            }
            assert!(
                !seen.contains(&hidden.to_string()),
                "{pid} sees /{hidden}: {seen:?}"
            );
        }
    }
    // Its own directory of the sandbox, read-write; the guest image only
    // for QEMU.
    let kernel = env.config.kernel.clone();
    let in_jail = |pid: u32, p: &Path| {
        PathBuf::from(format!("/proc/{pid}/root")).join(p.strip_prefix("/").unwrap_or(p))
    };
    assert!(in_jail(vm_pid, &kernel).exists());
    if !kernel.starts_with("/usr") {
        assert!(!in_jail(vhost_pid, &kernel).exists());
    }

    // Both processes are in the sandbox's memory cgroup, limited to guest
    // memory plus the configured overhead.
    let cg = cgroup_parent_dir(&env).join(format!("{}-{}", qemu.uids[0], sandbox.id()));
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).expect("cgroup.procs");
    for pid in [vm_pid, vhost_pid] {
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "{pid} not in {}: {procs}",
            cg.display()
        );
    }
    let settings = JailSettings::from_config(&env.config).expect("jail on");
    let limit_file = if cg.join("memory.max").exists() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let limit: u64 = std::fs::read_to_string(cg.join(limit_file))
        .expect("memory limit")
        .trim()
        .parse()
        .expect("a number");
    assert_eq!(limit, settings.memory_limit_bytes(sandbox.memory_mib()));

    // The agent still answers through the jailed vsock device.
    let check = sandbox
        .check()
        .await
        .unwrap_or_else(|e| panic!("Check: {e}"));
    assert!(!check.kernel_release.is_empty());

    // For the overhead figure (guest memory is QEMU's RssShmem, a memfd).
    let peak_file = if cg.join("memory.peak").exists() {
        "memory.peak"
    } else {
        "memory.max_usage_in_bytes"
    };
    let peak = std::fs::read_to_string(cg.join(peak_file)).unwrap_or_default();
    let rss = |pid: u32, field: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
            .unwrap_or_default()
    };
    println!(
        "memory cgroup peak {} bytes; qemu RssAnon {} kB RssFile {} kB RssShmem {} kB; \
         vhost-device-vsock RssAnon {} kB",
        peak.trim(),
        rss(vm_pid, "RssAnon"),
        rss(vm_pid, "RssFile"),
        rss(vm_pid, "RssShmem"),
        rss(vhost_pid, "RssAnon")
    );

    let report = sandbox.stop().await;
    assert!(report.graceful, "powered off after Shutdown: {report:?}");
    assert!(!cg.exists(), "sandbox cgroup {} removed", cg.display());
    assert!(!cgroup_parent_dir(&env).exists(), "cgroup parent removed");
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outside_the_vhost_device_vsock_allowlist_kills_it_and_the_start_cleans_up() {
    if !vm_test("a_call_outside_the_vhost_device_vsock_allowlist_kills_it_and_the_start_cleans_up")
    {
        return;
    }
    let _lock = VmLock::acquire();
    let mut env = jail_env();
    // vhost-device-vsock connects to the runtime's readiness listener when
    // the agent announces itself: without `connect` in its filter, that
    // call kills it.
    env.config.jail_vsock_seccomp_deny = vec!["connect".into()];
    let err = Sandbox::start(&env.config, SandboxSpec::default())
        .await
        .err()
        .expect("the start fails");
    let text = err.to_string();
    assert!(matches!(err, SandboxError::BootFailed { .. }), "{text}");
    assert!(
        text.contains(VHOST_PROCESS) && text.contains("SIGSYS"),
        "vhost-device-vsock killed by SIGSYS: {text}"
    );
    assert!(
        !cgroup_parent_dir(&env).exists(),
        "cgroups of the failed start removed"
    );
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jailed_vhost_device_vsock_cannot_reach_the_host_root_or_keep_privileges() {
    if !vm_test("a_jailed_vhost_device_vsock_cannot_reach_the_host_root_or_keep_privileges") {
        return;
    }
    let env = jail_env();
    let binary = ampoule_runtime::host::resolve_binary(&env.config.vhost_device_vsock)
        .expect("vhost-device-vsock installed");
    let dir = env.tmp.path().join("s1");
    std::fs::create_dir(&dir).expect("sandbox dir");
    let vm = jailed_vm(&env, &dir);
    let settings = vm.jail.clone().expect("jail on");
    // The cgroup a runtime killed by SIGKILL left behind (its uid is held by
    // nobody) goes when the next sandbox is jailed.
    let stale = cgroup_parent_dir(&env).join(format!(
        "{}-stale",
        settings.uid_base + settings.uid_count - 1
    ));
    std::fs::create_dir_all(&stale).expect("a stale cgroup");
    let jail = SandboxJail::create(&vm, &settings).expect("jail");
    assert!(!stale.exists(), "stale cgroup {} removed", stale.display());
    let cg = jail.cgroup().dir.clone();
    let mut cmd = jail
        .confine(JailedProcess::VhostVsock, &vm, &binary)
        .expect("confine")
        .command();
    cmd.args(vhost_argv(&vm));
    let mut group = ProcessGroup::new();
    let pid = group
        .spawn(VHOST_PROCESS, cmd, &vm.process_log(VHOST_PROCESS))
        .expect("spawn");
    assert!(
        wait_until(20, || vhost_socket(&vm).exists()
            || group.first_exit().is_some()),
        "vhost-user socket"
    );
    assert!(
        group.first_exit().is_none(),
        "vhost-device-vsock ended: {:?}\n{}",
        group.first_exit(),
        std::fs::read_to_string(vm.process_log(VHOST_PROCESS)).unwrap_or_default()
    );
    let s = status::read(pid).expect("status");
    assert_jailed(&s, true);
    assert_eq!(s.uids[0], jail.uid());
    // The socket it made belongs to the jail's uid, not root.
    let sock = std::fs::metadata(vhost_socket(&vm)).expect("socket");
    assert_eq!(sock.uid(), jail.uid());
    // Its root holds only what it was given.
    assert_eq!(
        root_entries(pid)
            .into_iter()
            .filter(|e| !["bin", "lib", "lib32", "lib64", "sbin"].contains(&e.as_str()))
            .collect::<Vec<_>>(),
        ["dev", "etc", "tmp", "usr"],
        "root of the jail"
    );
    group.hold(jail);
    group.kill_all().await;
    drop(group);
    assert!(!cg.exists(), "cgroup {} removed", cg.display());
    assert!(
        !cgroup_parent_dir(&env).exists(),
        "the parent goes with the last sandbox"
    );
}

/// QEMU's own filter (`-sandbox on,...,spawn=deny`) kills it when it makes a
/// call the filter denies. Nothing outside QEMU can make a running QEMU
/// fork, so the trigger is an argument: `-daemonize` forks at start
/// (without the filter the same command forks and exits 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jailed_qemu_is_killed_by_its_sandbox_when_it_forks() {
    if !vm_test("a_jailed_qemu_is_killed_by_its_sandbox_when_it_forks") {
        return;
    }
    let env = jail_env();
    let binary = ampoule_runtime::host::resolve_binary(&env.config.qemu).expect("QEMU installed");
    let dir = env.tmp.path().join("s2");
    std::fs::create_dir(&dir).expect("sandbox dir");
    let vm = jailed_vm(&env, &dir);
    let settings = vm.jail.clone().expect("jail on");
    let jail = SandboxJail::create(&vm, &settings).expect("jail");
    let cg = jail.cgroup().dir.clone();
    let mut cmd = jail
        .confine(JailedProcess::Qemu, &vm, &binary)
        .expect("confine")
        .command();
    cmd.args([
        "-M",
        "microvm",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ]);
    cmd.args(QEMU_SANDBOX);
    cmd.arg("-daemonize");
    let mut group = ProcessGroup::new();
    group
        .spawn("qemu", cmd, &vm.process_log("qemu"))
        .expect("spawn");
    let exit = tokio::time::timeout(Duration::from_secs(60), group.wait_first_exit())
        .await
        .expect("QEMU ends");
    assert!(
        exit.status.contains("SIGSYS"),
        "QEMU killed by its seccomp filter: {exit}\n{}",
        std::fs::read_to_string(vm.process_log("qemu")).unwrap_or_default()
    );
    group.hold(jail);
    drop(group);
    assert!(!cg.exists(), "cgroup {} removed", cg.display());
}

/// A small TCG VM in `dir`, jailed with `env`'s settings (launched by hand,
/// not through a sandbox).
fn jailed_vm(env: &TestEnv, dir: &Path) -> VmConfig {
    VmConfig {
        kernel: env.config.kernel.clone(),
        initrd: env.config.initrd.clone(),
        cmdline: String::new(),
        vcpus: 1,
        memory_mib: 64,
        drives: vec![],
        drive_slots: vec![],
        vsock_uds: dir.join("vsock.sock"),
        serial_log: dir.join("serial.log"),
        dir: dir.to_path_buf(),
        accel: ampoule_runtime::host::Accel::Tcg,
        jail: JailSettings::from_config(&env.config),
        shared_fs: None,
        nets: Vec::new(),
    }
}

/// `ampoule check --boot` reports each VM process's jail as /proc shows it.
#[test]
fn check_boot_shows_each_vm_process_jailed() {
    if !vm_test("check_boot_shows_each_vm_process_jailed") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = jail_env();
    let cfg = env.write_config(&format!(
        "hypervisor = \"qemu\"\njail_cgroup_parent = {:?}",
        env.config.jail_cgroup_parent
    ));
    let out = ampoule()
        .arg("--config")
        .arg(&cfg)
        .args(["check", "--boot", "--json"])
        .output()
        .expect("run ampoule");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(&out)));
    assert_eq!(v["ok"], true, "{}", show(&out));
    assert_eq!(v["jail"]["enabled"], true);
    assert_eq!(
        v["jail"]["namespaces"],
        serde_json::json!(["mnt", "ipc", "uts", "net"])
    );
    let procs = v["jailed_processes"].as_array().expect("jailed_processes");
    assert_eq!(procs.len(), 2, "QEMU and vhost-device-vsock: {procs:?}");
    for p in procs {
        assert_ne!(p["uids"][0], 0, "{p}");
        assert_eq!(p["cap_eff"], 0, "{p}");
        assert_eq!(p["seccomp"], 2, "{p}");
        assert_eq!(p["no_new_privs"], true, "{p}");
        assert_eq!(p["own_root"], true, "{p}");
    }
    assert!(!cgroup_parent_dir(&env).exists(), "cgroups removed");
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// virtiofsd's server process: the child of the process the runtime started
/// (virtiofsd forks into its namespace sandbox).
fn virtiofsd_server(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))?
            .trim()
            .parse::<u32>()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtiofsd_serves_the_shared_directory_with_only_file_serving_capabilities_in_the_jail_cgroup(
) {
    if !vm_test("virtiofsd_serves_the_shared_directory_with_only_file_serving_capabilities_in_the_jail_cgroup") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = jail_env();
    let spec = SandboxSpec {
        shared_fs: true,
        ..Default::default()
    };
    let sandbox = Sandbox::start(&env.config, spec)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let shared = sandbox
        .shared()
        .expect("a shared directory")
        .root()
        .to_path_buf();
    let starter = ampoule_tests::processes_mentioning(&shared)
        .iter()
        .find(|l| l.contains("virtiofsd"))
        .and_then(|l| l.split(':').next()?.parse::<u32>().ok())
        .expect("virtiofsd serving the shared directory");
    assert!(
        sandbox.pids().contains(&starter),
        "virtiofsd is a member of the sandbox"
    );
    let server = virtiofsd_server(starter).expect("virtiofsd's server process");
    let s = status::read(server).expect("virtiofsd's /proc status");
    // CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID SETGID SETUID MKNOD
    // SETFCAP: what serving files of every owner needs, nothing else.
    let file_serving: u64 = [0, 1, 2, 3, 4, 6, 7, 27, 31]
        .iter()
        .map(|b| 1u64 << b)
        .sum();
    assert_eq!(
        s.cap_eff & !file_serving,
        0,
        "extra capabilities: {:#x}",
        s.cap_eff
    );
    assert_eq!(s.cap_bnd, 0, "bounding set {:#x}", s.cap_bnd);
    assert_eq!(s.seccomp, 2, "seccomp filter");
    assert!(s.no_new_privs);
    assert!(s.own_root, "pivoted into the shared directory");
    for ns in ["mnt", "net"] {
        assert!(s.own_namespaces.iter().any(|n| n == ns), "{ns}: {s:?}");
    }
    // It sees the shared directory as its root and nothing of the host.
    let root: Vec<String> = std::fs::read_dir(format!("/proc/{server}/root"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut root = root;
    root.sort();
    assert_eq!(root, ["containers", "volumes"], "virtiofsd's root");
    // Both virtiofsd processes are in the jail's memory cgroup.
    let qemu = status::read(sandbox.vm_pid().expect("QEMU")).expect("QEMU status");
    let cg = cgroup_parent_dir(&env).join(format!("{}-{}", qemu.uids[0], sandbox.id()));
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).expect("cgroup.procs");
    for pid in [starter, server] {
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "{pid} not in {}: {procs}",
            cg.display()
        );
    }
    sandbox.stop().await;
    assert!(!shared.exists(), "shared directory removed");
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// ampoule-vmm launched by the runtime's ampoule backend with the jail on:
/// it runs as the sandbox's uid with no capabilities, its own seccomp
/// filters, in its own root without `/dev/kvm` (it is handed a descriptor),
/// inside the sandbox's memory cgroup, and still serves the guest's vsock.
/// The guest is the VMM's own test guest: no standard Linux guest boots on
/// this host's KVM (PVM), the runtime's guest image boots on QEMU above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_runs_ampoule_vmm_jailed_with_a_kvm_descriptor_and_its_guest_keeps_vsock() {
    use std::io::{BufRead, BufReader, Read, Write};

    use ampoule_runtime::hypervisor::ampoule::AmpouleVmm;
    use ampoule_runtime::hypervisor::Hypervisor;
    use ampoule_runtime::hypervisor::VM_PROCESS;

    let name =
        "the_runtime_runs_ampoule_vmm_jailed_with_a_kvm_descriptor_and_its_guest_keeps_vsock";
    if !vm_test(name) {
        return;
    }
    if !Path::new("/dev/kvm").exists() {
        println!("SKIPPED: {name}: no /dev/kvm");
        return;
    }
    let _lock = VmLock::acquire();
    let env = jail_env();
    let dir = env.tmp.path().join("s3");
    std::fs::create_dir(&dir).expect("sandbox dir");
    let guests = env.tmp.path().join("guests");
    std::fs::create_dir(&guests).expect("guest dir");
    let mut vm = jailed_vm(&env, &dir);
    vm.kernel = ampoule_tests::vmm_test_guest(&guests);
    vm.initrd = guests.join("initrd");
    std::fs::write(&vm.initrd, b"").expect("empty initrd");
    vm.cmdline = "t=vsock".into();
    vm.accel = ampoule_runtime::host::Accel::Kvm;
    let vmm = AmpouleVmm {
        binary: ampoule_tests::vmm_bin(),
        serial_log_max: 1 << 20,
    };
    let group = vmm
        .launch(&vm)
        .await
        .unwrap_or_else(|e| panic!("launch: {e}"));
    let pid = group.pid_of(VM_PROCESS).expect("ampoule-vmm's pid");
    let ready = wait_until(30, || {
        std::fs::read_to_string(&vm.serial_log)
            .map(|s| s.contains("VSOCK-READY"))
            .unwrap_or(false)
    });
    assert!(
        ready,
        "guest ready: serial {:?}, VMM log {:?}",
        std::fs::read_to_string(&vm.serial_log).unwrap_or_default(),
        std::fs::read_to_string(vm.process_log("ampoule-vmm")).unwrap_or_default()
    );

    let s = status::read(pid).expect("ampoule-vmm's /proc status");
    assert_jailed(&s, true);
    let root = std::fs::metadata(format!("/proc/{pid}/root/.")).expect("stat root");
    let host = std::fs::metadata("/").expect("stat /");
    assert_ne!((root.dev(), root.ino()), (host.dev(), host.ino()));
    assert!(
        !Path::new(&format!("/proc/{pid}/root/dev/kvm")).exists(),
        "/dev/kvm is not in the jail"
    );
    let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert!(
        fds.iter().any(|l| l == Path::new("anon_inode:kvm-vm")),
        "its VM was made through the descriptor it was handed: {fds:?}"
    );
    let cg = cgroup_parent_dir(&env).join(format!("{}-s3", s.uids[0]));
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).expect("cgroup.procs");
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "{pid} in {}: {procs}",
        cg.display()
    );

    // The jailed VMM's vsock device serves the guest's echo port.
    let mut c = std::os::unix::net::UnixStream::connect(&vm.vsock_uds).expect("connect vsock");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    c.write_all(b"CONNECT 1024\nfrom a jailed VMM")
        .expect("write");
    let mut r = BufReader::new(c.try_clone().expect("clone"));
    let mut line = String::new();
    r.read_line(&mut line).expect("OK line");
    assert!(line.starts_with("OK "), "{line:?}");
    let mut got = vec![0u8; 17];
    r.read_exact(&mut got).expect("echo");
    assert_eq!(got, b"from a jailed VMM");
    drop(c);

    drop(group);
    assert!(
        wait_until(10, || !cg.exists()),
        "cgroup {} removed",
        cg.display()
    );
}
