//! Runtime configuration: one optional TOML file.
//!
//! The file is `/etc/ampoule/config.toml` unless `--config` or the
//! `AMPOULE_CONFIG` environment variable names another one. Every field has a
//! default, so no file at all is a valid configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ampoule/config.toml";
/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "AMPOULE_CONFIG";

/// Errors while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which hypervisor backend runs the sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    /// `ampoule` on hardware KVM, `qemu` (TCG) on PVM hosts or without KVM.
    #[default]
    Auto,
    /// Ampoule's own VMM, `ampoule-vmm`.
    Ampoule,
    /// QEMU's `microvm` machine with vhost-device-vsock.
    Qemu,
}

impl HypervisorKind {
    /// Parses a hypervisor name as written in the config file.
    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        match name {
            "auto" => Ok(Self::Auto),
            "ampoule" => Ok(Self::Ampoule),
            "qemu" => Ok(Self::Qemu),
            other => Err(ConfigError::Invalid(format!(
                "unknown hypervisor {other:?}: expected \"auto\", \"ampoule\" or \"qemu\""
            ))),
        }
    }

    /// The name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Ampoule => "ampoule",
            Self::Qemu => "qemu",
        }
    }
}

impl std::fmt::Display for HypervisorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How container files reach the guest (see [`Config::rootfs_sharing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootfsSharing {
    #[serde(rename = "virtio-fs")]
    VirtioFs,
    #[serde(rename = "erofs")]
    Erofs,
}

impl RootfsSharing {
    pub fn as_str(self) -> &'static str {
        match self {
            RootfsSharing::VirtioFs => "virtio-fs",
            RootfsSharing::Erofs => "erofs",
        }
    }

    /// Parses a configuration or annotation value.
    pub fn parse(s: &str) -> Option<RootfsSharing> {
        match s {
            "virtio-fs" => Some(RootfsSharing::VirtioFs),
            "erofs" => Some(RootfsSharing::Erofs),
            _ => None,
        }
    }
}

/// QEMU acceleration override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelOverride {
    Kvm,
    Tcg,
}

/// The runtime configuration. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `auto`, `ampoule` or `qemu`.
    pub hypervisor: HypervisorKind,
    /// Guest kernel (uncompressed ELF `vmlinux` with a PVH note).
    pub kernel: PathBuf,
    /// Guest initramfs with the agent as `/init`.
    pub initrd: PathBuf,
    /// The configured kernel is built as a PVM guest (it boots on `kvm_pvm`).
    pub pvm_kernel: bool,
    /// Force QEMU's accelerator instead of choosing it from the host.
    pub qemu_accel: Option<AccelOverride>,
    /// `qemu-system-x86_64` binary (a bare name is looked up in `PATH`).
    pub qemu: PathBuf,
    /// `vhost-device-vsock` binary.
    pub vhost_device_vsock: PathBuf,
    /// `ampoule-vmm` binary.
    pub ampoule_vmm: PathBuf,
    /// `virtiofsd` binary, which serves the pod's shared directory.
    pub virtiofsd: PathBuf,
    /// How container root filesystems and bind mounts reach the guest:
    /// `virtio-fs` (the host's directories, live both ways) or `erofs`
    /// (read-only images on virtio-blk with copies of the bind sources; kept
    /// as a measured alternative, overridable per pod by the annotation
    /// `io.ampoule.rootfs_sharing`).
    pub rootfs_sharing: RootfsSharing,
    /// Default number of vCPUs of a sandbox.
    pub vcpus: u32,
    /// Default guest memory of a sandbox, MiB.
    pub memory_mib: u32,
    /// Extra kernel command line arguments, appended after Ampoule's own.
    pub kernel_params: String,
    /// Time a guest gets to announce its agent, milliseconds.
    pub boot_timeout_ms: u64,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`).
    pub log_level: String,
    /// Directory with one sub-directory per running sandbox (sockets, serial log).
    pub run_dir: PathBuf,
    /// Where the serial log of a sandbox that failed to boot is kept.
    pub log_dir: PathBuf,
    /// Cache of rootfs images built from bundles.
    pub cache_dir: PathBuf,
    /// Most bytes of a guest's serial console kept, on disk and when copied
    /// to `log_dir` or quoted in an error: the newest ones.
    pub serial_log_max_bytes: u64,
    /// Run every VM host process jailed (unprivileged uid, no capabilities,
    /// own mount namespace, rlimits, seccomp, memory cgroup). Needs root.
    pub jail: bool,
    /// First uid (and gid) of the jail's pool: one per running sandbox. The
    /// range must belong to no user and no subordinate-uid range.
    pub jail_uid_base: u32,
    /// Size of the uid pool; 0 runs every sandbox as `nobody` (65534).
    pub jail_uid_count: u32,
    /// RLIMIT_NOFILE of a jailed process.
    pub jail_nofile: u64,
    /// RLIMIT_FSIZE of a jailed process, MiB: the largest file it may write
    /// (its process log); raised to the size of its largest writable drive.
    pub jail_fsize_mib: u64,
    /// Parent of the per-sandbox memory cgroups, inside the memory hierarchy.
    /// The runtime owns it: the first sandbox creates it, the last removes it
    /// (so name no cgroup configured by other means).
    pub jail_cgroup_parent: String,
    /// Memory a sandbox's processes may use beyond the guest's, MiB.
    pub jail_memory_overhead_mib: u32,
    /// For tests only: system calls removed from vhost-device-vsock's
    /// seccomp allowlist (proves that a call outside it kills the process).
    pub jail_vsock_seccomp_deny: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hypervisor: HypervisorKind::Auto,
            kernel: PathBuf::from("/usr/local/share/ampoule/vmlinux"),
            initrd: PathBuf::from("/usr/local/share/ampoule/initrd.img"),
            pvm_kernel: false,
            qemu_accel: None,
            qemu: PathBuf::from("qemu-system-x86_64"),
            vhost_device_vsock: PathBuf::from("vhost-device-vsock"),
            ampoule_vmm: PathBuf::from("ampoule-vmm"),
            virtiofsd: PathBuf::from("virtiofsd"),
            rootfs_sharing: RootfsSharing::VirtioFs,
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            boot_timeout_ms: 20_000,
            log_level: "info".to_string(),
            run_dir: PathBuf::from("/run/ampoule/vm"),
            log_dir: PathBuf::from("/var/log/ampoule"),
            cache_dir: PathBuf::from("/var/cache/ampoule/rootfs"),
            serial_log_max_bytes: DEFAULT_SERIAL_LOG_MAX_BYTES,
            jail: true,
            jail_uid_base: DEFAULT_JAIL_UID_BASE,
            jail_uid_count: 4096,
            jail_nofile: 4096,
            jail_fsize_mib: 1024,
            jail_cgroup_parent: "/ampoule".to_string(),
            jail_memory_overhead_mib: DEFAULT_JAIL_MEMORY_OVERHEAD_MIB,
            jail_vsock_seccomp_deny: Vec::new(),
        }
    }
}

