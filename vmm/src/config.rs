//! VM configuration: from command-line flags or a JSON file, and its validation.
//!
//! The JSON file has the same fields as the flags (`kernel`, `initrd`,
//! `cmdline`, `vcpus`, `memory_mib`, `vsock_uds`, `serial_log`,
//! `serial_log_max_bytes`, `api_sock`,
//! `drives: [{"id": .., "path": .., "read_only": ..}]`,
//! `fs: [{"tag": .., "socket": ..}]`,
//! `net: [{"tap": .., "mac": ..}, {"fd": .., "mac": ..}]`,
//! `shutdown_timeout_ms`). Unknown fields are rejected.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::devices::serial_log::MIN_MAX_BYTES;

/// Largest guest memory this VMM lays out (below the 32-bit MMIO hole).
pub const MAX_MEMORY_MIB: u64 = 3072;
/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u64 = 2;
/// Most vCPUs the MP table and the APIC ID space here are laid out for.
pub const MAX_VCPUS: u8 = 32;
/// Longest Unix socket path (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Most virtio-mmio devices (IRQs 5 to 23), the vsock device included.
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// Longest drive id.
pub const MAX_DRIVE_ID: usize = 20;
/// Longest virtio-fs tag (the config space field is 36 bytes, NUL padded).
pub const MAX_FS_TAG: usize = 36;
/// Most virtio-fs devices.
pub const MAX_FS_DEVICES: usize = 4;
/// Most virtio-net devices.
pub const MAX_NET_DEVICES: usize = 4;
/// Longest network interface name (`IFNAMSIZ` is 16 with its NUL).
pub const MAX_IFNAME: usize = 15;

/// Errors in a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--kvm-fd {fd}: {reason}")]
    KvmFd { fd: i32, reason: String },
    #[error("uid and gid must be given together")]
    Identity,
    #[error("invalid --drive value {value:?}: {reason}")]
    BadDrive { value: String, reason: String },
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    ParseFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no kernel given (--kernel or \"kernel\" in the config file)")]
    NoKernel,
    #[error("kernel {path}: {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("initrd {path}: {reason}")]
    Initrd { path: PathBuf, reason: String },
    #[error("drive {id}: {reason}")]
    Drive { id: String, reason: String },
    #[error("invalid --fs value {value:?}: {reason}")]
    BadFs { value: String, reason: String },
    #[error("virtio-fs {tag:?}: {reason}")]
    Fs { tag: String, reason: String },
    #[error("invalid --net value {value:?}: {reason}")]
    BadNet { value: String, reason: String },
    #[error("net {what}: {reason}")]
    Net { what: String, reason: String },
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u64),
    #[error("memory_mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {0}")]
    Memory(u64),
    #[error("{what} socket path {path}: {reason}")]
    Socket {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("serial log {path}: {reason}")]
    SerialLog { path: PathBuf, reason: String },
    #[error("serial_log_max_bytes must be at least {MIN_MAX_BYTES}, got {0}")]
    SerialLogMax(u64),
}

/// One virtio-blk drive: backed by a file, or an empty slot filled later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Name used by the control socket to fill or empty this slot.
    pub id: String,
    /// Backing file; `None` for an empty slot.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
}

