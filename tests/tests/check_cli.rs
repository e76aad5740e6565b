//! `ampoule check` and the CLI's handling of bad configuration, with the real
//! `ampoule` binary.

use ampoule_tests::{ampoule, host_kernel_release, show, vm_test, TestEnv, VmLock};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(out)))
}

#[test]
fn check_reports_the_backend_auto_picks_and_why() {
    let env = TestEnv::new();
    let cfg = env.write_config("");
    let out = ampoule()
        .args(["--config"])
        .arg(&cfg)
        .args(["check", "--json"])
        .output()
        .expect("run ampoule");
    let v = json(&out);
    assert!(
        v["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{}",
        show(&out)
    );
    assert!(v.get("backend").is_some(), "{}", show(&out));
    assert_eq!(v["hypervisor"], "auto");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(
            v["backend"],
            "qemu",
            "a PVM host without a PVM kernel uses QEMU: {}",
            show(&out)
        );
        assert_eq!(v["accel"], "tcg");
        assert!(v["reason"].as_str().unwrap_or("").contains("PVM"));
    }
    // The exit status follows `ok`.
    assert_eq!(out.status.success(), v["ok"] == true, "{}", show(&out));
    let text = ampoule()
        .args(["--config"])
        .arg(&cfg)
        .arg("check")
        .output()
        .expect("run ampoule");
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("backend:") && stdout.contains("reason:"),
        "{}",
        show(&text)
    );
}

#[test]
fn check_boot_json_reports_the_guest_kernel_cpus_memory_and_boot_time() {
    if !vm_test("check_boot_json_reports_the_guest_kernel_cpus_memory_and_boot_time") {
        return;
    }
    let _lock = VmLock::acquire();
    let env = TestEnv::new();
    let cfg = env.write_config("vcpus = 1\nmemory_mib = 256");
    let out = ampoule()
        .args(["--config"])
        .arg(&cfg)
        .args(["check", "--boot", "--json"])
        .output()
        .expect("run ampoule");
    assert!(out.status.success(), "{}", show(&out));
    let v = json(&out);
    assert_eq!(v["ok"], true);
    let guest = v["guest_kernel"].as_str().expect("guest_kernel");
    assert!(
        !guest.is_empty() && guest != host_kernel_release(),
        "{}",
        show(&out)
    );
    assert_eq!(v["vcpus"], 1);
    let mem = v["memory_mib"].as_u64().expect("memory_mib");
    assert!((200..=256).contains(&mem), "guest MemTotal {mem} MiB");
    assert!(v["boot_ms"].as_u64().expect("boot_ms") > 0);
    assert!(
        env.leftovers().is_empty(),
        "left behind: {:#?}",
        env.leftovers()
    );
}

fn expect_config_error(args_config: &std::path::Path, needle: &str) {
    let out = ampoule()
        .args(["--config"])
        .arg(args_config)
        .arg("check")
        .output()
        .expect("run ampoule");
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "stderr should mention {needle:?}: {}",
        show(&out)
    );
}

#[test]
fn missing_or_unreadable_config_file_is_a_clear_error() {
    let env = TestEnv::new();
    let missing = env.tmp.path().join("nope.toml");
    expect_config_error(&missing, "nope.toml");
    // A directory cannot be read as a file (root can read any mode bits).
    expect_config_error(env.tmp.path(), "cannot read config file");
    // AMPOULE_CONFIG is honoured the same way.
    let out = ampoule()
        .env("AMPOULE_CONFIG", &missing)
        .arg("check")
        .output()
        .expect("run ampoule");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope.toml"),
        "{}",
        show(&out)
    );
}

#[test]
fn unknown_hypervisor_zero_vcpus_and_bad_toml_are_clear_errors() {
    let env = TestEnv::new();
    let p = env.tmp.path().join("c.toml");
    std::fs::write(&p, "hypervisor = \"xen\"\n").expect("write");
    expect_config_error(&p, "xen");
    std::fs::write(&p, "vcpus = 0\n").expect("write");
    expect_config_error(&p, "vcpus must be at least 1");
    std::fs::write(&p, "vcpus = \n").expect("write");
    expect_config_error(&p, "invalid config file");
}

#[test]
fn missing_kernel_or_initrd_makes_check_fail_naming_the_path() {
    let env = TestEnv::new();
    let p = env.tmp.path().join("c.toml");
    std::fs::write(&p, "kernel = \"/nonexistent/vmlinux-x\"\n").expect("write");
    let out = ampoule()
        .arg("--config")
        .arg(&p)
        .args(["check", "--json"])
        .output()
        .expect("run");
    assert!(!out.status.success(), "{}", show(&out));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/vmlinux-x"),
        "{}",
        show(&out)
    );
    std::fs::write(&p, "initrd = \"/nonexistent/initrd-x\"\n").expect("write");
    let out = ampoule()
        .arg("--config")
        .arg(&p)
        .args(["check", "--boot"])
        .output()
        .expect("run");
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/initrd-x"),
        "{}",
        show(&out)
    );
}