/// First uid of the jail's pool: above Debian's dynamic and system ranges
/// and the usual `/etc/subuid` allocations (100000 + 65536 per user).
pub const DEFAULT_JAIL_UID_BASE: u32 = 900_000_000;
/// Memory of a sandbox's host processes beyond guest memory, MiB (QEMU TCG's
/// translation cache and heap, vhost-device-vsock), from the peak usage
/// measured in the memory cgroup, with headroom.
pub const DEFAULT_JAIL_MEMORY_OVERHEAD_MIB: u32 = 256;

/// Default of `serial_log_max_bytes`: 1 MiB.
pub const DEFAULT_SERIAL_LOG_MAX_BYTES: u64 = 1024 * 1024;
/// Smallest `serial_log_max_bytes` accepted (a boot failure's tail must fit).
pub const MIN_SERIAL_LOG_MAX_BYTES: u64 = 4096;

/// Upper bound on vCPUs we accept from configuration or annotations.
pub const MAX_VCPUS: u32 = 64;
/// Smallest guest memory we accept, MiB (the kernel and agent need some room).
pub const MIN_MEMORY_MIB: u32 = 64;

impl Config {
    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.message().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads the configuration.
    ///
    /// `explicit` (from `--config`) wins over `AMPOULE_CONFIG` (given as
    /// `env_path`), which wins over the default path. An explicitly named file
    /// must exist; the default one is optional.
    pub fn load_from(
        explicit: Option<&Path>,
        env_path: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let (path, required) = match (explicit, env_path) {
            (Some(p), _) => (p.to_path_buf(), true),
            (None, Some(p)) if !p.as_os_str().is_empty() => (p.to_path_buf(), true),
            _ => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_toml_str(&text, &path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                let config = Self::default();
                config.validate()?;
                Ok(config)
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// [`Config::load_from`] with `AMPOULE_CONFIG` from the environment.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let env = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        Self::load_from(explicit, env.as_deref())
    }

    /// Checks values that no sandbox could run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_vcpus(self.vcpus)?;
        validate_memory(self.memory_mib)?;
        if self.boot_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "boot_timeout_ms must be greater than 0".into(),
            ));
        }
        match self.log_level.as_str() {
            "error" | "warn" | "info" | "debug" | "trace" => {}
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown log_level {other:?}: expected error, warn, info, debug or trace"
                )))
            }
        }
        self.validate_jail()?;
        if self.serial_log_max_bytes < MIN_SERIAL_LOG_MAX_BYTES {
            return Err(ConfigError::Invalid(format!(
                "serial_log_max_bytes must be at least {MIN_SERIAL_LOG_MAX_BYTES}, got {}",
                self.serial_log_max_bytes
            )));
        }
        for (name, p) in [
            ("run_dir", &self.run_dir),
            ("log_dir", &self.log_dir),
            ("cache_dir", &self.cache_dir),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be an absolute path, got {}",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_jail(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.jail_uid_count > 0 {
            let end = u64::from(self.jail_uid_base) + u64::from(self.jail_uid_count);
            if self.jail_uid_base == 0 || end > u64::from(u32::MAX) {
                return invalid(format!(
                    "jail_uid_base {} with jail_uid_count {} must be a range of non-zero uids",
                    self.jail_uid_base, self.jail_uid_count
                ));
            }
        }
        if self.jail_nofile < 64 {
            return invalid(format!(
                "jail_nofile must be at least 64, got {}",
                self.jail_nofile
            ));
        }
        if self.jail_fsize_mib == 0 {
            return invalid("jail_fsize_mib must be greater than 0".into());
        }
        let p = &self.jail_cgroup_parent;
        if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
            return invalid(format!(
                "jail_cgroup_parent must be an absolute cgroup path without '..', got {p:?}"
            ));
        }
        Ok(())
    }
}

