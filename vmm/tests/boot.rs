//! Booting the freestanding test guests: serial output, reset/poweroff,
//! boot parameters, SMP, CPUID.

mod common;
use common::*;

fn boots_prints_and_resets(kind: &str, name: &str) {
    if !have_kvm(name) {
        return;
    }
    let k = guest(kind);
    let o = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "t=hello",
        "--memory-mib",
        "32",
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains(&format!("AMPOULE-GUEST proto={kind}")),
        "{out}"
    );
    assert!(out.contains("hello from the test guest"), "{out}");
    assert!(out.contains("DONE"), "{out}");
}

#[test]
fn linux64_entry_guest_prints_over_serial_and_reset_exits_0() {
    boots_prints_and_resets(
        "linux64",
        "linux64_entry_guest_prints_over_serial_and_reset_exits_0",
    );
}

#[test]
fn pvh_entry_guest_prints_over_serial_and_reset_exits_0() {
    boots_prints_and_resets(
        "pvh",
        "pvh_entry_guest_prints_over_serial_and_reset_exits_0",
    );
}

#[test]
fn serial_log_file_receives_the_guest_output() {
    if !have_kvm("serial_log_file_receives_the_guest_output") {
        return;
    }
    let s = Scratch::new("serial");
    let log = s.path("serial.log");
    let k = guest("pvh");
    let o = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "t=hello",
        "--serial-log",
        log.to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert!(!stdout(&o).contains("hello"), "output went to stdout too");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("hello from the test guest"), "{text}");
}

fn boot_params_reach_the_guest(kind: &str, name: &str) {
    if !have_kvm(name) {
        return;
    }
    let s = Scratch::new("bp");
    let initrd = s.path("initrd.img");
    let data: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&initrd, &data).unwrap();
    let k = guest(kind);
    let cmdline = "t=bootparams console=ttyS0 marker=ampoule-42";
    let o = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--memory-mib",
        "48",
        "--initrd",
        initrd.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    let mem_end: u64 = 48 << 20;
    assert!(out.contains("E820 n=3"), "{out}");
    assert!(out.contains("E820 0x0 0x9fc00 1"), "{out}");
    assert!(
        out.contains(&format!("E820 0x100000 {:#x} 1", mem_end - 0x100000)),
        "{out}"
    );
    assert!(out.contains(&format!("CMDLINE {cmdline}\n")), "{out}");
    let want = format!("size={} fnv={:#x}", data.len(), fnv1a(&data));
    let line = out
        .lines()
        .find(|l| l.starts_with("INITRD"))
        .unwrap_or_default();
    assert!(line.contains(&want), "initrd line {line:?}, want {want}");
    // The initrd is page aligned, inside RAM and above the kernel.
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr=0x"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .expect("initrd address");
    assert_eq!(addr % 4096, 0);
    assert!(
        addr >= 0x200000 && addr + data.len() as u64 <= mem_end,
        "{addr:#x}"
    );
}

#[test]
fn boot_params_e820_cmdline_and_initrd_reach_a_linux64_guest() {
    boot_params_reach_the_guest(
        "linux64",
        "boot_params_e820_cmdline_and_initrd_reach_a_linux64_guest",
    );
}

#[test]
fn pvh_start_info_memmap_cmdline_and_initrd_reach_a_pvh_guest() {
    boot_params_reach_the_guest(
        "pvh",
        "pvh_start_info_memmap_cmdline_and_initrd_reach_a_pvh_guest",
    );
}

#[test]
fn mp_table_lists_every_vcpu_and_1_2_4_vcpus_all_come_up() {
    if !have_kvm("mp_table_lists_every_vcpu_and_1_2_4_vcpus_all_come_up") {
        return;
    }
    for kind in ["linux64", "pvh"] {
        for n in [1, 2, 4] {
            let k = guest(kind);
            let ns = n.to_string();
            let o = run_vmm(&[
                "--kernel",
                k.to_str().unwrap(),
                "--cmdline",
                "t=smp",
                "--vcpus",
                &ns,
            ]);
            assert_ok(&o);
            let out = stdout(&o);
            assert!(
                out.contains(&format!("MPTABLE cpus={n} checksum=ok")),
                "{kind} {n}: {out}"
            );
            assert!(out.contains(&format!("SMP up={n}\n")), "{kind} {n}: {out}");
        }
    }
}

#[test]
fn cpuid_keeps_kvm_hypervisor_leaves_and_sets_the_apic_id() {
    if !have_kvm("cpuid_keeps_kvm_hypervisor_leaves_and_sets_the_apic_id") {
        return;
    }
    let k = guest("linux64");
    let o = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "t=cpuid",
        "--vcpus",
        "4",
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    // Read in ring 0, where KVM answers from KVM_SET_CPUID2.
    assert!(out.contains("hv_max=0x4000000"), "{out}");
    assert!(out.contains("hv_sig=KVMKVMKVM"), "{out}");
    assert!(out.contains("apic_id=0 logical_cpus=4"), "{out}");
}

#[test]
fn triple_fault_and_debug_exit_port_end_the_vm_with_status_0() {
    if !have_kvm("triple_fault_and_debug_exit_port_end_the_vm_with_status_0") {
        return;
    }
    let k = guest("linux64");
    for (mode, marker) in [("t=fault", "FAULT"), ("t=exitport", "EXITPORT")] {
        let o = run_vmm(&["--kernel", k.to_str().unwrap(), "--cmdline", mode]);
        assert_ok(&o);
        let out = stdout(&o);
        assert!(out.contains(marker), "{out}");
        assert!(!out.contains("DONE"), "{out}");
    }
}

#[test]
fn minimal_bench_guest_prints_one_byte_and_exits_0() {
    if !have_kvm("minimal_bench_guest_prints_one_byte_and_exits_0") {
        return;
    }
    let k = guest("bench");
    let o = run_vmm(&["--kernel", k.to_str().unwrap()]);
    assert_ok(&o);
    assert_eq!(stdout(&o), "A");
}

#[test]
fn json_config_file_boots_the_guest_like_flags() {
    if !have_kvm("json_config_file_boots_the_guest_like_flags") {
        return;
    }
    let s = Scratch::new("json");
    let cfg = s.path("vm.json");
    let k = guest("pvh");
    std::fs::write(
        &cfg,
        serde_json::json!({"kernel": k, "cmdline": "t=smp", "vcpus": 2, "memory_mib": 32})
            .to_string(),
    )
    .unwrap();
    let o = run_vmm(&["--config", cfg.to_str().unwrap()]);
    assert_ok(&o);
    assert!(stdout(&o).contains("SMP up=2"), "{}", stdout(&o));
}
