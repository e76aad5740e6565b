//! QEMU `microvm` backend, vsock through `vhost-device-vsock`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::Command;

use super::{log_block, Hypervisor, HypervisorError, VmConfig, VM_PROCESS};
use crate::host::{Accel, Backend};
use crate::process::ProcessGroup;

/// Name of the vsock device process in the group.
pub const VHOST_PROCESS: &str = "vhost-device-vsock";
/// How long vhost-device-vsock gets to create its vhost-user socket.
const VHOST_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// The QEMU backend.
pub struct Qemu {
    pub qemu: PathBuf,
    pub vhost_device_vsock: PathBuf,
}

/// vhost-user socket between QEMU and vhost-device-vsock.
pub fn vhost_socket(vm: &VmConfig) -> PathBuf {
    vm.dir.join("vhost-user.sock")
}

/// Escapes a value for QEMU's `key=value,...` option syntax (`,` doubles).
fn opt_value(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The arguments of `vhost-device-vsock` for `vm`.
pub fn vhost_argv(vm: &VmConfig) -> Vec<OsString> {
    vec![
        "--vm".into(),
        format!(
            "guest-cid={},socket={},uds-path={}",
            ampoule_agent_api::GUEST_CID,
            vhost_socket(vm).display(),
            vm.vsock_uds.display()
        )
        .into(),
    ]
}

/// The QEMU arguments for `vm` (the measured microvm settings).
pub fn qemu_argv(vm: &VmConfig) -> Vec<OsString> {
    let mem = vm.memory_mib;
    let mut a: Vec<String> = vec![
        "-M".into(),
        "microvm,acpi=off,memory-backend=mem,x-option-roms=off,isa-serial=on,rtc=on".into(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-m".into(),
        format!("{mem}M"),
        "-smp".into(),
        vm.vcpus.to_string(),
    ];
    match vm.accel {
        Accel::Kvm => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
        Accel::Tcg => {
            let tcg = if vm.vcpus > 1 {
                "tcg,thread=multi"
            } else {
                "tcg"
            };
            a.extend(["-accel".into(), tcg.into(), "-cpu".into(), "max".into()]);
        }
    }
    a.extend([
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        vm.kernel.display().to_string(),
        "-initrd".into(),
        vm.initrd.display().to_string(),
        "-append".into(),
        vm.cmdline.clone(),
        "-chardev".into(),
        format!("file,id=ser0,path={}", opt_value(&vm.serial_log)),
        "-serial".into(),
        "chardev:ser0".into(),
        "-chardev".into(),
        format!("socket,id=vs,path={}", opt_value(&vhost_socket(vm))),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vs".into(),
    ]);
    for (n, d) in vm.drives.iter().enumerate() {
        let ro = if d.read_only { ",readonly=on" } else { "" };
        a.extend([
            "-drive".into(),
            format!("file={},if=none,id=d{n},format=raw{ro}", opt_value(&d.path)),
            "-device".into(),
            format!(
                "virtio-blk-device,drive=d{n},serial={}",
                d.id.replace(',', ",,")
            ),
        ]);
    }
    a.into_iter().map(OsString::from).collect()
}

#[async_trait]
impl Hypervisor for Qemu {
    fn backend(&self) -> Backend {
        Backend::Qemu
    }

    fn base_cmdline(&self) -> Vec<String> {
        // QEMU's microvm appends the virtio-mmio device declarations itself.
        // reboot=t: a triple fault resets, which -no-reboot turns into exit.
        vec!["reboot=t".into()]
    }

    async fn launch(&self, vm: &VmConfig) -> Result<ProcessGroup, HypervisorError> {
        if !vm.drive_slots.is_empty() {
            return Err(HypervisorError::Invalid(
                "the qemu backend (microvm) has no empty drive slots: pass every drive at boot"
                    .into(),
            ));
        }
        // vhost-device-vsock's --vm syntax has no escape for ','.
        if vm.dir.to_string_lossy().contains(',') {
            return Err(HypervisorError::Invalid(format!(
                "sandbox directory {} contains ',', which vhost-device-vsock cannot take",
                vm.dir.display()
            )));
        }
        let mut group = ProcessGroup::new();
        let vhost_log = vm.process_log(VHOST_PROCESS);
        let mut vhost = Command::new(&self.vhost_device_vsock);
        vhost.args(vhost_argv(vm));
        group.spawn(VHOST_PROCESS, vhost, &vhost_log)?;

        // QEMU connects to the vhost-user socket at start: wait for it.
        let sock = vhost_socket(vm);
        let start = Instant::now();
        while !sock.exists() {
            if let Some(e) = group.first_exit() {
                return Err(HypervisorError::EarlyExit {
                    process: VHOST_PROCESS.into(),
                    status: e.status,
                    log: log_block(VHOST_PROCESS, &vhost_log, 2000),
                });
            }
            if start.elapsed() > VHOST_SOCKET_TIMEOUT {
                return Err(HypervisorError::Timeout {
                    what: format!("vhost-user socket {}", sock.display()),
                    secs: VHOST_SOCKET_TIMEOUT.as_secs(),
                    log: log_block(VHOST_PROCESS, &vhost_log, 2000),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        let mut qemu = Command::new(&self.qemu);
        qemu.args(qemu_argv(vm));
        tracing::debug!(qemu = %self.qemu.display(), args = ?qemu_argv(vm), "starting QEMU");
        group.spawn(VM_PROCESS, qemu, &vm.process_log("qemu"))?;
        Ok(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::Drive;

    fn vm(accel: Accel, vcpus: u32) -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.img".into(),
            cmdline: "console=ttyS0 quiet".into(),
            vcpus,
            memory_mib: 256,
            drives: vec![Drive {
                id: "rootfs0".into(),
                path: "/img/a,b.erofs".into(),
                read_only: true,
            }],
            drive_slots: vec![],
            dir: "/run/s/1".into(),
            vsock_uds: "/run/s/1/vsock.sock".into(),
            serial_log: "/run/s/1/serial.log".into(),
            accel,
        }
    }

    fn argv(v: &VmConfig) -> Vec<String> {
        qemu_argv(v)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn microvm_settings_are_the_measured_ones() {
        let a = argv(&vm(Accel::Tcg, 1));
        assert_eq!(
            after(&a, "-M"),
            ["microvm,acpi=off,memory-backend=mem,x-option-roms=off,isa-serial=on,rtc=on"]
        );
        assert_eq!(
            after(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(after(&a, "-m"), ["256M"]);
        assert_eq!(after(&a, "-smp"), ["1"]);
        for f in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            assert!(a.iter().any(|x| x == f), "{f} missing");
        }
        assert_eq!(after(&a, "-kernel"), ["/k/vmlinux"]);
        assert_eq!(after(&a, "-initrd"), ["/k/initrd.img"]);
        assert_eq!(after(&a, "-append"), ["console=ttyS0 quiet"]);
        assert!(after(&a, "-chardev").contains(&"socket,id=vs,path=/run/s/1/vhost-user.sock"));
        assert!(after(&a, "-chardev").contains(&"file,id=ser0,path=/run/s/1/serial.log"));
        assert!(after(&a, "-device").contains(&"vhost-user-vsock-device,chardev=vs"));
    }

    #[test]
    fn accel_tcg_and_kvm() {
        let a = argv(&vm(Accel::Tcg, 1));
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        let a = argv(&vm(Accel::Tcg, 2));
        assert_eq!(after(&a, "-accel"), ["tcg,thread=multi"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        let a = argv(&vm(Accel::Kvm, 2));
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn drives_are_readonly_virtio_blk_with_serial_and_escaped_commas() {
        let a = argv(&vm(Accel::Tcg, 1));
        assert_eq!(
            after(&a, "-drive"),
            ["file=/img/a,,b.erofs,if=none,id=d0,format=raw,readonly=on"]
        );
        assert!(after(&a, "-device").contains(&"virtio-blk-device,drive=d0,serial=rootfs0"));
    }

    #[test]
    fn vhost_device_vsock_arguments() {
        let a: Vec<String> = vhost_argv(&vm(Accel::Tcg, 1))
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "--vm",
                "guest-cid=3,socket=/run/s/1/vhost-user.sock,uds-path=/run/s/1/vsock.sock"
            ]
        );
    }
}
