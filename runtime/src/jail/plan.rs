//! What a jailed process gets: its uid, its mounts, its rlimits. Pure
//! decisions (no syscalls), so unit tests can check them without spawning.

use std::path::{Path, PathBuf};

use crate::host::Accel;
use crate::hypervisor::VmConfig;

/// Which host process is being jailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailedProcess {
    Qemu,
    VhostVsock,
    AmpouleVmm,
}

impl JailedProcess {
    /// Short name (names the jail's root directory).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
            Self::VhostVsock => "vhost-device-vsock",
            Self::AmpouleVmm => "ampoule-vmm",
        }
    }
}

/// What a bind mount exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only, programs may run from it (the binary and its libraries).
    ReadExec,
    /// Read-only data (kernel, initrd, read-only drives).
    Read,
    /// Read-write data, no programs (the sandbox directory, writable drives).
    ReadWrite,
    /// A device node (`/dev/null`, `/dev/kvm`): no programs, no suid.
    Device,
}

/// One host path made visible inside the jail, at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub path: PathBuf,
    pub access: Access,
    pub is_dir: bool,
}

/// A symbolic link recreated inside the jail (`/lib -> usr/lib`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symlink {
    pub path: PathBuf,
    pub target: PathBuf,
}

/// A resource limit set before exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// `libc::RLIMIT_*`.
    pub resource: libc::__rlimit_resource_t,
    pub name: &'static str,
    pub value: u64,
}

/// Everything the child does between fork and exec, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPlan {
    pub process: JailedProcess,
    pub uid: u32,
    pub gid: u32,
    /// Empty host directory the child mounts its private tmpfs root on.
    pub root: PathBuf,
    /// In mount order: directories before what lies beneath them.
    pub binds: Vec<Bind>,
    pub symlinks: Vec<Symlink>,
    pub rlimits: Vec<Rlimit>,
    /// `cgroup.procs` of the sandbox's memory cgroup, joined before exec.
    pub cgroup_procs: Option<PathBuf>,
}

/// Limits shared by every jailed process of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_FSIZE floor, bytes (the process log).
    pub fsize: u64,
}

/// Top-level host paths that on a merged-/usr system are links into `/usr`
/// and that the dynamic loader and libraries are found through.
const USR_LINKS: [&str; 5] = ["/lib", "/lib64", "/lib32", "/bin", "/sbin"];
/// Files the dynamic loader reads outside `/usr`.
const LOADER_FILES: [&str; 1] = ["/etc/ld.so.cache"];
/// Devices every jailed process may open.
const DEVICES: [&str; 3] = ["/dev/null", "/dev/zero", "/dev/urandom"];

/// How a top-level path looks on the host (a seam for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEntry {
    Missing,
    Dir,
    File,
    Link(PathBuf),
}

/// Reads `path`'s kind on this host.
pub fn host_entry(path: &Path) -> HostEntry {
    match std::fs::symlink_metadata(path) {
        Err(_) => HostEntry::Missing,
        Ok(m) if m.file_type().is_symlink() => std::fs::read_link(path)
            .map(HostEntry::Link)
            .unwrap_or(HostEntry::Missing),
        Ok(m) if m.is_dir() => HostEntry::Dir,
        Ok(_) => HostEntry::File,
    }
}

/// Inputs of [`plan`] that are not in the [`VmConfig`].
pub struct PlanInput<'a> {
    pub process: JailedProcess,
    pub binary: &'a Path,
    pub uid: u32,
    pub gid: u32,
    pub limits: Limits,
    pub cgroup_procs: Option<PathBuf>,
    /// Size of each writable drive, bytes (RLIMIT_FSIZE must let the VMM
    /// write anywhere inside them).
    pub writable_drive_bytes: &'a [u64],
}

