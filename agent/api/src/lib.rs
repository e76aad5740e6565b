//! The one contract between the Ampoule host side and the guest agent.
//!
//! `agent.proto` holds the messages and the `Agent` ttrpc service; this crate
//! adds the vsock ports and the readiness line both sides agree on.

#[allow(
    clippy::all,
    unused_qualifications,
    missing_docs,
    unused_mut,
    unused_imports,
    dead_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unknown_lints
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}
#[allow(
    clippy::all,
    unused_qualifications,
    missing_docs,
    unused_mut,
    unused_imports,
    dead_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unknown_lints
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub use agent::*;

pub mod features;

/// Guest CID of every Ampoule sandbox (the host is CID 2).
pub const GUEST_CID: u32 = 3;
/// Host CID as seen from the guest.
pub const HOST_CID: u32 = 2;
/// vsock port where the agent serves ttrpc.
pub const AGENT_PORT: u32 = 1024;
/// vsock port where the agent accepts stdio stream connections from the host
/// (see `StdioConfig` in agent.proto for the header line).
pub const STDIO_PORT: u32 = 1025;
/// Host port the agent connects to (guest-initiated, CID 2) once it serves
/// ttrpc. Through hybrid vsock this reaches the host's Unix socket
/// `<uds>_1023`, which the host listens on before the VM starts.
pub const READY_PORT: u32 = 1023;
/// The line the agent writes on the readiness connection, followed by its
/// version and `\n`: `AMPOULE_AGENT_READY 0.1.0\n`.
pub const READY_PREFIX: &str = "AMPOULE_AGENT_READY";

/// The agent's version, which is this crate's (they are built together).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// virtio-fs tag of the sandbox's shared filesystem.
pub const SHARED_FS_TAG: &str = "ampoule";
/// Where the agent mounts the shared filesystem in the guest.
pub const SHARED_FS_GUEST_DIR: &str = "/run/ampoule/shared";

/// Longest container or exec id.
pub const MAX_ID: usize = 128;

/// Whether `id` is a valid container or exec id: 1-128 of `[A-Za-z0-9_.-]`,
/// not `.` or `..`. The one rule the agent, the runtime and the shim apply.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Where the agent binds the pod's network namespace in the guest (see
/// `SetupNetworkRequest` in agent.proto).
pub const POD_NETNS_GUEST_PATH: &str = "/run/ampoule/netns/pod";
