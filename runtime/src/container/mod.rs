//! Containers on top of a sandbox: the OCI bundle, sandbox sizing from the
//! spec, rootfs images, and the agent calls that create and run them.

pub mod namespaces;
pub mod rootfs;

use std::path::{Path, PathBuf};

use crate::pod::guest::{ContainerFiles, FdMode, Stdio};
use oci_spec::runtime::Spec;

use crate::config::{self, Config};
use crate::hypervisor::Drive;

/// Annotation overriding the sandbox's vCPUs.
pub const ANNOTATION_VCPUS: &str = "io.ampoule.vcpus";
/// Annotation choosing how the pod's container files reach the guest
/// (`virtio-fs` or `erofs`, as the `rootfs_sharing` configuration key).
pub const ANNOTATION_ROOTFS_SHARING: &str = "io.ampoule.rootfs_sharing";
/// Annotation overriding the sandbox's memory, MiB.
pub const ANNOTATION_MEMORY: &str = "io.ampoule.memory_mib";
/// Drive id (and guest serial) of the rootfs image.
pub const ROOTFS_DRIVE: &str = "rootfs0";
/// Drive id of the image with the bind mounts' sources.
pub const BINDS_DRIVE: &str = "binds";
/// Memory the guest needs beside a container's memory limit, MiB.
const GUEST_OVERHEAD_MIB: u64 = 96;

/// Errors about a bundle or a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("bundle {0} does not exist or is not a directory")]
    NoBundle(PathBuf),
    #[error("bundle {0} has no config.json")]
    NoConfig(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {path}: {message}")]
    BadSpec { path: PathBuf, message: String },
    #[error("rootfs {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
    #[error("invalid annotation {key}={value:?}: {reason}")]
    BadAnnotation {
        key: String,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error("{what} {path} {reason}: refused, it could reach outside the bundle")]
    UnsafePath {
        what: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("{path} is {size} bytes, over the limit of {MAX_CONFIG_BYTES} bytes")]
    ConfigTooLarge { path: PathBuf, size: u64 },
    #[error(transparent)]
    Namespace(#[from] namespaces::NamespaceError),
    #[error(transparent)]
    SharedDir(#[from] crate::pod::share_fs::ShareFsError),
}

/// Largest config.json accepted: it crosses to the agent in one ttrpc
/// message, whose limit is 4 MiB.
pub const MAX_CONFIG_BYTES: u64 = 2 * 1024 * 1024;

/// Reads `path` (config.json) without following a symlink, blocking on a
/// FIFO, or reading more than [`MAX_CONFIG_BYTES`].
fn read_config(dir: &Path, path: &Path) -> Result<Vec<u8>, ContainerError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ContainerError::NoConfig(dir.to_path_buf()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ContainerError::UnsafePath {
                what: "config",
                path: path.to_path_buf(),
                reason: "is a symlink",
            })
        }
        Err(source) => {
            return Err(ContainerError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let read_err = |source| ContainerError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(ContainerError::BadSpec {
            path: path.to_path_buf(),
            message: "not a regular file".into(),
        });
    }
    let too_large = |size| ContainerError::ConfigTooLarge {
        path: path.to_path_buf(),
        size,
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large(meta.len()));
    }
    let mut data = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if data.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(data.len() as u64));
    }
    Ok(data)
}

/// Refuses a host path of the bundle that could lead somewhere else than it
/// says: a `..` component anywhere, and a symlink as any component below
/// `base` (the bundle, for a relative path) or as the final component (an
/// absolute path, which may name anything on the host anyway).
fn check_path(what: &'static str, written: &Path, base: &Path) -> Result<PathBuf, ContainerError> {
    use std::path::Component;
    let unsafe_path = |path: &Path, reason| ContainerError::UnsafePath {
        what,
        path: path.to_path_buf(),
        reason,
    };
    if written
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(unsafe_path(written, "has a '..' component"));
    }
    let full = base.join(written);
    let is_link = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
    };
    if written.is_absolute() {
        if is_link(&full) {
            return Err(unsafe_path(&full, "is a symlink"));
        }
    } else {
        let mut p = base.to_path_buf();
        for c in written.components() {
            if let Component::Normal(name) = c {
                p.push(name);
                if is_link(&p) {
                    return Err(unsafe_path(&p, "is or goes through a symlink"));
                }
            }
        }
    }
    Ok(full)
}