/// One virtio-fs device, served by a vhost-user backend (virtiofsd)
/// listening on `socket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs TAG /mnt`).
    pub tag: String,
    /// The backend's vhost-user socket (it must be listening at start).
    pub socket: PathBuf,
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff` (in flags and JSON alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Neither a group (multicast or broadcast) address nor all zeros:
    /// one a NIC can have.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One virtio-net device on a tap: either a tap interface the VMM opens by
/// name in its own network namespace, or an already open tap file
/// descriptor it inherited (which may belong to another namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of an existing tap interface (`ip tuntap add dev NAME mode tap`).
    #[serde(default)]
    pub tap: Option<String>,
    /// An open tap file descriptor (at least 3) inherited from the caller.
    #[serde(default)]
    pub fd: Option<i32>,
    /// The guest NIC's MAC address (unicast).
    pub mac: MacAddr,
}

impl NetConfig {
    /// How error messages name this device: `tap "NAME"` or `fd N`.
    pub fn describe(&self) -> String {
        match (&self.tap, self.fd) {
            (Some(t), _) => format!("tap {t:?}"),
            (None, Some(fd)) => format!("fd {fd}"),
            (None, None) => format!("device {}", self.mac),
        }
    }
}

fn default_vcpus() -> u64 {
    1
}
fn default_memory() -> u64 {
    128
}
fn default_shutdown_timeout() -> u64 {
    5000
}
fn default_seccomp() -> bool {
    true
}
fn default_serial_log_max() -> u64 {
    DEFAULT_SERIAL_LOG_MAX_BYTES
}

/// Default size limit of the serial log.
pub const DEFAULT_SERIAL_LOG_MAX_BYTES: u64 = 1 << 20;

/// The whole microVM configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// ELF `vmlinux` (or freestanding ELF guest).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk loaded into guest memory.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (virtio-mmio devices are appended).
    #[serde(default)]
    pub cmdline: String,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u64,
    /// Guest memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Hybrid-vsock Unix socket (guest CID 3).
    #[serde(default)]
    pub vsock_uds: Option<PathBuf>,
    /// Serial console output file (stdout when absent).
    #[serde(default)]
    pub serial_log: Option<PathBuf>,
    /// Most bytes the serial log file holds; past it only the newest
    /// output is kept.
    #[serde(default = "default_serial_log_max")]
    pub serial_log_max_bytes: u64,
    /// Control socket.
    #[serde(default)]
    pub api_sock: Option<PathBuf>,
    /// virtio-blk drives and empty slots, in slot order.
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// virtio-fs devices (vhost-user backends).
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// virtio-net devices on taps.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// Graceful shutdown deadline before the VM is stopped by force.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_ms: u64,
    /// Seccomp filters on every VMM thread (off only for debugging).
    #[serde(default = "default_seccomp")]
    pub seccomp: bool,
    /// Run as this uid (with `gid`) once everything is open.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Run as this gid (with `uid`) once everything is open.
    #[serde(default)]
    pub gid: Option<u32>,
    /// An inherited descriptor of `/dev/kvm` to use instead of opening the
    /// device (a jailed VMM runs as a uid that may not open it).
    #[serde(default)]
    pub kvm_fd: Option<i32>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            vsock_uds: None,
            serial_log: None,
            serial_log_max_bytes: default_serial_log_max(),
            api_sock: None,
            drives: Vec::new(),
            fs: Vec::new(),
            net: Vec::new(),
            shutdown_timeout_ms: default_shutdown_timeout(),
            seccomp: true,
            uid: None,
            gid: None,
            kvm_fd: None,
        }
    }
}

/// Parses `path=FILE[,ro][,id=ID]`; `index` names the drive when no id is given.
pub fn parse_drive(value: &str, index: usize) -> Result<DriveConfig, ConfigError> {
    let bad = |reason: &str| ConfigError::BadDrive {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let mut path = None;
    let mut id = None;
    let mut read_only = false;
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
            Some(("id", i)) => id = Some(i.to_string()),
            Some(("ro", "on" | "true")) => read_only = true,
            Some(("ro", "off" | "false")) => read_only = false,
            None if part == "ro" => read_only = true,
            _ => return Err(bad(&format!("unknown or empty option {part:?}"))),
        }
    }
    let path = path.ok_or_else(|| bad("missing path=FILE"))?;
    let drive = DriveConfig {
        id: id.unwrap_or_else(|| format!("drive{index}")),
        path: Some(path),
        read_only,
    };
    check_drive_id(&drive.id).map_err(|r| bad(&r))?;
    Ok(drive)
}

/// Parses `id=ID[,ro]` for an empty slot.
pub fn parse_drive_slot(value: &str) -> Result<DriveConfig, ConfigError> {
    let bad = |reason: &str| ConfigError::BadDrive {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let mut id = None;
    let mut read_only = false;
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("id", i)) => id = Some(i.to_string()),
            None if part == "ro" => read_only = true,
            _ => return Err(bad(&format!("unknown or empty option {part:?}"))),
        }
    }
    let id = id.ok_or_else(|| bad("missing id=ID"))?;
    check_drive_id(&id).map_err(|r| bad(&r))?;
    Ok(DriveConfig {
        id,
        path: None,
        read_only,
    })
}

/// Parses `tag=TAG,socket=PATH`.
pub fn parse_fs(value: &str) -> Result<FsConfig, ConfigError> {
    let bad = |reason: &str| ConfigError::BadFs {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let mut tag = None;
    let mut socket = None;
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("tag", t)) => tag = Some(t.to_string()),
            Some(("socket", p)) if !p.is_empty() => socket = Some(PathBuf::from(p)),
            _ => return Err(bad(&format!("unknown or empty option {part:?}"))),
        }
    }
    let tag = tag.ok_or_else(|| bad("missing tag=TAG"))?;
    check_fs_tag(&tag).map_err(|r| bad(&r))?;
    let socket = socket.ok_or_else(|| bad("missing socket=PATH"))?;
    Ok(FsConfig { tag, socket })
}

/// Parses `tap=NAME,mac=MAC` or `fd=N,mac=MAC`.
pub fn parse_net(value: &str) -> Result<NetConfig, ConfigError> {
    let bad = |reason: &str| ConfigError::BadNet {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let mut tap = None;
    let mut fd = None;
    let mut mac = None;
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("tap", t)) if !t.is_empty() => tap = Some(t.to_string()),
            Some(("fd", n)) => {
                fd = Some(
                    n.parse::<i32>()
                        .map_err(|_| bad(&format!("fd {n:?} is not a number")))?,
                )
            }
            Some(("mac", m)) => mac = Some(m.parse::<MacAddr>().map_err(|e| bad(&e))?),
            _ => return Err(bad(&format!("unknown or empty option {part:?}"))),
        }
    }
    let mac = mac.ok_or_else(|| bad("missing mac=aa:bb:cc:dd:ee:ff"))?;
    let net = NetConfig { tap, fd, mac };
    check_net(&net).map_err(|r| bad(&r))?;
    Ok(net)
}

/// Checks one net device's fields (not whether its tap exists).
pub fn check_net(n: &NetConfig) -> Result<(), String> {
    match (&n.tap, n.fd) {
        (Some(_), Some(_)) => return Err("give tap=NAME or fd=N, not both".into()),
        (None, None) => return Err("missing tap=NAME or fd=N".into()),
        (Some(t), None) => check_ifname(t)?,
        (None, Some(fd)) => {
            if fd < 3 {
                return Err(format!(
                    "fd {fd} is standard input, output or error, not a tap"
                ));
            }
        }
    }
    if !n.mac.is_unicast() {
        return Err(format!(
            "MAC {} is not a unicast address (the first byte must be even, and not all zeros)",
            n.mac
        ));
    }
    Ok(())
}

/// A name Linux accepts for a network interface (`dev_valid_name`).
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(format!(
            "interface name {name:?} must be 1 to {MAX_IFNAME} bytes"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is reserved"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "interface name {name:?} may not hold '/', ':', spaces or control characters"
        ));
    }
    Ok(())
}

/// A tag fits the config space (1 to 36 bytes) and holds no NUL (the
/// guest reads it up to the first NUL) nor control characters.
pub fn check_fs_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.len() > MAX_FS_TAG {
        return Err(format!("tag must be 1 to {MAX_FS_TAG} bytes"));
    }
    if tag.chars().any(char::is_control) {
        return Err("tag may not hold NUL or control characters".into());
    }
    Ok(())
}

fn check_drive_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_DRIVE_ID {
        return Err(format!("id must be 1 to {MAX_DRIVE_ID} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("id may hold only letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

/// Loads a JSON config file.
pub fn from_json_file(path: &Path) -> Result<VmConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    from_json_str(&text).map_err(|source| ConfigError::ParseFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a JSON config.
pub fn from_json_str(text: &str) -> Result<VmConfig, serde_json::Error> {
    serde_json::from_str(text)
}

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Checks a Unix socket path we are about to create.
pub fn check_socket_path(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::Socket {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(err("empty path".into()));
    }
    if len > MAX_SOCKET_PATH {
        return Err(err(format!(
            "path is too long ({len} bytes, at most {MAX_SOCKET_PATH})"
        )));
    }
    if path.symlink_metadata().is_ok() {
        let live = std::os::unix::net::UnixStream::connect(path).is_ok();
        return Err(err(if live {
            "already in use by a running process".into()
        } else {
            "already exists (remove it if it is stale)".into()
        }));
    }
    Ok(())
}

impl VmConfig {
    /// Checks everything that can be checked before creating anything.
    /// The identity to drop to, if any (uid and gid go together).
    pub fn identity(&self) -> Result<Option<crate::jail::Identity>, ConfigError> {
        match (self.uid, self.gid) {
            (Some(uid), Some(gid)) => Ok(Some(crate::jail::Identity { uid, gid })),
            (None, None) => Ok(None),
            _ => Err(ConfigError::Identity),
        }
    }

    /// Checks the virtio-fs devices: tags, duplicates, and that each
    /// backend socket exists and is a socket (its connection is made when
    /// the VM is built).
    fn validate_fs(&self) -> Result<(), ConfigError> {
        use std::os::unix::fs::FileTypeExt;
        if self.fs.len() > MAX_FS_DEVICES {
            return Err(ConfigError::Fs {
                tag: self.fs.len().to_string(),
                reason: format!("at most {MAX_FS_DEVICES} virtio-fs devices"),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.fs {
            let err = |reason: String| ConfigError::Fs {
                tag: f.tag.clone(),
                reason,
            };
            check_fs_tag(&f.tag).map_err(err)?;
            if !seen.insert(f.tag.clone()) {
                return Err(err("duplicate tag".into()));
            }
            let len = f.socket.as_os_str().len();
            if len == 0 || len > MAX_SOCKET_PATH {
                return Err(err(format!(
                    "socket path {} must be 1 to {MAX_SOCKET_PATH} bytes",
                    f.socket.display()
                )));
            }
            let md = std::fs::metadata(&f.socket).map_err(|e| {
                err(format!(
                    "vhost-user socket {}: {e} (is virtiofsd running?)",
                    f.socket.display()
                ))
            })?;
            if !md.file_type().is_socket() {
                return Err(err(format!(
                    "vhost-user socket {}: not a socket",
                    f.socket.display()
                )));
            }
        }
        Ok(())
    }

    /// Checks the virtio-net devices: fields, duplicates, that each tap
    /// interface exists in this network namespace and that each fd is open.
    fn validate_net(&self) -> Result<(), ConfigError> {
        if self.net.len() > MAX_NET_DEVICES {
            return Err(ConfigError::Net {
                what: format!("{} devices", self.net.len()),
                reason: format!("at most {MAX_NET_DEVICES} virtio-net devices"),
            });
        }
        let mut taps = std::collections::HashSet::new();
        let mut fds = std::collections::HashSet::new();
        let mut macs = std::collections::HashSet::new();
        for n in &self.net {
            let err = |reason: String| ConfigError::Net {
                what: n.describe(),
                reason,
            };
            check_net(n).map_err(err)?;
            if !macs.insert(n.mac) {
                return Err(err(format!("duplicate MAC {}", n.mac)));
            }
            if let Some(t) = &n.tap {
                if !taps.insert(t.clone()) {
                    return Err(err("duplicate tap".into()));
                }
                if !crate::devices::virtio::net::tap::interface_exists(t) {
                    return Err(err(format!(
                        "no such network interface in the VMM's network namespace \
                         (create it first: ip tuntap add dev {t} mode tap)"
                    )));
                }
            }
            if let Some(fd) = n.fd {
                if !fds.insert(fd) {
                    return Err(err("duplicate fd".into()));
                }
                if !crate::devices::virtio::net::tap::fd_is_open(fd) {
                    return Err(err(format!(
                        "fd {fd} is not open in the VMM (was it inherited?)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks `kvm_fd`: open, not a standard stream, not a tap's.
    fn validate_kvm_fd(&self) -> Result<(), ConfigError> {
        let Some(fd) = self.kvm_fd else {
            return Ok(());
        };
        let reason = if fd < 3 {
            Some("it is standard input, output or error")
        } else if self.net.iter().any(|n| n.fd == Some(fd)) {
            Some("a net device uses the same descriptor")
        } else if !crate::devices::virtio::net::tap::fd_is_open(fd) {
            Some("it is not open in the VMM (was it inherited?)")
        } else {
            None
        };
        match reason {
            Some(r) => Err(ConfigError::KvmFd {
                fd,
                reason: r.into(),
            }),
            None => Ok(()),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let kernel = self.kernel.as_ref().ok_or(ConfigError::NoKernel)?;
        check_elf(kernel)?;
        self.identity()?;
        self.validate_kvm_fd()?;
        if let Some(initrd) = &self.initrd {
            let md = std::fs::metadata(initrd).map_err(|e| ConfigError::Initrd {
                path: initrd.clone(),
                reason: e.to_string(),
            })?;
            if !md.is_file() {
                return Err(ConfigError::Initrd {
                    path: initrd.clone(),
                    reason: "not a regular file".into(),
                });
            }
        }
        if self.vcpus == 0 || self.vcpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        let devices = self.drives.len()
            + self.fs.len()
            + self.net.len()
            + usize::from(self.vsock_uds.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::Drive {
                id: format!(
                    "{} drives, {} fs and {} net devices",
                    self.drives.len(),
                    self.fs.len(),
                    self.net.len()
                ),
                reason: format!("at most {MAX_VIRTIO_DEVICES} virtio devices in all"),
            });
        }
        self.validate_fs()?;
        self.validate_net()?;
        let mut seen = std::collections::HashSet::new();
        for d in &self.drives {
            check_drive_id(&d.id).map_err(|reason| ConfigError::Drive {
                id: d.id.clone(),
                reason,
            })?;
            if !seen.insert(d.id.clone()) {
                return Err(ConfigError::Drive {
                    id: d.id.clone(),
                    reason: "duplicate id".into(),
                });
            }
            if let Some(p) = &d.path {
                let md = std::fs::metadata(p).map_err(|e| ConfigError::Drive {
                    id: d.id.clone(),
                    reason: format!("{}: {e}", p.display()),
                })?;
                if !md.is_file() {
                    return Err(ConfigError::Drive {
                        id: d.id.clone(),
                        reason: format!("{}: not a regular file", p.display()),
                    });
                }
            }
        }
        if let Some(p) = &self.api_sock {
            check_socket_path("api", p)?;
        }
        if let Some(p) = &self.vsock_uds {
            check_socket_path("vsock", p)?;
            // `<uds>_<port>` paths must fit too.
            if p.as_os_str().len() + 11 > MAX_SOCKET_PATH {
                return Err(ConfigError::Socket {
                    what: "vsock",
                    path: p.clone(),
                    reason: format!(
                        "path is too long for <path>_<port> names (at most {} bytes)",
                        MAX_SOCKET_PATH - 11
                    ),
                });
            }
        }
        if self.api_sock.is_some() && self.api_sock == self.vsock_uds {
            return Err(ConfigError::Socket {
                what: "api",
                path: self.api_sock.clone().unwrap_or_default(),
                reason: "same path as the vsock socket".into(),
            });
        }
        if self.serial_log_max_bytes < MIN_MAX_BYTES {
            return Err(ConfigError::SerialLogMax(self.serial_log_max_bytes));
        }
        if let Some(p) = &self.serial_log {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    return Err(ConfigError::SerialLog {
                        path: p.clone(),
                        reason: format!("directory {} does not exist", dir.display()),
                    });
                }
            }
        }
        Ok(())
    }
}

fn check_elf(path: &Path) -> Result<(), ConfigError> {
    use std::io::Read;
    let err = |reason: String| ConfigError::Kernel {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic)
        .map_err(|_| err("not an ELF file (too short)".into()))?;
    if magic != ELF_MAGIC {
        return Err(err(
            "not an ELF file (an uncompressed vmlinux is needed)".into()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_flag_with_path_ro_and_id_parses() {
        let d = parse_drive("path=/tmp/a.img,ro,id=root", 0).unwrap();
        assert_eq!(d.id, "root");
        assert_eq!(d.path.as_deref(), Some(Path::new("/tmp/a.img")));
        assert!(d.read_only);
        let d = parse_drive("path=/tmp/b", 3).unwrap();
        assert_eq!(d.id, "drive3");
        assert!(!d.read_only);
    }

    #[test]
    fn drive_flag_without_path_or_with_unknown_option_is_refused() {
        assert!(parse_drive("ro,id=x", 0).is_err());
        assert!(parse_drive("path=/a,bogus=1", 0).is_err());
        assert!(parse_drive("path=", 0).is_err());
        assert!(parse_drive("path=/a,id=has space", 0).is_err());
        assert!(parse_drive("path=/a,id=waytoolongidentifier_over_20", 0).is_err());
    }

    #[test]
    fn drive_slot_flag_parses_and_needs_an_id() {
        let d = parse_drive_slot("id=layer1").unwrap();
        assert_eq!(d.path, None);
        assert!(parse_drive_slot("ro").is_err());
        assert!(parse_drive_slot("id=a,path=/x").is_err());
    }

    #[test]
    fn json_config_parses_with_defaults_and_rejects_unknown_fields() {
        let c = from_json_str(r#"{"kernel": "/k", "memory_mib": 64}"#).unwrap();
        assert_eq!(c.kernel.as_deref(), Some(Path::new("/k")));
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 64);
        assert_eq!(c.serial_log_max_bytes, DEFAULT_SERIAL_LOG_MAX_BYTES);
        let c = from_json_str(r#"{"kernel": "/k", "serial_log_max_bytes": 65536}"#).unwrap();
        assert_eq!(c.serial_log_max_bytes, 65536);
        assert!(from_json_str(r#"{"kernel": "/k", "bogus": 1}"#).is_err());
        assert!(from_json_str(r#"{"kernel": "/k", "vcpus": -1}"#).is_err());
        let c = from_json_str(
            r#"{"kernel":"/k","drives":[{"id":"a","path":"/f","read_only":true},{"id":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(c.drives.len(), 2);
        assert!(c.drives[0].read_only);
        assert_eq!(c.drives[1].path, None);
    }

    #[test]
    fn fs_flag_and_json_parse_and_bad_tags_are_refused() {
        let f = parse_fs("tag=shared,socket=/run/vfs.sock").unwrap();
        assert_eq!(f.tag, "shared");
        assert_eq!(f.socket, Path::new("/run/vfs.sock"));
        assert!(parse_fs("socket=/a").is_err());
        assert!(parse_fs("tag=x").is_err());
        assert!(parse_fs("tag=x,socket=").is_err());
        assert!(parse_fs("tag=x,socket=/a,ro").is_err());
        assert!(parse_fs(&format!("tag={},socket=/a", "t".repeat(37))).is_err());
        assert!(parse_fs(&format!("tag={},socket=/a", "t".repeat(36))).is_ok());
        assert!(parse_fs("tag=a\u{0}b,socket=/a").is_err());
        let c = from_json_str(r#"{"kernel":"/k","fs":[{"tag":"t","socket":"/s"}]}"#).unwrap();
        assert_eq!(
            c.fs,
            vec![FsConfig {
                tag: "t".into(),
                socket: "/s".into()
            }]
        );
        assert!(from_json_str(r#"{"kernel":"/k","fs":[{"tag":"t"}]}"#).is_err());
        assert!(
            from_json_str(r#"{"kernel":"/k","fs":[{"tag":"t","socket":"/s","x":1}]}"#).is_err()
        );
    }

    #[test]
    fn fs_with_a_missing_socket_or_duplicate_tags_is_refused_before_start() {
        let dir = std::env::temp_dir().join(format!("ampoule-cfg-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"").unwrap();
        let base = VmConfig::default();
        let fs = |tag: &str, p: &Path| FsConfig {
            tag: tag.into(),
            socket: p.to_path_buf(),
        };
        let check = |list: Vec<FsConfig>| {
            let c = VmConfig {
                fs: list,
                ..base.clone()
            };
            c.validate_fs()
        };
        assert!(check(vec![fs("a", &sock)]).is_ok());
        let e = check(vec![fs("a", &dir.join("missing.sock"))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.sock") && e.contains("virtiofsd"), "{e}");
        let e = check(vec![fs("a", &plain)]).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        let e = check(vec![fs("a", &sock), fs("a", &sock)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate"), "{e}");
        let many = (0..=MAX_FS_DEVICES)
            .map(|i| fs(&format!("t{i}"), &sock))
            .collect();
        assert!(check(many).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn net_flag_and_json_parse_and_bad_macs_and_names_are_refused() {
        let n = parse_net("tap=tap0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(n.tap.as_deref(), Some("tap0"));
        assert_eq!(n.fd, None);
        assert_eq!(n.mac, MacAddr([2, 0, 0, 0, 0, 1]));
        let n = parse_net("fd=7,mac=AA:bb:cc:dd:ee:fe").unwrap();
        assert_eq!((n.tap, n.fd), (None, Some(7)));
        assert_eq!(n.mac.to_string(), "aa:bb:cc:dd:ee:fe");
        for bad in [
            "tap=tap0",
            "mac=02:00:00:00:00:01",
            "tap=tap0,fd=3,mac=02:00:00:00:00:01",
            "tap=tap0,mac=01:00:00:00:00:01",
            "tap=tap0,mac=ff:ff:ff:ff:ff:ff",
            "tap=tap0,mac=00:00:00:00:00:00",
            "tap=tap0,mac=02:00:00:00:00",
            "tap=tap0,mac=02:00:00:00:00:01:02",
            "tap=tap0,mac=2:0:0:0:0:1",
            "tap=tap0,mac=02-00-00-00-00-01",
            "tap=tap0,mac=0x:00:00:00:00:01",
            "tap=,mac=02:00:00:00:00:01",
            "tap=a/b,mac=02:00:00:00:00:01",
            "tap=sixteen-chars-xy,mac=02:00:00:00:00:01",
            "fd=1,mac=02:00:00:00:00:01",
            "fd=x,mac=02:00:00:00:00:01",
            "fd=-4,mac=02:00:00:00:00:01",
            "tap=tap0,mac=02:00:00:00:00:01,mtu=9000",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        let e = parse_net("tap=t,mac=03:00:00:00:00:01")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unicast"), "{e}");
        let c = from_json_str(
            r#"{"kernel":"/k","net":[{"tap":"tap0","mac":"02:00:00:00:00:01"},{"fd":9,"mac":"02:00:00:00:00:02"}]}"#,
        )
        .unwrap();
        assert_eq!(c.net.len(), 2);
        assert_eq!(c.net[1].fd, Some(9));
        assert!(from_json_str(r#"{"kernel":"/k","net":[{"tap":"t","mac":"zz"}]}"#).is_err());
        assert!(from_json_str(r#"{"kernel":"/k","net":[{"tap":"t"}]}"#).is_err());
        assert!(from_json_str(
            r#"{"kernel":"/k","net":[{"tap":"t","mac":"02:00:00:00:00:01","x":1}]}"#
        )
        .is_err());
        // The MAC is written back in its canonical form.
        let back = serde_json::to_value(&c.net[0]).unwrap();
        assert_eq!(back["mac"], "02:00:00:00:00:01");
    }

    #[test]
    fn net_with_a_missing_tap_a_closed_fd_or_duplicates_is_refused_before_start() {
        let base = VmConfig::default();
        let mac = |last: u8| MacAddr([2, 0, 0, 0, 0, last]);
        let check = |list: Vec<NetConfig>| {
            let c = VmConfig {
                net: list,
                ..base.clone()
            };
            c.validate_net()
        };
        let tap = |name: &str, last: u8| NetConfig {
            tap: Some(name.into()),
            fd: None,
            mac: mac(last),
        };
        let fd = |n: i32, last: u8| NetConfig {
            tap: None,
            fd: Some(n),
            mac: mac(last),
        };
        // Only a lookup by name: nothing is created.
        let e = check(vec![tap("ampoule-nosuch", 1)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"ampoule-nosuch\"") && e.contains("no such network interface"),
            "{e}"
        );
        let e = check(vec![fd(1_000_000, 1)]).unwrap_err().to_string();
        assert!(e.contains("fd 1000000") && e.contains("not open"), "{e}");
        // "lo" exists in every network namespace.
        let e = check(vec![tap("lo", 1), tap("lo", 2)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate tap"), "{e}");
        let e = check(vec![tap("lo", 1), fd(1_000_000, 1)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate MAC"), "{e}");
        let many = (0..=MAX_NET_DEVICES as u8)
            .map(|i| tap("lo", i + 1))
            .collect();
        assert!(check(many).is_err());
    }

    #[test]
    fn seccomp_is_on_unless_the_json_turns_it_off() {
        assert!(from_json_str(r#"{"kernel": "/k"}"#).unwrap().seccomp);
        assert!(VmConfig::default().seccomp);
        let c = from_json_str(r#"{"kernel": "/k", "seccomp": false}"#).unwrap();
        assert!(!c.seccomp);
    }

    #[test]
    fn a_kvm_fd_must_be_open_beyond_stdio_and_not_a_taps() {
        let base = VmConfig::default();
        let check = |fd: i32, net: Vec<NetConfig>| {
            VmConfig {
                kvm_fd: Some(fd),
                net,
                ..base.clone()
            }
            .validate_kvm_fd()
        };
        assert!(check(2, vec![]).is_err(), "stderr");
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        assert!(check(fd, vec![]).is_ok());
        let tap = parse_net(&format!("fd={fd},mac=02:00:00:00:00:01")).unwrap();
        assert!(check(fd, vec![tap]).is_err(), "shared with a net device");
        drop(f);
        assert!(check(fd, vec![]).is_err(), "closed");
        let c = from_json_str(r#"{"kernel": "/k", "kvm_fd": 9}"#).unwrap();
        assert_eq!(c.kvm_fd, Some(9));
    }

    #[test]
    fn uid_and_gid_come_together() {
        let c = from_json_str(r#"{"kernel": "/k", "uid": 1000, "gid": 100}"#).unwrap();
        assert_eq!(
            c.identity().unwrap(),
            Some(crate::jail::Identity {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(VmConfig::default().identity().unwrap(), None);
        let c = from_json_str(r#"{"kernel": "/k", "uid": 1000}"#).unwrap();
        assert!(matches!(c.identity(), Err(ConfigError::Identity)));
    }

    #[test]
    fn too_long_socket_path_is_refused() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let e = check_socket_path("api", &long).unwrap_err().to_string();
        assert!(e.contains("too long"), "{e}");
    }

    #[test]
    fn missing_kernel_and_bad_counts_are_refused() {
        let c = VmConfig::default();
        assert!(matches!(c.validate(), Err(ConfigError::NoKernel)));
        let c = VmConfig {
            kernel: Some("/nonexistent/kernel".into()),
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Kernel { .. })));
    }
}
