//! Bad configuration: a clear message naming the problem, a non-zero exit,
//! and nothing left behind.

mod common;
use common::*;

fn fails_cleanly(args: &[&str], needle: &str, s: &Scratch) {
    let before = s.entries();
    let o = run_vmm(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    let err = stderr(&o);
    assert!(
        err.contains(needle),
        "{args:?}: message {err:?} does not name {needle:?}"
    );
    assert_eq!(s.entries(), before, "{args:?} left files behind");
}

#[test]
fn missing_or_non_elf_kernel_is_refused_by_name() {
    let s = Scratch::new("badk");
    let api = s.path("api.sock");
    fails_cleanly(
        &[
            "--kernel",
            "/nonexistent/vmlinux",
            "--api-sock",
            api.to_str().unwrap(),
        ],
        "/nonexistent/vmlinux",
        &s,
    );
    let junk = s.path("junk");
    std::fs::write(&junk, b"MZ this is not an ELF file").unwrap();
    fails_cleanly(
        &[
            "--kernel",
            junk.to_str().unwrap(),
            "--api-sock",
            api.to_str().unwrap(),
        ],
        "not an ELF file",
        &s,
    );
    fails_cleanly(&["--memory-mib", "64"], "no kernel given", &s);
}

#[test]
fn unknown_flag_and_bad_values_are_refused() {
    let s = Scratch::new("badf");
    fails_cleanly(&["--no-such-flag"], "--no-such-flag", &s);
    fails_cleanly(&["--vcpus", "many"], "--vcpus", &s);
    fails_cleanly(&["--drive", "ro,id=x"], "missing path=FILE", &s);
    let cfg = s.path("bad.json");
    std::fs::write(&cfg, r#"{"kernel": "/k", "colour": "blue"}"#).unwrap();
    fails_cleanly(&["--config", cfg.to_str().unwrap()], "colour", &s);
}

#[test]
fn memory_too_small_for_kernel_or_initrd_is_refused() {
    if !have_kvm("memory_too_small_for_kernel_or_initrd_is_refused") {
        return;
    }
    let s = Scratch::new("badm");
    let k = guest("pvh");
    let ks = k.to_str().unwrap();
    let api = s.path("api.sock");
    let log = s.path("serial.log");
    let initrd = s.path("initrd");
    std::fs::write(&initrd, vec![0u8; 3 << 20]).unwrap();
    fails_cleanly(
        &[
            "--kernel",
            ks,
            "--memory-mib",
            "3",
            "--initrd",
            initrd.to_str().unwrap(),
            "--api-sock",
            api.to_str().unwrap(),
            "--serial-log",
            log.to_str().unwrap(),
        ],
        "too small",
        &s,
    );
    fails_cleanly(&["--kernel", ks, "--memory-mib", "1"], "memory_mib", &s);
    fails_cleanly(&["--kernel", ks, "--vcpus", "0"], "vcpus", &s);
}

#[test]
fn socket_path_too_long_or_in_use_is_refused() {
    let s = Scratch::new("bads");
    let k = if std::path::Path::new("/dev/kvm").exists() {
        guest("pvh")
    } else {
        // Validation happens before KVM is opened; any ELF will do.
        std::path::PathBuf::from(VMM)
    };
    let ks = k.to_str().unwrap();
    let long = format!("{}/{}", s.0.display(), "s".repeat(110));
    fails_cleanly(&["--kernel", ks, "--api-sock", &long], "too long", &s);
    fails_cleanly(&["--kernel", ks, "--vsock-uds", &long], "too long", &s);
    let busy = s.path("busy.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&busy).unwrap();
    let log = s.path("serial.log");
    fails_cleanly(
        &[
            "--kernel",
            ks,
            "--api-sock",
            busy.to_str().unwrap(),
            "--serial-log",
            log.to_str().unwrap(),
        ],
        "already in use",
        &s,
    );
    let api = s.path("api.sock");
    fails_cleanly(
        &[
            "--kernel",
            ks,
            "--api-sock",
            api.to_str().unwrap(),
            "--vsock-uds",
            busy.to_str().unwrap(),
        ],
        "already in use",
        &s,
    );
}

#[test]
fn no_access_to_dev_kvm_is_reported() {
    if !have_kvm("no_access_to_dev_kvm_is_reported") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // As a normal user, /dev/kvm access is whatever this user has; the
        // check needs a user without access, which root can switch to.
        println!("SKIPPED: no_access_to_dev_kvm_is_reported: needs root to drop to a user without /dev/kvm access");
        return;
    }
    let s = Scratch::new("nokvm");
    // SAFETY: chmod on our own scratch directory path.
    std::fs::set_permissions(&s.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let k = s.path("guest.elf");
    std::fs::copy(guest("pvh"), &k).unwrap();
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let api = s.path("api.sock");
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", VMM])
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--api-sock",
            api.to_str().unwrap(),
        ])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&o.stderr);
    let kvm_open_for_all = std::fs::metadata("/dev/kvm")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o006 == 0o006)
        .unwrap_or(false);
    if kvm_open_for_all {
        println!("SKIPPED: no_access_to_dev_kvm_is_reported: /dev/kvm is open to every user here");
        return;
    }
    assert!(!o.status.success());
    assert!(err.contains("/dev/kvm"), "{err}");
    assert!(!api.exists());
}