/// A loaded OCI bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// config.json as written (sent to the agent unchanged).
    pub config_json: Vec<u8>,
    pub spec: Spec,
    /// The rootfs directory on the host.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Reads and validates `dir/config.json` and the rootfs.
    pub fn load(dir: &Path) -> Result<Bundle, ContainerError> {
        let dir =
            std::fs::canonicalize(dir).map_err(|_| ContainerError::NoBundle(dir.to_path_buf()))?;
        if !dir.is_dir() {
            return Err(ContainerError::NoBundle(dir));
        }
        let path = dir.join("config.json");
        let config_json = read_config(&dir, &path)?;
        let bad = |message: String| ContainerError::BadSpec {
            path: path.clone(),
            message,
        };
        let spec: Spec = serde_json::from_slice(&config_json).map_err(|e| bad(e.to_string()))?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| bad("no \"process\"".into()))?;
        if process
            .args()
            .as_ref()
            .map(|a| a.is_empty())
            .unwrap_or(true)
        {
            return Err(bad("process.args is empty".into()));
        }
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| bad("no \"root\"".into()))?;
        let rootfs = check_path("rootfs", root.path(), &dir)?;
        if !rootfs.is_dir() {
            return Err(ContainerError::NoRootfs(rootfs));
        }
        let bundle = Bundle {
            dir,
            config_json,
            spec,
            rootfs,
        };
        for (written, _) in bundle.bind_sources() {
            check_path("bind mount source", &written, &bundle.dir)?;
        }
        Ok(bundle)
    }

    /// `process.terminal`.
    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    /// The spec's annotations.
    pub fn annotations(&self) -> std::collections::HashMap<String, String> {
        self.spec.annotations().clone().unwrap_or_default()
    }

    /// Sources of the spec's bind mounts: (source as written, host path).
    pub fn bind_sources(&self) -> Vec<(PathBuf, PathBuf)> {
        let mut out = Vec::new();
        for m in self.spec.mounts().as_deref().unwrap_or(&[]) {
            let is_bind = m.typ().as_deref() == Some("bind")
                || m.options()
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
            if let (true, Some(src)) = (is_bind, m.source()) {
                let host = if src.is_absolute() {
                    src.clone()
                } else {
                    self.dir.join(src)
                };
                out.push((src.clone(), host));
            }
        }
        out
    }
}

/// How the pod's container files reach the guest: the annotation
/// [`ANNOTATION_ROOTFS_SHARING`], else the configuration.
pub fn rootfs_sharing(
    spec: &Spec,
    config: &Config,
) -> Result<config::RootfsSharing, ContainerError> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    match annotations.get(ANNOTATION_ROOTFS_SHARING) {
        None => Ok(config.rootfs_sharing),
        Some(v) => config::RootfsSharing::parse(v).ok_or_else(|| ContainerError::BadAnnotation {
            key: ANNOTATION_ROOTFS_SHARING.into(),
            value: v.clone(),
            reason: "virtio-fs or erofs expected".into(),
        }),
    }
}

/// vCPUs and memory (MiB) of the sandbox for `spec`: annotations first, else
/// the larger of the configured default and what `linux.resources` asks.
pub fn sandbox_size(spec: &Spec, config: &Config) -> Result<(u32, u32), ContainerError> {
    let ann = spec.annotations().clone().unwrap_or_default();
    let parse = |key: &str| -> Result<Option<u32>, ContainerError> {
        match ann.get(key) {
            None => Ok(None),
            Some(v) => {
                v.trim()
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|e| ContainerError::BadAnnotation {
                        key: key.into(),
                        value: v.clone(),
                        reason: e.to_string(),
                    })
            }
        }
    };
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let mut vcpus = config.vcpus;
    let mut memory = config.memory_mib;
    if let Some(r) = &resources {
        if let Some(cpu) = r.cpu() {
            if let (Some(q), Some(p)) = (cpu.quota(), cpu.period()) {
                if q > 0 && p > 0 {
                    let want = (q as u64).div_ceil(p).min(u64::from(config::MAX_VCPUS)) as u32;
                    vcpus = vcpus.max(want);
                }
            }
            // As many vCPUs as the cpuset grants host CPUs (the guest's
            // cpuset is mapped onto them).
            if let Some(n) = cpu
                .cpus()
                .as_deref()
                .and_then(ampoule_agent_api::cpu_list_count)
            {
                vcpus = vcpus.max(n.min(u64::from(config::MAX_VCPUS)) as u32);
            }
        }
        if let Some(limit) = r.memory().as_ref().and_then(|m| m.limit()) {
            if limit > 0 {
                let want = (limit as u64 / (1024 * 1024) + GUEST_OVERHEAD_MIB)
                    .min(u64::from(u32::MAX)) as u32;
                memory = memory.max(want);
            }
        }
    }
    if let Some(v) = parse(ANNOTATION_VCPUS)? {
        config::validate_vcpus(v).map_err(|e| ContainerError::BadAnnotation {
            key: ANNOTATION_VCPUS.into(),
            value: v.to_string(),
            reason: e.to_string(),
        })?;
        vcpus = v;
    }
    if let Some(m) = parse(ANNOTATION_MEMORY)? {
        config::validate_memory(m).map_err(|e| ContainerError::BadAnnotation {
            key: ANNOTATION_MEMORY.into(),
            value: m.to_string(),
            reason: e.to_string(),
        })?;
        memory = m;
    }
    Ok((vcpus, memory))
}