/// vCPU count accepted for a sandbox.
pub fn validate_vcpus(vcpus: u32) -> Result<(), ConfigError> {
    if vcpus == 0 {
        return Err(ConfigError::Invalid(
            "vcpus must be at least 1, got 0".into(),
        ));
    }
    if vcpus > MAX_VCPUS {
        return Err(ConfigError::Invalid(format!(
            "vcpus must be at most {MAX_VCPUS}, got {vcpus}"
        )));
    }
    Ok(())
}

/// Guest memory accepted for a sandbox, MiB.
pub fn validate_memory(memory_mib: u32) -> Result<(), ConfigError> {
    if memory_mib < MIN_MEMORY_MIB {
        return Err(ConfigError::Invalid(format!(
            "memory_mib must be at least {MIN_MEMORY_MIB}, got {memory_mib}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/test/config.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").expect("empty config parses");
        assert_eq!(c, Config::default());
        assert_eq!(c.hypervisor, HypervisorKind::Auto);
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 256);
        assert_eq!(c.kernel, PathBuf::from("/usr/local/share/ampoule/vmlinux"));
    }

    #[test]
    fn all_fields_parse() {
        let c = parse(
            r#"
            hypervisor = "qemu"
            kernel = "/k"
            initrd = "/i"
            pvm_kernel = true
            qemu_accel = "tcg"
            qemu = "/usr/bin/qemu-system-x86_64"
            vhost_device_vsock = "/usr/local/bin/vhost-device-vsock"
            ampoule_vmm = "/usr/local/bin/ampoule-vmm"
            vcpus = 2
            memory_mib = 512
            kernel_params = "loglevel=3"
            boot_timeout_ms = 5000
            log_level = "debug"
            run_dir = "/tmp/r"
            log_dir = "/tmp/l"
            cache_dir = "/tmp/c"
            jail = false
            jail_uid_base = 500000
            jail_uid_count = 16
            jail_nofile = 1024
            jail_fsize_mib = 64
            jail_cgroup_parent = "/test/amp"
            jail_memory_overhead_mib = 96
            jail_vsock_seccomp_deny = ["connect"]
            "#,
        )
        .expect("full config parses");
        assert_eq!(c.hypervisor, HypervisorKind::Qemu);
        assert_eq!(c.qemu_accel, Some(AccelOverride::Tcg));
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 512);
        assert!(c.pvm_kernel);
        assert_eq!(c.run_dir, PathBuf::from("/tmp/r"));
        assert!(!c.jail);
        assert_eq!((c.jail_uid_base, c.jail_uid_count), (500_000, 16));
        assert_eq!((c.jail_nofile, c.jail_fsize_mib), (1024, 64));
        assert_eq!(c.jail_cgroup_parent, "/test/amp");
        assert_eq!(c.jail_memory_overhead_mib, 96);
        assert_eq!(c.jail_vsock_seccomp_deny, ["connect"]);
    }

    #[test]
    fn serial_log_limit_defaults_to_one_mib_and_a_tiny_one_is_refused() {
        assert_eq!(Config::default().serial_log_max_bytes, 1 << 20);
        assert_eq!(
            parse("serial_log_max_bytes = 65536")
                .expect("parses")
                .serial_log_max_bytes,
            65536
        );
        let err = parse("serial_log_max_bytes = 10").unwrap_err().to_string();
        assert!(err.contains("serial_log_max_bytes"), "{err}");
    }

    #[test]
    fn jail_is_on_by_default_and_bad_jail_values_are_rejected() {
        assert!(Config::default().jail);
        for (text, what) in [
            ("jail_uid_base = 0", "jail_uid_base"),
            ("jail_uid_base = 4294967000", "jail_uid_base"),
            ("jail_nofile = 3", "jail_nofile"),
            ("jail_fsize_mib = 0", "jail_fsize_mib"),
            ("jail_cgroup_parent = \"ampoule\"", "jail_cgroup_parent"),
            ("jail_cgroup_parent = \"/a/../b\"", "jail_cgroup_parent"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(what), "{text}: {err}");
        }
        assert!(parse("jail_uid_base = 0\njail_uid_count = 0").is_ok());
    }

    #[test]
    fn unknown_hypervisor_is_rejected_with_its_name() {
        let err = parse("hypervisor = \"xen\"").unwrap_err().to_string();
        assert!(err.contains("xen"), "{err}");
        assert!(err.contains("/test/config.toml"), "{err}");
        let err = HypervisorKind::parse("xen").unwrap_err().to_string();
        assert!(err.contains("unknown hypervisor \"xen\""), "{err}");
    }

    #[test]
    fn zero_vcpus_is_rejected() {
        let err = parse("vcpus = 0").unwrap_err().to_string();
        assert!(err.contains("vcpus must be at least 1"), "{err}");
    }

    #[test]
    fn too_little_memory_is_rejected() {
        let err = parse("memory_mib = 8").unwrap_err().to_string();
        assert!(err.contains("memory_mib"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = parse("vcpu = 2").unwrap_err().to_string();
        assert!(err.contains("vcpu"), "{err}");
    }

    #[test]
    fn bad_toml_is_rejected_with_path() {
        let err = parse("hypervisor = ").unwrap_err().to_string();
        assert!(err.contains("/test/config.toml"), "{err}");
    }

    #[test]
    fn relative_run_dir_is_rejected() {
        let err = parse("run_dir = \"run\"").unwrap_err().to_string();
        assert!(err.contains("run_dir"), "{err}");
    }

    #[test]
    fn explicit_missing_file_is_an_error_but_default_missing_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.toml");
        let err = Config::load_from(Some(&missing), None).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("nope.toml"));
        let err = Config::load_from(None, Some(&missing)).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }

    #[test]
    fn explicit_file_wins_over_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "vcpus = 3").expect("write a");
        std::fs::write(&b, "vcpus = 4").expect("write b");
        assert_eq!(
            Config::load_from(Some(&a), Some(&b)).expect("load").vcpus,
            3
        );
        assert_eq!(Config::load_from(None, Some(&b)).expect("load").vcpus, 4);
    }
}
