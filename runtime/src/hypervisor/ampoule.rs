//! `ampoule` backend: Ampoule's own VMM, `ampoule-vmm`, one process per VM.

use std::ffi::OsString;
use std::path::PathBuf;

use async_trait::async_trait;
use tokio::process::Command;

use super::{Hypervisor, HypervisorError, VmConfig, VM_PROCESS};
use crate::host::Backend;
use crate::process::ProcessGroup;

/// The ampoule-vmm backend.
pub struct AmpouleVmm {
    pub binary: PathBuf,
}

/// Control socket of the VMM.
pub fn api_socket(vm: &VmConfig) -> PathBuf {
    vm.dir.join("api.sock")
}

/// The `ampoule-vmm` arguments for `vm`.
pub fn vmm_argv(vm: &VmConfig) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--kernel".into(),
        vm.kernel.clone().into(),
        "--initrd".into(),
        vm.initrd.clone().into(),
        "--cmdline".into(),
        vm.cmdline.clone().into(),
        "--vcpus".into(),
        vm.vcpus.to_string().into(),
        "--memory-mib".into(),
        vm.memory_mib.to_string().into(),
        "--vsock-uds".into(),
        vm.vsock_uds.clone().into(),
        "--serial-log".into(),
        vm.serial_log.clone().into(),
        "--api-sock".into(),
        api_socket(vm).into(),
    ];
    for d in &vm.drives {
        let mut spec = OsString::from("path=");
        spec.push(&d.path);
        if d.read_only {
            spec.push(",ro");
        }
        spec.push(format!(",id={}", d.id));
        a.push("--drive".into());
        a.push(spec);
    }
    for s in &vm.drive_slots {
        a.push("--drive-slot".into());
        a.push(format!("id={s}").into());
    }
    a
}

#[async_trait]
impl Hypervisor for AmpouleVmm {
    fn backend(&self) -> Backend {
        Backend::Ampoule
    }

    fn base_cmdline(&self) -> Vec<String> {
        // The VMM declares its virtio-mmio devices on the command line itself.
        vec!["reboot=t".into()]
    }

    async fn launch(&self, vm: &VmConfig) -> Result<ProcessGroup, HypervisorError> {
        let mut group = ProcessGroup::new();
        let mut cmd = Command::new(&self.binary);
        cmd.args(vmm_argv(vm));
        tracing::debug!(vmm = %self.binary.display(), args = ?vmm_argv(vm), "starting ampoule-vmm");
        group.spawn(VM_PROCESS, cmd, &vm.process_log("ampoule-vmm"))?;
        Ok(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Accel;
    use crate::hypervisor::Drive;

    #[test]
    fn vmm_flags() {
        let vm = VmConfig {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 512,
            drives: vec![
                Drive {
                    id: "r0".into(),
                    path: "/a.img".into(),
                    read_only: true,
                },
                Drive {
                    id: "s0".into(),
                    path: "/b.img".into(),
                    read_only: false,
                },
            ],
            drive_slots: vec!["slot1".into()],
            dir: "/run/s".into(),
            vsock_uds: "/run/s/vsock.sock".into(),
            serial_log: "/run/s/serial.log".into(),
            accel: Accel::Kvm,
        };
        let a: Vec<String> = vmm_argv(&vm)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "--kernel",
                "/k",
                "--initrd",
                "/i",
                "--cmdline",
                "console=ttyS0",
                "--vcpus",
                "2",
                "--memory-mib",
                "512",
                "--vsock-uds",
                "/run/s/vsock.sock",
                "--serial-log",
                "/run/s/serial.log",
                "--api-sock",
                "/run/s/api.sock",
                "--drive",
                "path=/a.img,ro,id=r0",
                "--drive",
                "path=/b.img,id=s0",
                "--drive-slot",
                "id=slot1"
            ]
        );
    }
}
