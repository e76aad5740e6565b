//! What this host offers (KVM and its kind, binaries, guest image) and which
//! backend runs a sandbox here.
//!
//! [`HostFacts::probe`] reads the host; [`choose_backend`] is a pure decision
//! over those facts, so every branch is unit-tested without a VM.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{AccelOverride, Config, HypervisorKind};

/// Errors when no backend can run a sandbox on this host.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HostError {
    #[error("hypervisor {backend} is not available: {reason}")]
    NotAvailable {
        backend: &'static str,
        reason: String,
    },
}

/// The kind of `/dev/kvm` this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmKind {
    /// No `/dev/kvm`.
    Absent,
    /// `/dev/kvm` exists but cannot be opened read-write.
    NoAccess,
    /// Hardware virtualisation (VT-x / AMD-V, bare metal or nested).
    Hardware,
    /// PVM (`kvm_pvm`): runs only guest kernels built as PVM guests.
    Pvm,
}

impl KvmKind {
    /// Human-readable name.
    pub fn describe(self) -> &'static str {
        match self {
            KvmKind::Absent => "no /dev/kvm",
            KvmKind::NoAccess => "/dev/kvm present but not accessible",
            KvmKind::Hardware => "hardware virtualisation (VT-x/AMD-V)",
            KvmKind::Pvm => "PVM (kvm_pvm: only PVM guest kernels run on it)",
        }
    }
}

/// Facts about the host that decide the backend. Plain data: tests build it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    pub kvm: KvmKind,
    /// Why /dev/kvm cannot be used, when `kvm` is `NoAccess`.
    pub kvm_error: Option<String>,
    /// Resolved `qemu-system-x86_64`, if found.
    pub qemu: Option<PathBuf>,
    /// Resolved `vhost-device-vsock`, if found.
    pub vhost_device_vsock: Option<PathBuf>,
    /// Resolved `ampoule-vmm`, if found.
    pub ampoule_vmm: Option<PathBuf>,
    /// Resolved `virtiofsd`, if found.
    pub virtiofsd: Option<PathBuf>,
    /// The guest kernel file is readable.
    pub kernel_found: bool,
    /// The guest initrd file is readable.
    pub initrd_found: bool,
    /// `uname -r` of the host.
    pub host_kernel: String,
}

/// A backend to run: `ampoule` (our VMM) or `qemu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Ampoule,
    Qemu,
}

impl Backend {
    /// The backend's name as used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Ampoule => "ampoule",
            Backend::Qemu => "qemu",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM (hardware or PVM).
    Kvm,
    /// QEMU's software emulation (still a separate guest kernel).
    Tcg,
}

impl Accel {
    /// The accelerator's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The chosen backend and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendChoice {
    pub backend: Backend,
    pub accel: Accel,
    pub reason: String,
}

impl HostFacts {
    /// Reads the host: /dev/kvm and its kind, binaries in `PATH`, guest image.
    pub fn probe(config: &Config) -> Self {
        let (kvm, kvm_error) = probe_kvm(Path::new("/dev/kvm"), Path::new("/sys/module/kvm_pvm"));
        let host_kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        HostFacts {
            kvm,
            kvm_error,
            qemu: resolve_binary(&config.qemu),
            vhost_device_vsock: resolve_binary(&config.vhost_device_vsock),
            ampoule_vmm: resolve_binary(&config.ampoule_vmm),
            virtiofsd: resolve_binary(&config.virtiofsd),
            kernel_found: is_readable_file(&config.kernel),
            initrd_found: is_readable_file(&config.initrd),
            host_kernel,
        }
    }
}

fn probe_kvm(dev: &Path, pvm_module: &Path) -> (KvmKind, Option<String>) {
    if !dev.exists() {
        return (KvmKind::Absent, None);
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return (
            KvmKind::NoAccess,
            Some(format!("cannot open {}: {e}", dev.display())),
        );
    }
    if pvm_module.exists() {
        (KvmKind::Pvm, None)
    } else {
        (KvmKind::Hardware, None)
    }
}

fn is_readable_file(p: &Path) -> bool {
    std::fs::File::open(p)
        .and_then(|f| f.metadata())
        .map(|m| m.is_file())
        .unwrap_or(false)
}

