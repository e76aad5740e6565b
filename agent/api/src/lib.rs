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
pub mod hooks;

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
/// Most descriptors beyond stdio one process may be given
/// (`StdioConfig.extra_fds`, `--preserve-fds`).
pub const MAX_EXTRA_FDS: u32 = 64;

/// The stdio header's word for extra descriptor `fd`.
pub fn extra_fd_stream(fd: u32) -> String {
    format!("fd{fd}")
}

/// The descriptor a stdio header word `fd<N>` names, when N is one a
/// process may be given (3 to 3 + MAX_EXTRA_FDS - 1).
pub fn parse_extra_fd_stream(word: &str) -> Option<u32> {
    let n: u32 = word.strip_prefix("fd")?.parse().ok()?;
    if word.len() > 2 && word.as_bytes()[2] == b'0' {
        return None;
    }
    (3..3 + MAX_EXTRA_FDS).contains(&n).then_some(n)
}

/// Most CPUs a list may name (the kernel's NR_CPUS bound).
const MAX_LISTED_CPUS: u64 = 8192;

/// How many CPUs (or memory nodes) a kernel list such as `0-3,8` names, as
/// in `linux.resources.cpu.cpus`; `None` when it is not such a list. The
/// host sizes a sandbox's vCPUs by it, the agent maps it onto them.
pub fn cpu_list_count(list: &str) -> Option<u64> {
    let mut n: u64 = 0;
    for part in list.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?),
            None => {
                let v = part.trim().parse::<u64>().ok()?;
                (v, v)
            }
        };
        if lo > hi || hi >= MAX_LISTED_CPUS {
            return None;
        }
        n = n.checked_add(hi - lo + 1)?;
    }
    (n > 0 && n <= MAX_LISTED_CPUS).then_some(n)
}

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