/// The drives for a container's rootfs (and bind sources) image.
pub fn drives(rootfs_image: &Path, binds_image: Option<&Path>) -> Vec<Drive> {
    let mut d = vec![Drive {
        id: ROOTFS_DRIVE.into(),
        path: rootfs_image.to_path_buf(),
        read_only: true,
    }];
    if let Some(b) = binds_image {
        d.push(Drive {
            id: BINDS_DRIVE.into(),
            path: b.to_path_buf(),
            read_only: true,
        });
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(dir: &Path, config: &str) {
        std::fs::create_dir_all(dir.join("rootfs")).expect("rootfs");
        std::fs::write(dir.join("config.json"), config).expect("config");
    }

    const MIN: &str = r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#;

    #[test]
    fn loads_a_minimal_bundle() {
        let d = tempfile::tempdir().expect("tempdir");
        bundle_with(d.path(), MIN);
        let b = Bundle::load(d.path()).expect("load");
        assert!(b.rootfs.ends_with("rootfs"));
        assert!(!b.terminal());
        assert_eq!(b.config_json, MIN.as_bytes());
    }

    #[test]
    fn bundle_errors_are_specific() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = Bundle::load(&d.path().join("nope")).unwrap_err();
        assert!(matches!(e, ContainerError::NoBundle(_)), "{e}");
        let e = Bundle::load(d.path()).unwrap_err();
        assert!(matches!(e, ContainerError::NoConfig(_)), "{e}");
        std::fs::write(d.path().join("config.json"), "{not json").expect("write");
        let e = Bundle::load(d.path()).unwrap_err();
        assert!(matches!(e, ContainerError::BadSpec { .. }), "{e}");
        std::fs::write(
            d.path().join("config.json"),
            MIN.replace(
                r#""root""#,
                r#""linux":{"namespaces":[{"type":"bogus"}]},"root""#,
            ),
        )
        .expect("write");
        let e = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        std::fs::write(d.path().join("config.json"), MIN).expect("write");
        let e = Bundle::load(d.path()).unwrap_err();
        assert!(matches!(e, ContainerError::NoRootfs(_)), "{e}");
    }

    #[test]
    fn sizing_from_resources_and_annotations() {
        let c = Config::default();
        let spec: Spec = serde_json::from_str(MIN).expect("spec");
        assert_eq!(sandbox_size(&spec, &c).expect("size"), (1, 256));
        let spec: Spec = serde_json::from_str(&MIN.replace(
            r#""root""#,
            r#""linux":{"resources":{"memory":{"limit":536870912},"cpu":{"quota":150000,"period":100000}}},"root""#,
        ))
        .expect("spec");
        assert_eq!(sandbox_size(&spec, &c).expect("size"), (2, 512 + 96));
        let spec: Spec = serde_json::from_str(&MIN.replace(
            r#""root""#,
            r#""linux":{"resources":{"cpu":{"cpus":"4-6"}}},"root""#,
        ))
        .expect("spec");
        assert_eq!(
            sandbox_size(&spec, &c).expect("size").0,
            3,
            "a vCPU per host CPU of the cpuset"
        );
        let spec: Spec = serde_json::from_str(&MIN.replace(
            r#""root""#,
            r#""annotations":{"io.ampoule.vcpus":"3","io.ampoule.memory_mib":"300"},"root""#,
        ))
        .expect("spec");
        assert_eq!(sandbox_size(&spec, &c).expect("size"), (3, 300));
        let spec: Spec = serde_json::from_str(&MIN.replace(
            r#""root""#,
            r#""annotations":{"io.ampoule.vcpus":"zero"},"root""#,
        ))
        .expect("spec");
        let e = sandbox_size(&spec, &c).unwrap_err().to_string();
        assert!(e.contains("io.ampoule.vcpus"), "{e}");
    }

    #[test]
    fn bind_sources_are_found() {
        let d = tempfile::tempdir().expect("tempdir");
        bundle_with(
            d.path(),
            &MIN.replace(
                r#""root""#,
                r#""mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/x","source":"/etc/hostname","options":["rbind","ro"]},{"destination":"/y","type":"bind","source":"data"}],"root""#,
            ),
        );
        let b = Bundle::load(d.path()).expect("load");
        let s = b.bind_sources();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            (
                PathBuf::from("/etc/hostname"),
                PathBuf::from("/etc/hostname")
            )
        );
        assert_eq!(s[1].0, PathBuf::from("data"));
        assert!(s[1].1.ends_with("data") && s[1].1.is_absolute());
    }
}

