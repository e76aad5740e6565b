//! The sandbox layer with real VMs: boot, the agent's Check, Shutdown, failures
//! and cleanup, on the backend `auto` picks (and explicitly on `qemu`).

use std::time::{Duration, Instant};

use ampoule_runtime::{HypervisorKind, Sandbox, SandboxError, SandboxSpec};
use ampoule_tests::{host_kernel_release, vm_test, TestEnv, VmLock};

/// Boots with `spec`, checks the agent's answer against what was asked,
/// stops, and checks nothing is left behind.
async fn boot_check_stop(env: &TestEnv, spec: SandboxSpec) {
    let vcpus = spec.vcpus.unwrap_or(env.config.vcpus);
    let memory_mib = spec.memory_mib.unwrap_or(env.config.memory_mib);
    let sandbox = Sandbox::start(&env.config, spec)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    assert!(sandbox.vm_pid().is_some());
    let check = sandbox
        .check()
        .await
        .unwrap_or_else(|e| panic!("Check: {e}"));
    assert!(!check.kernel_release.is_empty());
    assert_ne!(
        check.kernel_release,
        host_kernel_release(),
        "the guest runs its own kernel"
    );
    assert_eq!(check.cpus, vcpus, "guest CPUs");
    let asked = u64::from(memory_mib) * 1024 * 1024;
    assert!(
        check.memory_bytes <= asked && check.memory_bytes >= asked * 8 / 10,
        "guest MemTotal {} for {} MiB asked",
        check.memory_bytes,
        memory_mib
    );
    assert!(!check.agent_version.is_empty());
    let dir = sandbox.dir().to_path_buf();
    assert!(dir.exists());
    let report = sandbox.stop().await;
    assert!(
        report.graceful,
        "the guest powered off after Shutdown: {report:?}"
    );
    assert!(!dir.exists(), "sandbox directory removed");
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_backend_boots_answers_check_with_guest_kernel_and_shuts_down_cleanly() {
    if !vm_test("auto_backend_boots_answers_check_with_guest_kernel_and_shuts_down_cleanly") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = TestEnv::new();
    boot_check_stop(&env, SandboxSpec::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vcpus_are_online_in_the_guest() {
    if !vm_test("two_vcpus_are_online_in_the_guest") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = TestEnv::new();
    boot_check_stop(
        &env,
        SandboxSpec {
            vcpus: Some(2),
            ..Default::default()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_512_mib_is_what_the_guest_sees() {
    if !vm_test("memory_of_512_mib_is_what_the_guest_sees") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = TestEnv::new();
    boot_check_stop(
        &env,
        SandboxSpec {
            memory_mib: Some(512),
            ..Default::default()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_qemu_backend_boots_and_answers_check() {
    if !vm_test("explicit_qemu_backend_boots_and_answers_check") {
        return;
    }
    let _lock = VmLock::acquire();
    let mut env = TestEnv::new();
    env.config.hypervisor = HypervisorKind::Qemu;
    boot_check_stop(&env, SandboxSpec::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_that_never_becomes_ready_fails_within_the_timeout_naming_the_serial_log() {
    if !vm_test("guest_that_never_becomes_ready_fails_within_the_timeout_naming_the_serial_log") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = TestEnv::new();
    // No init: the kernel panics, and panic=0 keeps the VM hanging forever.
    let timeout = Duration::from_secs(6);
    let spec = SandboxSpec {
        kernel_params: vec!["rdinit=/nonexistent".into(), "panic=0".into()],
        boot_timeout: Some(timeout),
        ..Default::default()
    };
    let t0 = Instant::now();
    let err = Sandbox::start(&env.config, spec)
        .await
        .err()
        .expect("boot must fail");
    let took = t0.elapsed();
    assert!(
        took < timeout + Duration::from_secs(5),
        "failed after {took:?}"
    );
    let SandboxError::BootFailed {
        ref reason,
        ref serial_log,
        ..
    } = err
    else {
        panic!("expected BootFailed, got {err}");
    };
    assert!(reason.contains("within"), "{reason}");
    let msg = err.to_string();
    assert!(
        msg.contains(&serial_log.display().to_string()),
        "error names the serial log: {msg}"
    );
    let log = std::fs::read_to_string(serial_log).expect("the serial log is kept");
    assert!(
        log.contains("Kernel panic") || log.contains("rdinit"),
        "serial log: {log}"
    );
    assert!(
        msg.contains("Kernel panic") || msg.contains("rdinit"),
        "error quotes the log: {msg}"
    );
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_that_exits_during_boot_is_reported_at_once_with_its_serial_log() {
    if !vm_test("vm_that_exits_during_boot_is_reported_at_once_with_its_serial_log") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = TestEnv::new();
    // No init and panic=-1: the guest resets, -no-reboot ends QEMU.
    let timeout = Duration::from_secs(60);
    let spec = SandboxSpec {
        kernel_params: vec!["rdinit=/nonexistent".into()],
        boot_timeout: Some(timeout),
        ..Default::default()
    };
    let t0 = Instant::now();
    let err = Sandbox::start(&env.config, spec)
        .await
        .err()
        .expect("boot must fail");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "noticed the exit, not the timeout"
    );
    let SandboxError::BootFailed {
        ref reason,
        ref serial_log,
        ..
    } = err
    else {
        panic!("expected BootFailed, got {err}");
    };
    assert!(reason.contains("before the agent was ready"), "{reason}");
    assert!(
        serial_log.exists(),
        "serial log kept at {}",
        serial_log.display()
    );
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_vm_process_is_detected_and_reported() {
    if !vm_test("killing_the_vm_process_is_detected_and_reported") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = TestEnv::new();
    let sandbox = Sandbox::start(&env.config, SandboxSpec::default())
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let pid = sandbox.vm_pid().expect("VM pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the VM");
    let exit = tokio::time::timeout(Duration::from_secs(10), sandbox.wait_exit())
        .await
        .expect("the VM's death is noticed");
    assert_eq!(exit.pid, pid);
    assert!(!exit.killed_by_us);
    assert!(exit.status.contains("signal 9"), "{exit}");
    let err = sandbox.check().await.expect_err("Check on a dead VM fails");
    assert!(matches!(err, SandboxError::VmExited(_)), "{err}");
    assert!(err.to_string().contains("signal 9"), "{err}");
    let report = sandbox.stop().await;
    assert!(!report.graceful);
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_start_stop_cycles_leave_no_process_socket_or_file() {
    if !vm_test("twenty_start_stop_cycles_leave_no_process_socket_or_file") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = TestEnv::new();
    for i in 0..20 {
        let sandbox = Sandbox::start(&env.config, SandboxSpec::default())
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: start: {e}"));
        sandbox
            .check()
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: Check: {e}"));
        let report = sandbox.stop().await;
        assert!(report.graceful, "cycle {i}: {report:?}");
        let left = env.leftovers();
        assert!(left.is_empty(), "cycle {i}: left behind: {left:#?}");
    }
    assert!(
        ampoule_tests::files_in(&env.config.log_dir).is_empty(),
        "no failure logs"
    );
}

#[tokio::test]
async fn bad_input_to_sandbox_start_gives_clear_errors_and_starts_nothing() {
    // No VM runs here: every input is refused before anything starts.
    let env = TestEnv::new();
    let mut c = env.config.clone();
    c.kernel = env.tmp.path().join("no-such-vmlinux");
    let e = Sandbox::start(&c, SandboxSpec::default())
        .await
        .err()
        .expect("missing kernel")
        .to_string();
    assert!(
        e.contains("guest kernel") && e.contains("no-such-vmlinux"),
        "{e}"
    );

    let mut c = env.config.clone();
    c.kernel = std::env::current_exe().expect("exe"); // any readable file
    c.initrd = env.tmp.path().join("no-such-initrd");
    let e = Sandbox::start(&c, SandboxSpec::default())
        .await
        .err()
        .expect("missing initrd")
        .to_string();
    assert!(
        e.contains("guest initrd") && e.contains("no-such-initrd"),
        "{e}"
    );

    let e = Sandbox::start(
        &env.config,
        SandboxSpec {
            vcpus: Some(0),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("zero vcpus")
    .to_string();
    assert!(e.contains("vcpus must be at least 1"), "{e}");

    let e = Sandbox::start(
        &env.config,
        SandboxSpec {
            id: Some("../x".into()),
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("bad id");
    assert!(matches!(e, SandboxError::BadId(_)), "{e}");
    assert!(env.leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_sandbox_whose_guest_hung_kills_it_in_bounded_time_and_leaves_nothing() {
    if !vm_test("stopping_a_sandbox_whose_guest_hung_kills_it_in_bounded_time_and_leaves_nothing") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = TestEnv::new();
    let sandbox = Sandbox::start(&env.config, SandboxSpec::default())
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    // A frozen VM process: the guest answers nothing.
    let pid = sandbox.vm_pid().expect("VM pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("freeze the VM");
    let t0 = Instant::now();
    let report = sandbox.stop().await;
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        t0.elapsed()
    );
    assert!(!report.graceful, "{report:?}");
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}
