//! `ampoule` backend: Ampoule's own VMM, `ampoule-vmm`, one process per VM.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use async_trait::async_trait;

use super::{Hypervisor, HypervisorError, VmConfig, VM_PROCESS};
use crate::host::Backend;
use crate::jail::plan::JailedProcess;
use crate::jail::SandboxJail;
use crate::process::ProcessGroup;

/// The ampoule-vmm backend.
pub struct AmpouleVmm {
    pub binary: PathBuf,
    /// Bound on the serial log file the VMM writes (`--serial-log-max-bytes`).
    pub serial_log_max: u64,
}

/// Control socket of the VMM.
pub fn api_socket(vm: &VmConfig) -> PathBuf {
    vm.dir.join("api.sock")
}

/// The `ampoule-vmm` arguments for `vm`, its serial log bounded to
/// `serial_log_max` bytes.
pub fn vmm_argv(vm: &VmConfig, serial_log_max: u64) -> Vec<OsString> {
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
        "--serial-log-max-bytes".into(),
        serial_log_max.to_string().into(),
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
    for net in &vm.nets {
        a.push("--net".into());
        a.push(format!("fd={},mac={}", net.tap_fd, net.mac).into());
    }
    if vm.shared_fs.is_some() {
        let mut spec = OsString::from(format!("tag={},socket=", ampoule_agent_api::SHARED_FS_TAG));
        spec.push(crate::pod::share_fs::virtiofsd::socket_path(&vm.dir));
        a.push("--fs".into());
        a.push(spec);
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
        // Declared before the group: on an early return the group is
        // dropped (its processes told to die) before the jail's cgroup goes.
        let jail = SandboxJail::for_vm(vm)?;
        let mut group = ProcessGroup::new();
        // The VMM connects to virtiofsd's socket as it starts.
        crate::pod::share_fs::virtiofsd::spawn(&mut group, vm, jail.as_ref())?;
        let mut cmd =
            SandboxJail::command(jail.as_ref(), JailedProcess::AmpouleVmm, vm, &self.binary)?;
        let mut argv = vmm_argv(vm, self.serial_log_max);
        let mut inherited: Vec<RawFd> = vm.nets.iter().map(|n| n.tap_fd).collect();
        // A jailed VMM runs as a uid that may not open /dev/kvm (0600 root
        // on many hosts), and the device is not in its jail: it is handed
        // an open descriptor, closed here once the VMM has its copy.
        let kvm = match &jail {
            Some(_) => Some(open_kvm()?),
            None => None,
        };
        if let Some(kvm) = &kvm {
            argv.push("--kvm-fd".into());
            argv.push(kvm.as_raw_fd().to_string().into());
            inherited.push(kvm.as_raw_fd());
        }
        tracing::debug!(vmm = %self.binary.display(), args = ?argv, jailed = jail.is_some(), "starting ampoule-vmm");
        cmd.args(argv);
        super::inherit_fds(&mut cmd, inherited);
        let spawned = group.spawn(VM_PROCESS, cmd, &vm.process_log("ampoule-vmm"));
        drop(kvm);
        spawned?;
        if let Some(j) = jail {
            group.hold(j);
        }
        Ok(group)
    }
}

/// Opens /dev/kvm for a jailed VMM (close-on-exec: only the descriptor
/// made inheritable in the child crosses the exec).
fn open_kvm() -> Result<std::fs::File, HypervisorError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| HypervisorError::Invalid(format!("cannot open /dev/kvm for the VMM: {e}")))
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
            jail: None,
            shared_fs: None,
            nets: Vec::new(),
        };
        let a: Vec<String> = vmm_argv(&vm, 4096)
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
                "--serial-log-max-bytes",
                "4096",
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

    #[test]
    fn a_shared_directory_becomes_a_virtio_fs_device_on_virtiofsds_socket() {
        let vm = VmConfig {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            drives: vec![],
            drive_slots: vec![],
            dir: "/run/s".into(),
            vsock_uds: "/run/s/vsock.sock".into(),
            serial_log: "/run/s/serial.log".into(),
            accel: Accel::Kvm,
            jail: None,
            shared_fs: Some(crate::hypervisor::SharedFs {
                dir: "/run/.shared/s".into(),
                virtiofsd: "/usr/local/bin/virtiofsd".into(),
            }),
            nets: Vec::new(),
        };
        let a: Vec<String> = vmm_argv(&vm, 4096)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let at = a.iter().position(|x| x == "--fs").expect("--fs");
        assert_eq!(a[at + 1], "tag=ampoule,socket=/run/s/virtiofs.sock");
    }
}