/// Parses a signal as `kill` takes it: `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("invalid signal number {n}"))
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| format!("unknown signal {s:?}"))
}

/// Host ends of one process's stdio streams.
#[derive(Debug, Default)]
pub struct Streams {
    pub stdin: Option<tokio::net::UnixStream>,
    pub stdout: Option<tokio::net::UnixStream>,
    pub stderr: Option<tokio::net::UnixStream>,
    /// The extra descriptors' streams, with their number and mode.
    pub extra: Vec<(u32, FdMode, tokio::net::UnixStream)>,
}

/// Where the agent finds a CLI container's files on the erofs path: the
/// rootfs drive and, with bind mounts, the bind sources drive.
pub fn image_files(with_binds: bool) -> ContainerFiles {
    ContainerFiles::Images {
        layers: vec![ROOTFS_DRIVE.to_string()],
        binds: with_binds.then(|| BINDS_DRIVE.to_string()),
    }
}

/// The stdio a process gets: all three streams, or stdin + stdout for a tty.
pub fn stdio_config(terminal: bool) -> Stdio {
    Stdio {
        stdin: true,
        stdout: true,
        stderr: !terminal,
        terminal,
        extra: Vec::new(),
    }
}

/// Opens the stdio streams of a process that `want` asks for (stdin,
/// stdout, stderr), all at once: each is a vsock connection the guest
/// accepts on its own. The agent keeps a stream that arrives before its
/// process exists, so this may run concurrently with the create or exec
/// call.
pub async fn open_each<E, F, Fut>(
    want: [bool; 3],
    extra: &[(u32, FdMode)],
    connect: F,
) -> Result<Streams, E>
where
    F: Fn(crate::vsock::StdioStream) -> Fut,
    Fut: std::future::Future<Output = Result<tokio::net::UnixStream, E>>,
{
    use crate::vsock::StdioStream;
    let open = |wanted: bool, kind: StdioStream| {
        let fut = wanted.then(|| connect(kind));
        async move {
            match fut {
                Some(f) => f.await.map(Some),
                None => Ok(None),
            }
        }
    };
    let extras = futures::future::try_join_all(extra.iter().map(|(fd, mode)| {
        let fut = connect(StdioStream::Extra(*fd));
        let (fd, mode) = (*fd, *mode);
        async move { fut.await.map(|s| (fd, mode, s)) }
    }));
    let (stdin, stdout, stderr, extra) = tokio::try_join!(
        open(want[0], StdioStream::Stdin),
        open(want[1], StdioStream::Stdout),
        open(want[2], StdioStream::Stderr),
        extras,
    )?;
    Ok(Streams {
        stdin,
        stdout,
        stderr,
        extra,
    })
}

/// Opens the streams `cfg` asks for, for process `exec_id` ("" = init).
pub async fn open_streams(
    uds: &Path,
    container_id: &str,
    exec_id: &str,
    cfg: &Stdio,
) -> Result<Streams, crate::vsock::VsockError> {
    let t = std::time::Duration::from_secs(10);
    open_each([cfg.stdin, cfg.stdout, cfg.stderr], &cfg.extra, |kind| {
        crate::vsock::connect_stdio(uds, container_id, exec_id, kind, t)
    })
    .await
}

#[cfg(test)]
mod signal_tests {
    use super::parse_signal;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("SIGKILL"), Ok(9));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("15"), Ok(15));
        assert_eq!(parse_signal("USR1"), Ok(10));
        assert!(parse_signal("FOO").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("99").is_err());
    }
}