/// The jail of `input.process` for `vm`. `entry` tells how a top-level host
/// path looks ([`host_entry`] in production).
pub fn plan(vm: &VmConfig, input: &PlanInput, entry: impl Fn(&Path) -> HostEntry) -> JailPlan {
    let mut binds: Vec<Bind> = Vec::new();
    let mut symlinks = Vec::new();
    let add = |binds: &mut Vec<Bind>, path: &Path, access: Access, is_dir: bool| {
        if !binds.iter().any(|b| b.path == path) {
            binds.push(Bind {
                path: path.to_path_buf(),
                access,
                is_dir,
            });
        }
    };
    // The binary's libraries: /usr read-only (Debian's merged /usr holds
    // every library and QEMU's firmware and modules).
    add(&mut binds, Path::new("/usr"), Access::ReadExec, true);
    for p in USR_LINKS {
        match entry(Path::new(p)) {
            HostEntry::Link(target) => symlinks.push(Symlink {
                path: p.into(),
                target,
            }),
            HostEntry::Dir => add(&mut binds, Path::new(p), Access::ReadExec, true),
            HostEntry::File | HostEntry::Missing => {}
        }
    }
    for p in LOADER_FILES {
        if entry(Path::new(p)) == HostEntry::File {
            add(&mut binds, Path::new(p), Access::Read, false);
        }
    }
    if !under_bound_dir(&binds, input.binary) {
        add(&mut binds, input.binary, Access::ReadExec, false);
    }
    for d in DEVICES {
        add(&mut binds, Path::new(d), Access::Device, false);
    }
    // Sockets, serial log: the sandbox directory, read-write.
    add(&mut binds, &vm.dir, Access::ReadWrite, true);
    let mut fsize = input.limits.fsize;
    match input.process {
        JailedProcess::Qemu | JailedProcess::AmpouleVmm => {
            // ampoule-vmm is handed an open descriptor of /dev/kvm
            // (`--kvm-fd`): the device (root-only on many hosts) is not in
            // its jail.
            if vm.accel == Accel::Kvm && input.process == JailedProcess::Qemu {
                add(&mut binds, Path::new("/dev/kvm"), Access::Device, false);
            }
            add(&mut binds, &vm.kernel, Access::Read, false);
            add(&mut binds, &vm.initrd, Access::Read, false);
            for d in &vm.drives {
                let access = if d.read_only {
                    Access::Read
                } else {
                    Access::ReadWrite
                };
                add(&mut binds, &d.path, access, false);
            }
            for b in input.writable_drive_bytes {
                fsize = fsize.max(*b);
            }
        }
        JailedProcess::VhostVsock => {}
    }
    // Directories first, shortest first: a file bound under a bound
    // directory needs that directory in place.
    binds.sort_by_key(|b| (!b.is_dir, b.path.components().count()));
    JailPlan {
        process: input.process,
        uid: input.uid,
        gid: input.gid,
        root: jail_root(vm, input.process),
        binds,
        symlinks,
        rlimits: vec![
            Rlimit {
                resource: libc::RLIMIT_NOFILE,
                name: "RLIMIT_NOFILE",
                value: input.limits.nofile,
            },
            Rlimit {
                resource: libc::RLIMIT_FSIZE,
                name: "RLIMIT_FSIZE",
                value: fsize,
            },
            // A core dump would write guest memory to the host's disk.
            Rlimit {
                resource: libc::RLIMIT_CORE,
                name: "RLIMIT_CORE",
                value: 0,
            },
        ],
        cgroup_procs: input.cgroup_procs.clone(),
    }
}

/// The empty host directory under the sandbox directory that the child
/// mounts its root tmpfs on (the tmpfs exists only in its mount namespace).
pub fn jail_root(vm: &VmConfig, process: JailedProcess) -> PathBuf {
    vm.dir.join("jail").join(process.as_str())
}