/// Resolves a binary: a path with a `/` is taken as is, a bare name is looked
/// up in `PATH`. Returns it only if it is an executable file.
pub fn resolve_binary(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.as_os_str().is_empty() {
        return None;
    }
    if name.components().count() > 1 || name.is_absolute() {
        return executable(name).then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// Picks the backend for `requested` on a host described by `facts`.
///
/// Never picks something that does not isolate: every choice is a separate
/// guest kernel (KVM or TCG), and a missing requirement is an error that says
/// what is missing.
pub fn choose_backend(
    requested: HypervisorKind,
    config: &Config,
    facts: &HostFacts,
) -> Result<BackendChoice, HostError> {
    match requested {
        HypervisorKind::Ampoule => {
            choose_ampoule(config, facts, "configured hypervisor = \"ampoule\"")
        }
        HypervisorKind::Qemu => choose_qemu(config, facts, "configured hypervisor = \"qemu\""),
        HypervisorKind::Auto => match facts.kvm {
            KvmKind::Hardware if facts.ampoule_vmm.is_some() => choose_ampoule(
                config,
                facts,
                "auto: /dev/kvm is hardware virtualisation, ampoule-vmm found",
            ),
            KvmKind::Hardware => choose_qemu(
                config,
                facts,
                "auto: /dev/kvm is hardware virtualisation but ampoule-vmm was not found",
            ),
            KvmKind::Pvm if config.pvm_kernel && facts.ampoule_vmm.is_some() => choose_ampoule(
                config,
                facts,
                "auto: PVM host (kvm_pvm) and the configured guest kernel is a PVM guest",
            ),
            KvmKind::Pvm => choose_qemu(
                config,
                facts,
                if config.pvm_kernel {
                    "auto: PVM host with a PVM guest kernel, but ampoule-vmm was not found"
                } else {
                    "auto: PVM host (kvm_pvm) and no PVM guest kernel configured (pvm_kernel = false): \
                     a standard guest kernel cannot boot on PVM"
                },
            ),
            KvmKind::NoAccess => choose_qemu(
                config,
                facts,
                &format!(
                    "auto: {}",
                    facts
                        .kvm_error
                        .as_deref()
                        .unwrap_or("/dev/kvm is not accessible")
                ),
            ),
            KvmKind::Absent => choose_qemu(config, facts, "auto: no /dev/kvm on this host"),
        },
    }
}

fn kvm_runs_guest(config: &Config, facts: &HostFacts) -> bool {
    match facts.kvm {
        KvmKind::Hardware => true,
        KvmKind::Pvm => config.pvm_kernel,
        KvmKind::Absent | KvmKind::NoAccess => false,
    }
}

fn choose_ampoule(
    config: &Config,
    facts: &HostFacts,
    why: &str,
) -> Result<BackendChoice, HostError> {
    let na = |reason: String| HostError::NotAvailable {
        backend: "ampoule",
        reason,
    };
    if facts.ampoule_vmm.is_none() {
        return Err(na(format!(
            "{} not found (set ampoule_vmm in the config or install it in PATH)",
            config.ampoule_vmm.display()
        )));
    }
    match facts.kvm {
        KvmKind::Hardware => {}
        KvmKind::Pvm if config.pvm_kernel => {}
        KvmKind::Pvm => {
            return Err(na(
                "this is a PVM host (kvm_pvm) and the guest kernel is not a PVM guest \
                 (pvm_kernel = false); use hypervisor = \"qemu\" or a PVM guest kernel"
                    .into(),
            ))
        }
        KvmKind::NoAccess => {
            return Err(na(facts
                .kvm_error
                .clone()
                .unwrap_or_else(|| "/dev/kvm is not accessible".into())))
        }
        KvmKind::Absent => return Err(na("no /dev/kvm on this host".into())),
    }
    Ok(BackendChoice {
        backend: Backend::Ampoule,
        accel: Accel::Kvm,
        reason: why.to_string(),
    })
}

fn choose_qemu(config: &Config, facts: &HostFacts, why: &str) -> Result<BackendChoice, HostError> {
    let na = |reason: String| HostError::NotAvailable {
        backend: "qemu",
        reason,
    };
    if facts.qemu.is_none() {
        return Err(na(format!(
            "{} not found (apt-get install qemu-system-x86, or set qemu in the config)",
            config.qemu.display()
        )));
    }
    if facts.vhost_device_vsock.is_none() {
        return Err(na(format!(
            "{} not found (cargo install vhost-device-vsock, or set vhost_device_vsock in the config)",
            config.vhost_device_vsock.display()
        )));
    }
    let (accel, accel_why) = match config.qemu_accel {
        Some(AccelOverride::Tcg) => (
            Accel::Tcg,
            "TCG as configured (qemu_accel = \"tcg\")".to_string(),
        ),
        Some(AccelOverride::Kvm) => {
            if matches!(facts.kvm, KvmKind::Absent | KvmKind::NoAccess) {
                return Err(na(format!(
                    "qemu_accel = \"kvm\" but {}",
                    facts.kvm_error.as_deref().unwrap_or(facts.kvm.describe())
                )));
            }
            (
                Accel::Kvm,
                "KVM as configured (qemu_accel = \"kvm\")".to_string(),
            )
        }
        None if kvm_runs_guest(config, facts) => {
            (Accel::Kvm, "KVM runs this guest kernel".to_string())
        }
        None => (
            Accel::Tcg,
            format!(
                "TCG because KVM cannot run this guest kernel ({})",
                facts.kvm.describe()
            ),
        ),
    };
    Ok(BackendChoice {
        backend: Backend::Qemu,
        accel,
        reason: format!("{why}; {accel_why}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kvm: KvmKind) -> HostFacts {
        HostFacts {
            kvm,
            kvm_error: None,
            qemu: Some("/usr/bin/qemu-system-x86_64".into()),
            vhost_device_vsock: Some("/usr/local/bin/vhost-device-vsock".into()),
            ampoule_vmm: Some("/usr/local/bin/ampoule-vmm".into()),
            virtiofsd: Some("/usr/local/bin/virtiofsd".into()),
            kernel_found: true,
            initrd_found: true,
            host_kernel: "6.1.0-host".into(),
        }
    }

    fn auto(config: &Config, f: &HostFacts) -> Result<BackendChoice, HostError> {
        choose_backend(HypervisorKind::Auto, config, f)
    }

    #[test]
    fn auto_on_hardware_kvm_picks_ampoule() {
        let c = auto(&Config::default(), &facts(KvmKind::Hardware)).expect("choice");
        assert_eq!((c.backend, c.accel), (Backend::Ampoule, Accel::Kvm));
        assert!(c.reason.contains("hardware"), "{}", c.reason);
    }

    #[test]
    fn auto_on_hardware_kvm_without_vmm_uses_qemu_with_kvm() {
        let mut f = facts(KvmKind::Hardware);
        f.ampoule_vmm = None;
        let c = auto(&Config::default(), &f).expect("choice");
        assert_eq!((c.backend, c.accel), (Backend::Qemu, Accel::Kvm));
        assert!(
            c.reason.contains("ampoule-vmm was not found"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn auto_on_pvm_without_pvm_kernel_picks_qemu_tcg() {
        let c = auto(&Config::default(), &facts(KvmKind::Pvm)).expect("choice");
        assert_eq!((c.backend, c.accel), (Backend::Qemu, Accel::Tcg));
        assert!(c.reason.contains("PVM"), "{}", c.reason);
    }

    #[test]
    fn auto_on_pvm_with_pvm_kernel_picks_ampoule() {
        let config = Config {
            pvm_kernel: true,
            ..Config::default()
        };
        let c = auto(&config, &facts(KvmKind::Pvm)).expect("choice");
        assert_eq!((c.backend, c.accel), (Backend::Ampoule, Accel::Kvm));
    }

    #[test]
    fn auto_without_kvm_picks_qemu_tcg() {
        let c = auto(&Config::default(), &facts(KvmKind::Absent)).expect("choice");
        assert_eq!((c.backend, c.accel), (Backend::Qemu, Accel::Tcg));
        assert!(c.reason.contains("no /dev/kvm"), "{}", c.reason);
    }

    #[test]
    fn auto_with_inaccessible_kvm_says_why() {
        let mut f = facts(KvmKind::NoAccess);
        f.kvm_error = Some("cannot open /dev/kvm: Permission denied".into());
        let c = auto(&Config::default(), &f).expect("choice");
        assert_eq!((c.backend, c.accel), (Backend::Qemu, Accel::Tcg));
        assert!(c.reason.contains("Permission denied"), "{}", c.reason);
    }

    #[test]
    fn auto_without_qemu_or_vhost_is_an_error_not_a_fallback() {
        let mut f = facts(KvmKind::Pvm);
        f.qemu = None;
        let e = auto(&Config::default(), &f).unwrap_err().to_string();
        assert!(e.contains("qemu") && e.contains("not found"), "{e}");
        let mut f = facts(KvmKind::Absent);
        f.vhost_device_vsock = None;
        let e = auto(&Config::default(), &f).unwrap_err().to_string();
        assert!(e.contains("vhost-device-vsock"), "{e}");
    }

    #[test]
    fn explicit_ampoule_without_binary_is_not_available() {
        let mut f = facts(KvmKind::Hardware);
        f.ampoule_vmm = None;
        let e = choose_backend(HypervisorKind::Ampoule, &Config::default(), &f).unwrap_err();
        assert!(matches!(
            e,
            HostError::NotAvailable {
                backend: "ampoule",
                ..
            }
        ));
        assert!(e.to_string().contains("not available"), "{e}");
    }

    #[test]
    fn explicit_ampoule_on_pvm_with_standard_kernel_is_refused() {
        let e = choose_backend(
            HypervisorKind::Ampoule,
            &Config::default(),
            &facts(KvmKind::Pvm),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("PVM"), "{e}");
    }

    #[test]
    fn explicit_ampoule_without_kvm_is_refused() {
        let e = choose_backend(
            HypervisorKind::Ampoule,
            &Config::default(),
            &facts(KvmKind::Absent),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no /dev/kvm"), "{e}");
    }

    #[test]
    fn explicit_qemu_uses_kvm_on_hardware_and_tcg_on_pvm() {
        let c = choose_backend(
            HypervisorKind::Qemu,
            &Config::default(),
            &facts(KvmKind::Hardware),
        )
        .expect("choice");
        assert_eq!((c.backend, c.accel), (Backend::Qemu, Accel::Kvm));
        let c = choose_backend(
            HypervisorKind::Qemu,
            &Config::default(),
            &facts(KvmKind::Pvm),
        )
        .expect("choice");
        assert_eq!((c.backend, c.accel), (Backend::Qemu, Accel::Tcg));
    }

    #[test]
    fn accel_override_is_honoured_and_checked() {
        let config = Config {
            qemu_accel: Some(AccelOverride::Tcg),
            ..Config::default()
        };
        let c = choose_backend(HypervisorKind::Qemu, &config, &facts(KvmKind::Hardware))
            .expect("choice");
        assert_eq!(c.accel, Accel::Tcg);
        let config = Config {
            qemu_accel: Some(AccelOverride::Kvm),
            ..Config::default()
        };
        let e = choose_backend(HypervisorKind::Qemu, &config, &facts(KvmKind::Absent)).unwrap_err();
        assert!(e.to_string().contains("qemu_accel"), "{e}");
    }

    #[test]
    fn probe_kvm_reads_the_given_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("kvm");
        let pvm = dir.path().join("kvm_pvm");
        assert_eq!(probe_kvm(&dev, &pvm).0, KvmKind::Absent);
        std::fs::write(&dev, b"").expect("write");
        assert_eq!(probe_kvm(&dev, &pvm).0, KvmKind::Hardware);
        std::fs::create_dir(&pvm).expect("mkdir");
        assert_eq!(probe_kvm(&dev, &pvm).0, KvmKind::Pvm);
    }

    #[test]
    fn resolve_binary_finds_sh_and_rejects_missing() {
        assert!(resolve_binary(Path::new("sh")).is_some());
        assert!(resolve_binary(Path::new("/nonexistent/qemu")).is_none());
        assert!(resolve_binary(Path::new("definitely-not-a-binary-ampoule")).is_none());
    }
}
