//! The real guest image (DESIGN.md: Debian 6.1 kernel with the PVH note,
//! initramfs with the agent) booted by ampoule-vmm to its agent. Only
//! possible where /dev/kvm is hardware virtualisation: on PVM hosts a
//! standard Linux guest cannot boot on any VMM.
//!
//! The image is taken from AMPOULE_GUEST_KERNEL / AMPOULE_GUEST_INITRD
//! (default: /usr/local/share/ampoule/{vmlinux,initramfs.cpio.gz}). The
//! agent announces itself with a guest-initiated vsock connection to the
//! host (`ampoule.ready_port=N` on the command line), which listens at
//! `<uds>_<N>` before the VM starts.

mod common;
use common::*;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn real_guest_image_boots_to_its_agent_on_hardware_kvm() {
    let name = "real_guest_image_boots_to_its_agent_on_hardware_kvm";
    if !have_kvm(name) {
        return;
    }
    if is_pvm_host() {
        println!(
            "SKIPPED (impossible on this host: standard Linux guest cannot boot under PVM): {name}"
        );
        return;
    }
    let kernel = PathBuf::from(
        std::env::var("AMPOULE_GUEST_KERNEL")
            .unwrap_or_else(|_| "/usr/local/share/ampoule/vmlinux".into()),
    );
    let initrd = PathBuf::from(
        std::env::var("AMPOULE_GUEST_INITRD")
            .unwrap_or_else(|_| "/usr/local/share/ampoule/initramfs.cpio.gz".into()),
    );
    // The agent connects to this host port once ready (ampoule.ready_port).
    let port: u32 = 1100;
    assert!(
        kernel.exists(),
        "guest kernel {} missing (build guest-image/)",
        kernel.display()
    );
    assert!(
        initrd.exists(),
        "guest initrd {} missing (build guest-image/)",
        initrd.display()
    );
    let s = Scratch::new("real");
    let uds = s.path("v.sock");
    let ready = UnixListener::bind(s.path(&format!("v.sock_{port}"))).unwrap();
    ready.set_nonblocking(true).unwrap();
    let log = s.path("serial.log");
    let mut child = VmmChild(
        Command::new(VMM)
            .args([
                "--kernel",
                kernel.to_str().unwrap(),
                "--initrd",
                initrd.to_str().unwrap(),
            ])
            .args([
                "--cmdline",
                &format!("console=ttyS0 reboot=k panic=-1 quiet ampoule.ready_port={port}"),
            ])
            .args(["--memory-mib", "256", "--vcpus", "2"])
            .args([
                "--vsock-uds",
                uds.to_str().unwrap(),
                "--serial-log",
                log.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let mut conn = loop {
        match ready.accept() {
            Ok((c, _)) => break c,
            Err(_) => {
                assert_eq!(
                    child.0.try_wait().unwrap(),
                    None,
                    "VM ended before the agent announced itself: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "agent did not connect; serial:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 1];
    let _ = conn.read(&mut b);
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
}