/// True when a directory bind already covers `path`.
pub fn under_bound_dir(binds: &[Bind], path: &Path) -> bool {
    binds.iter().any(|b| b.is_dir && path.starts_with(&b.path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::Drive;

    fn vm(accel: Accel) -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: "/usr/local/share/ampoule/initrd.img".into(),
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 256,
            drives: vec![
                Drive {
                    id: "r".into(),
                    path: "/cache/r.img".into(),
                    read_only: true,
                },
                Drive {
                    id: "w".into(),
                    path: "/cache/w.img".into(),
                    read_only: false,
                },
            ],
            drive_slots: vec![],
            dir: "/run/ampoule/vm/s1".into(),
            vsock_uds: "/run/ampoule/vm/s1/vsock.sock".into(),
            serial_log: "/run/ampoule/vm/s1/serial.log".into(),
            accel,
            jail: None,
            shared_fs: None,
            nets: Vec::new(),
        }
    }

    fn merged_usr(p: &Path) -> HostEntry {
        match p.to_str() {
            Some("/lib") => HostEntry::Link("usr/lib".into()),
            Some("/lib64") => HostEntry::Link("usr/lib64".into()),
            Some("/bin") => HostEntry::Link("usr/bin".into()),
            Some("/sbin") => HostEntry::Link("usr/sbin".into()),
            Some("/etc/ld.so.cache") => HostEntry::File,
            _ => HostEntry::Missing,
        }
    }

    fn input(process: JailedProcess, binary: &Path) -> PlanInput<'_> {
        PlanInput {
            process,
            binary,
            uid: 400_007,
            gid: 400_007,
            limits: Limits {
                nofile: 4096,
                fsize: 1 << 30,
            },
            cgroup_procs: Some("/sys/fs/cgroup/memory/ampoule/s1/cgroup.procs".into()),
            writable_drive_bytes: &[],
        }
    }

    fn find<'a>(p: &'a JailPlan, path: &str) -> Option<&'a Bind> {
        p.binds.iter().find(|b| b.path == Path::new(path))
    }

    #[test]
    fn qemu_sees_its_files_devices_and_sandbox_dir_only() {
        let p = plan(
            &vm(Accel::Tcg),
            &input(
                JailedProcess::Qemu,
                Path::new("/usr/bin/qemu-system-x86_64"),
            ),
            merged_usr,
        );
        let paths: Vec<&str> = p.binds.iter().filter_map(|b| b.path.to_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr",
                "/run/ampoule/vm/s1",
                "/etc/ld.so.cache",
                "/dev/null",
                "/dev/zero",
                "/dev/urandom",
                "/k/vmlinux",
                "/cache/r.img",
                "/cache/w.img",
                "/usr/local/share/ampoule/initrd.img",
            ]
        );
        assert_eq!(find(&p, "/usr").map(|b| b.access), Some(Access::ReadExec));
        assert_eq!(
            find(&p, "/run/ampoule/vm/s1").map(|b| b.access),
            Some(Access::ReadWrite)
        );
        assert_eq!(find(&p, "/k/vmlinux").map(|b| b.access), Some(Access::Read));
        assert_eq!(
            find(&p, "/cache/r.img").map(|b| b.access),
            Some(Access::Read)
        );
        assert_eq!(
            find(&p, "/cache/w.img").map(|b| b.access),
            Some(Access::ReadWrite)
        );
        assert!(find(&p, "/dev/kvm").is_none(), "TCG needs no /dev/kvm");
        assert_eq!(
            p.symlinks
                .iter()
                .map(|s| (s.path.to_str(), s.target.to_str()))
                .collect::<Vec<_>>(),
            [
                (Some("/lib"), Some("usr/lib")),
                (Some("/lib64"), Some("usr/lib64")),
                (Some("/bin"), Some("usr/bin")),
                (Some("/sbin"), Some("usr/sbin")),
            ]
        );
        assert_eq!(p.root, Path::new("/run/ampoule/vm/s1/jail/qemu"));
        assert_eq!((p.uid, p.gid), (400_007, 400_007));
    }

    #[test]
    fn kvm_accel_adds_dev_kvm_as_a_device() {
        let p = plan(
            &vm(Accel::Kvm),
            &input(
                JailedProcess::Qemu,
                Path::new("/usr/bin/qemu-system-x86_64"),
            ),
            merged_usr,
        );
        assert_eq!(find(&p, "/dev/kvm").map(|b| b.access), Some(Access::Device));
    }

    #[test]
    fn ampoule_vmm_sees_its_guest_files_but_not_dev_kvm_whose_descriptor_it_is_given() {
        let p = plan(
            &vm(Accel::Kvm),
            &input(
                JailedProcess::AmpouleVmm,
                Path::new("/usr/local/bin/ampoule-vmm"),
            ),
            merged_usr,
        );
        assert!(find(&p, "/dev/kvm").is_none());
        assert_eq!(find(&p, "/k/vmlinux").map(|b| b.access), Some(Access::Read));
        assert_eq!(
            find(&p, "/usr/local/bin/ampoule-vmm").map(|b| b.access),
            None,
            "under /usr, which is bound read-exec"
        );
    }

    #[test]
    fn vhost_device_vsock_gets_no_guest_image_or_drive() {
        let p = plan(
            &vm(Accel::Kvm),
            &input(
                JailedProcess::VhostVsock,
                Path::new("/opt/bin/vhost-device-vsock"),
            ),
            merged_usr,
        );
        for hidden in ["/k/vmlinux", "/cache/r.img", "/cache/w.img", "/dev/kvm"] {
            assert!(find(&p, hidden).is_none(), "{hidden} visible");
        }
        assert_eq!(
            find(&p, "/opt/bin/vhost-device-vsock").map(|b| b.access),
            Some(Access::ReadExec),
            "a binary outside /usr is bound on its own"
        );
        assert_eq!(
            p.root,
            Path::new("/run/ampoule/vm/s1/jail/vhost-device-vsock")
        );
    }

    #[test]
    fn rlimits_bound_files_and_fsize_covers_writable_drives() {
        let mut i = input(JailedProcess::Qemu, Path::new("/usr/bin/qemu"));
        let sizes = [3u64 << 30];
        i.writable_drive_bytes = &sizes;
        let p = plan(&vm(Accel::Tcg), &i, merged_usr);
        let get = |n: &str| p.rlimits.iter().find(|r| r.name == n).map(|r| r.value);
        assert_eq!(get("RLIMIT_NOFILE"), Some(4096));
        assert_eq!(get("RLIMIT_FSIZE"), Some(3 << 30));
        assert_eq!(get("RLIMIT_CORE"), Some(0));
        let p = plan(
            &vm(Accel::Tcg),
            &input(JailedProcess::VhostVsock, Path::new("/usr/bin/v")),
            merged_usr,
        );
        let get = |n: &str| p.rlimits.iter().find(|r| r.name == n).map(|r| r.value);
        assert_eq!(get("RLIMIT_FSIZE"), Some(1 << 30));
    }

    #[test]
    fn a_real_lib_directory_is_bound_instead_of_linked() {
        let p = plan(
            &vm(Accel::Tcg),
            &input(JailedProcess::VhostVsock, Path::new("/usr/bin/v")),
            |p: &Path| {
                if p == Path::new("/lib") {
                    HostEntry::Dir
                } else {
                    HostEntry::Missing
                }
            },
        );
        assert_eq!(find(&p, "/lib").map(|b| b.access), Some(Access::ReadExec));
        assert!(p.symlinks.is_empty());
        assert!(find(&p, "/etc/ld.so.cache").is_none());
    }
}
