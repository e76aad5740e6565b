//! The shim's `start` action: which shim serves a task (pod grouping), at
//! which socket address (hashed ids), and spawning that shim detached.
//!
//! containerd 1.6 runs `start` with the bundle as working directory and
//! reads only the `unix://` address from its stdout, so the server must be
//! fully detached from that pipe before `start` returns.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Annotation CRI sets on every container: `sandbox` or `container`.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Annotation CRI sets on every container: the id of its pod's sandbox.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The same pair as set by containerd's older CRI and by docker/cri-o tools.
const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";

/// Where containerd's Go and Rust shims put their sockets: short enough that
/// `/run/containerd/s/<64 hex>` stays under the 108-byte `sun_path` limit
/// whatever the ids are.
pub const SOCKET_DIR: &str = "/run/containerd/s";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("reading the bundle's config.json: {0}")]
    Spec(#[source] std::io::Error),
    #[error("config.json is not valid JSON: {0}")]
    SpecJson(#[source] serde_json::Error),
    #[error("finding the shim's own binary: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error("spawning the shim server: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("waiting for the shim server to listen: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("the shim server exited before listening on {0}")]
    ServerDied(String),
    #[error("writing the bundle's address file: {0}")]
    AddressFile(#[source] std::io::Error),
}

/// The id of the shim (and microVM) a task belongs to: its pod's sandbox id
/// for a CRI pod container, else its own id.
pub fn grouping(id: &str, annotations: &HashMap<String, String>) -> String {
    for (kind, sandbox) in [
        (CRI_CONTAINER_TYPE, CRI_SANDBOX_ID),
        (CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID),
    ] {
        if annotations.get(kind).map(String::as_str) == Some("container") {
            if let Some(sandbox_id) = annotations.get(sandbox).filter(|s| !s.is_empty()) {
                return sandbox_id.clone();
            }
        }
    }
    id.to_string()
}

pub use ampoule_runtime::container::rootfs::hash_hex;

/// `unix:///run/containerd/s/<sha256(containerd address/namespace/group)>`:
/// one per (containerd, namespace, pod), always 83 bytes of path.
pub fn socket_address(containerd_address: &str, namespace: &str, group: &str) -> String {
    format!(
        "unix://{SOCKET_DIR}/{}",
        hash_hex(&[containerd_address, namespace, group])
    )
}

/// The filesystem path of a `unix://` address.
pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Annotations of the bundle's config.json (empty when it has none).
pub fn bundle_annotations(bundle: &Path) -> Result<HashMap<String, String>, StartError> {
    let raw = std::fs::read(bundle.join("config.json")).map_err(StartError::Spec)?;
    annotations_from_json(&raw)
}

fn annotations_from_json(raw: &[u8]) -> Result<HashMap<String, String>, StartError> {
    #[derive(serde::Deserialize)]
    struct Partial {
        #[serde(default)]
        annotations: Option<HashMap<String, String>>,
    }
    let p: Partial = serde_json::from_slice(raw).map_err(StartError::SpecJson)?;
    Ok(p.annotations.unwrap_or_default())
}

/// What `start` was told by containerd.
#[derive(Debug, Clone)]
pub struct StartArgs {
    pub id: String,
    pub namespace: String,
    /// containerd's gRPC address (`-address`).
    pub address: String,
    pub publish_binary: String,
    pub debug: bool,
    /// `TTRPC_ADDRESS` from the environment.
    pub ttrpc_address: String,
    /// `ConfigPath` of the runtime options on stdin, if any.
    pub config_path: Option<String>,
}

/// Environment variable that carries the runtime options' `ConfigPath` from
/// `start` to the server it spawns.
pub const CONFIG_PATH_ENV: &str = "AMPOULE_CONFIG_PATH";

/// Returns the address of the shim that serves this task, spawning it when
/// it is the first task of its group. Also writes the bundle's `address`
/// file, which containerd reads when it reconnects after a restart.
pub fn start(args: &StartArgs, bundle: &Path) -> Result<String, StartError> {
    let annotations = bundle_annotations(bundle)?;
    let group = grouping(&args.id, &annotations);
    let address = socket_address(&args.address, &args.namespace, &group);
    let path = socket_path(&address).to_string();

    if UnixStream::connect(&path).is_ok() {
        tracing::info!(id = %args.id, group = %group, "joining the running shim of the pod");
    } else {
        if group != args.id {
            tracing::warn!(id = %args.id, group = %group,
                "no running shim for the pod's sandbox: this container gets its own");
        }
        // A stale socket from a killed shim: the new server binds afresh.
        let _ = std::fs::remove_file(&path);
        spawn_server(args, &address)?;
    }
    std::fs::write(bundle.join("address"), &address).map_err(StartError::AddressFile)?;
    Ok(address)
}

/// Spawns `<self> -namespace NS -id ID -address A -publish-binary B -socket S`
/// in its own session, then waits until it closes its stdout, which it does
/// once it listens (or dies).
fn spawn_server(args: &StartArgs, address: &str) -> Result<(), StartError> {
    let exe = std::env::current_exe().map_err(StartError::CurrentExe)?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &args.namespace,
        "-id",
        &args.id,
        "-address",
        &args.address,
        "-publish-binary",
        &args.publish_binary,
        "-socket",
        address,
    ]);
    if args.debug {
        cmd.arg("-debug");
    }
    cmd.env("TTRPC_ADDRESS", &args.ttrpc_address);
    match &args.config_path {
        Some(p) => cmd.env(CONFIG_PATH_ENV, p),
        None => cmd.env_remove(CONFIG_PATH_ENV),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().map_err(StartError::Spawn)?;
    let mut out = child.stdout.take().ok_or_else(|| {
        StartError::Handshake(std::io::Error::other("the child's stdout was not piped"))
    })?;
    let mut buf = Vec::new();
    out.read_to_end(&mut buf).map_err(StartError::Handshake)?;
    // The server closes its stdout once listening; if it died instead, say so.
    if let Ok(Some(status)) = child.try_wait() {
        if !status.success() {
            return Err(StartError::ServerDied(format!(
                "{address} (exit {status}: {})",
                String::from_utf8_lossy(&buf).trim()
            )));
        }
    }
    // Not waited for: the server outlives `start` and is reparented.
    drop(child);
    Ok(())
}

/// Tells the parent `start` that the server listens: stdout (the pipe
/// `start` reads) is replaced by stderr (/dev/null).
pub fn signal_listening() -> std::io::Result<()> {
    std::io::stdout().flush()?;
    // SAFETY: dup2 on two descriptors this process owns for its whole life;
    // it only replaces fd 1 and has no memory effects.
    let rc = unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `ConfigPath` of a `runtimeoptions.v1.Options` message
/// (`type_url` = 1, `config_path` = 2), decoded by hand: containerd's
/// runtimeoptions proto is not among the shim crates' generated types.
pub fn config_path_from_options(type_url: &str, value: &[u8]) -> Option<String> {
    if !type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = protobuf::CodedInputStream::from_bytes(value);
    let mut found = None;
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        match (field, wire) {
            (2, 2) => found = input.read_string().ok(),
            (_, 2) => {
                input.read_bytes().ok()?;
            }
            (_, 0) => {
                input.read_uint64().ok()?;
            }
            (_, 1) => {
                input.read_fixed64().ok()?;
            }
            (_, 5) => {
                input.read_fixed32().ok()?;
            }
            _ => return None,
        }
    }
    found.filter(|p| !p.is_empty())
}

/// Reads the runtime options containerd writes on `start`'s stdin (a
/// protobuf `Any`), if stdin is not a terminal and holds any.
pub fn config_path_from_stdin() -> Option<String> {
    use protobuf::Message;
    let mut raw = Vec::new();
    // SAFETY: isatty only inspects fd 0.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
        return None;
    }
    std::io::stdin().take(1 << 20).read_to_end(&mut raw).ok()?;
    if raw.is_empty() {
        return None;
    }
    let any = protobuf::well_known_types::any::Any::parse_from_bytes(&raw).ok()?;
    config_path_from_options(&any.type_url, &any.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn standalone_task_is_its_own_group() {
        assert_eq!(grouping("abc", &HashMap::new()), "abc");
    }

    #[test]
    fn cri_sandbox_is_its_own_group() {
        let a = ann(&[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, "pod1")]);
        assert_eq!(grouping("pod1", &a), "pod1");
    }

    #[test]
    fn cri_container_goes_to_its_sandbox() {
        let a = ann(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "pod1")]);
        assert_eq!(grouping("c1", &a), "pod1");
    }

    #[test]
    fn cri_container_without_sandbox_id_is_alone() {
        let a = ann(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "")]);
        assert_eq!(grouping("c1", &a), "c1");
    }

    #[test]
    fn crio_annotations_group_too() {
        let a = ann(&[
            (CRIO_CONTAINER_TYPE, "container"),
            (CRIO_SANDBOX_ID, "pod9"),
        ]);
        assert_eq!(grouping("c1", &a), "pod9");
    }

    #[test]
    fn socket_address_is_short_and_stable() {
        let id = "f".repeat(64);
        let ns = "n".repeat(76);
        let long = "/very/long/path/to/a/containerd/socket/".repeat(4);
        let a = socket_address(&long, &ns, &id);
        assert!(socket_path(&a).len() < 108, "{a}");
        assert_eq!(socket_path(&a).len(), SOCKET_DIR.len() + 1 + 64);
        assert_eq!(a, socket_address(&long, &ns, &id));
        assert_ne!(a, socket_address(&long, "other", &id));
        assert_ne!(a, socket_address("/other.sock", &ns, &id));
    }

    #[test]
    fn socket_address_matches_containerd_go_layout() {
        // containerd's own shims hash "<address>/<namespace>/<id>".
        let a = socket_address("/run/containerd/containerd.sock", "default", "123");
        assert_eq!(
            a,
            "unix:///run/containerd/s/0ddfbd72d02b3551e75f3a0ed90b9965b533401be618f43a568bc522764e0ad0"
        );
    }

    #[test]
    fn annotations_are_read_from_spec_json() {
        let raw = br#"{"ociVersion":"1.0.2","annotations":{"a":"b"}}"#;
        assert_eq!(annotations_from_json(raw).unwrap(), ann(&[("a", "b")]));
        assert!(annotations_from_json(br#"{"ociVersion":"1"}"#)
            .unwrap()
            .is_empty());
        assert!(annotations_from_json(b"not json").is_err());
    }

    #[test]
    fn runtime_options_config_path() {
        // field 1 (type_url) = "x", field 2 (config_path) = "/etc/a.toml"
        let mut v = vec![0x0a, 1, b'x', 0x12, 11];
        v.extend_from_slice(b"/etc/a.toml");
        assert_eq!(
            config_path_from_options("type.googleapis.com/runtimeoptions.v1.Options", &v)
                .as_deref(),
            Some("/etc/a.toml")
        );
        assert_eq!(
            config_path_from_options("containerd.runc.v1.Options", &v),
            None
        );
        assert_eq!(
            config_path_from_options("runtimeoptions.v1.Options", &[0x0a, 0]),
            None
        );
        assert_eq!(
            config_path_from_options("runtimeoptions.v1.Options", &[0xff]),
            None
        );
    }
}
