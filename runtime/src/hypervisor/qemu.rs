//! QEMU `microvm` backend, vsock through `vhost-device-vsock`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use std::os::fd::AsRawFd;

use super::{log_block, serial_log, Hypervisor, HypervisorError, VmConfig, VM_PROCESS};
use crate::host::{Accel, Backend};
use crate::jail::plan::JailedProcess;
use crate::jail::{SandboxJail, QEMU_SANDBOX};
use crate::process::ProcessGroup;

/// Name of the vsock device process in the group.
pub const VHOST_PROCESS: &str = "vhost-device-vsock";
/// How long vhost-device-vsock gets to create its vhost-user socket.
const VHOST_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// TCG translation cache, MiB (part of the jail's memory overhead). Only
/// touched pages cost memory: a boot touches about 34 MiB, and
/// benches/rootfs_sharing.py measured the same start time and memory at 64
/// as at 128, and slower starts below 34 (translations flushed and redone).
pub const TCG_TB_SIZE_MIB: u32 = 64;

/// The QEMU backend.
pub struct Qemu {
    pub qemu: PathBuf,
    pub vhost_device_vsock: PathBuf,
    /// Most bytes of the guest console kept in `serial_log` (the newest).
    pub serial_log_max: u64,
}

/// QEMU fd set through which the serial chardev gets the write end of the
/// console pipe (`-add-fd`, then `path=/dev/fdset/N`): QEMU writes a pipe
/// that the runtime drains into a bounded file, never a file of its own.
pub const SERIAL_FDSET: u32 = 1;

/// `-add-fd` arguments handing `fd` to QEMU as [`SERIAL_FDSET`].
pub fn serial_fd_argv(fd: std::os::fd::RawFd) -> [String; 2] {
    ["-add-fd".into(), format!("fd={fd},set={SERIAL_FDSET}")]
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
            // tb-size bounds TCG's translation cache (by default the smaller
            // of 1 GiB and host RAM / 8), which the jail's memory cgroup
            // must hold besides guest memory.
            let tcg = if vm.vcpus > 1 {
                format!("tcg,thread=multi,tb-size={TCG_TB_SIZE_MIB}")
            } else {
                format!("tcg,tb-size={TCG_TB_SIZE_MIB}")
            };
            a.extend(["-accel".into(), tcg, "-cpu".into(), "max".into()]);
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
        // append=on: without it QEMU truncates the fd, and ftruncate(2) of a
        // pipe fails (EINVAL).
        format!("file,id=ser0,path=/dev/fdset/{SERIAL_FDSET},append=on"),
        "-serial".into(),
        "chardev:ser0".into(),
        "-chardev".into(),
        format!("socket,id=vs,path={}", opt_value(&vhost_socket(vm))),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vs".into(),
    ]);
    if vm.shared_fs.is_some() {
        let sock = crate::pod::share_fs::virtiofsd::socket_path(&vm.dir);
        a.extend([
            "-chardev".into(),
            format!("socket,id=fs0,path={}", opt_value(&sock)),
            "-device".into(),
            format!(
                "vhost-user-fs-device,chardev=fs0,tag={}",
                ampoule_agent_api::SHARED_FS_TAG
            ),
        ]);
    }
    for (n, net) in vm.nets.iter().enumerate() {
        a.extend([
            "-netdev".into(),
            format!("tap,id=net{n},fd={},vhost=off", net.tap_fd),
            "-device".into(),
            format!("virtio-net-device,netdev=net{n},mac={}", net.mac),
        ]);
    }
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
        // Declared before the group: on an early return the group is
        // dropped (its processes told to die) before the jail's cgroup goes.
        let jail = SandboxJail::for_vm(vm)?;
        let mut group = ProcessGroup::new();
        let vhost_log = vm.process_log(VHOST_PROCESS);
        let mut vhost = SandboxJail::command(
            jail.as_ref(),
            JailedProcess::VhostVsock,
            vm,
            &self.vhost_device_vsock,
        )?;
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

        crate::pod::share_fs::virtiofsd::spawn(&mut group, vm, jail.as_ref())?;

        let mut qemu = SandboxJail::command(jail.as_ref(), JailedProcess::Qemu, vm, &self.qemu)?;
        // The console: a pipe drained into a bounded file (see SERIAL_FDSET).
        let (serial_w, serial_drain) =
            serial_log::pipe_to_capped_file(&vm.serial_log, self.serial_log_max).map_err(|e| {
                HypervisorError::Invalid(format!("serial log {}: {e}", vm.serial_log.display()))
            })?;
        let serial_fd = serial_w.as_raw_fd();
        qemu.args(serial_fd_argv(serial_fd));
        let mut inherited: Vec<std::os::fd::RawFd> = vec![serial_fd];
        inherited.extend(vm.nets.iter().map(|n| n.tap_fd));
        super::inherit_fds(&mut qemu, inherited);
        qemu.args(qemu_argv(vm));
        if jail.is_some() {
            qemu.args(QEMU_SANDBOX);
        }
        tracing::debug!(qemu = %self.qemu.display(), args = ?qemu_argv(vm), jailed = jail.is_some(), "starting QEMU");
        let spawned = group.spawn(VM_PROCESS, qemu, &vm.process_log("qemu"));
        // Only QEMU holds the write end now: the drain ends when it exits.
        drop(serial_w);
        spawned?;
        group.hold(serial_drain);
        if let Some(j) = jail {
            group.hold(j);
        }
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
            jail: None,
            shared_fs: None,
            nets: Vec::new(),
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
        assert!(after(&a, "-chardev").contains(&"file,id=ser0,path=/dev/fdset/1,append=on"));
        assert_eq!(serial_fd_argv(9), ["-add-fd", "fd=9,set=1"]);
        assert!(after(&a, "-device").contains(&"vhost-user-vsock-device,chardev=vs"));
    }

    #[test]
    fn a_shared_directory_becomes_a_vhost_user_fs_device_and_none_without_it() {
        let mut v = vm(Accel::Tcg, 1);
        assert!(!argv(&v).iter().any(|x| x.contains("vhost-user-fs")));
        v.shared_fs = Some(crate::hypervisor::SharedFs {
            dir: "/run/.shared/1".into(),
            virtiofsd: "virtiofsd".into(),
        });
        let a = argv(&v);
        assert!(after(&a, "-chardev").contains(&"socket,id=fs0,path=/run/s/1/virtiofs.sock"));
        assert!(after(&a, "-device").contains(&"vhost-user-fs-device,chardev=fs0,tag=ampoule"));
    }

    #[test]
    fn accel_tcg_and_kvm() {
        let a = argv(&vm(Accel::Tcg, 1));
        assert_eq!(after(&a, "-accel"), ["tcg,tb-size=64"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        let a = argv(&vm(Accel::Tcg, 2));
        assert_eq!(after(&a, "-accel"), ["tcg,thread=multi,tb-size=64"]);
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
