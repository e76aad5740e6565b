//! The ttrpc statuses containerd gets from the shim: one readable line
//! (what failed, for which task, why) and the gRPC code containerd acts on
//! (NotFound, AlreadyExists, FailedPrecondition, ...).
//!
//! The agent's own status travels through: its code when it is one
//! containerd understands, its message (guest text: control characters
//! escaped, bounded) without ttrpc's Debug rendering of the status.

use ampoule_runtime::agent_client::AgentError;
use ampoule_runtime::container::rootfs::RootfsError;
use ampoule_runtime::container::ContainerError;
use ampoule_runtime::text::escape_control;
use ampoule_runtime::SandboxError;
use ttrpc::{Code, Error as TtrpcError};

use crate::vm::VmError;

/// Longest message the shim passes on (guest text included).
pub const MAX_MESSAGE: usize = 1024;

/// What the shim was doing, and to which task: the start of a message.
#[derive(Debug, Clone, Copy)]
pub struct Op<'a> {
    /// A verb: "create", "start", "signal", ...
    pub action: &'static str,
    pub id: &'a str,
    /// "" for the container's init process.
    pub exec_id: &'a str,
}

impl<'a> Op<'a> {
    pub fn new(action: &'static str, id: &'a str, exec_id: &'a str) -> Op<'a> {
        Op {
            action,
            id,
            exec_id,
        }
    }
}

impl std::fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exec_id.is_empty() {
            write!(f, "{} container {}", self.action, self.id)
        } else {
            write!(
                f,
                "{} exec {} of container {}",
                self.action, self.exec_id, self.id
            )
        }
    }
}

/// A ttrpc status error.
pub fn status(code: Code, msg: impl std::fmt::Display) -> TtrpcError {
    TtrpcError::RpcStatus(ttrpc::get_status(code, one_line(&msg.to_string())))
}

/// `what: not found` (containerd strips and re-adds the class suffix).
pub fn not_found(what: impl std::fmt::Display) -> TtrpcError {
    status(Code::NOT_FOUND, format!("{what}: not found"))
}

/// The status of a failed VM or agent operation.
pub fn vm_error(op: Op<'_>, e: &VmError) -> TtrpcError {
    let (code, detail) = classify(e);
    let msg = format!("{op}: {detail}");
    if msg.contains('\n') || msg.len() > MAX_MESSAGE {
        // containerd gets the first line: the rest goes here.
        tracing::warn!(code = ?code, "{op} failed: {e}");
    } else {
        tracing::debug!(code = ?code, "{msg}");
    }
    status(code, msg)
}

/// The gRPC code and the one-line reason of an error.
pub fn classify(e: &VmError) -> (Code, String) {
    match e {
        VmError::Sandbox(SandboxError::Agent(a)) => agent_error(a),
        VmError::Sandbox(SandboxError::VmExited(_)) => (Code::UNAVAILABLE, e.to_string()),
        VmError::Sandbox(SandboxError::Config(_) | SandboxError::GuestImage { .. })
        | VmError::Config(_) => (Code::FAILED_PRECONDITION, e.to_string()),
        VmError::Rootfs(r) | VmError::Container(ContainerError::Rootfs(r)) => {
            (rootfs_code(r), e.to_string())
        }
        VmError::Container(
            ContainerError::BadSpec { .. } | ContainerError::BadAnnotation { .. },
        ) => (Code::INVALID_ARGUMENT, e.to_string()),
        _ => (Code::INTERNAL, e.to_string()),
    }
}

fn rootfs_code(e: &RootfsError) -> Code {
    match e {
        RootfsError::NoFreeSlot => Code::RESOURCE_EXHAUSTED,
        RootfsError::NoMount
        | RootfsError::UnsupportedType(_)
        | RootfsError::NoLowerdir(_)
        | RootfsError::NotADirectory { .. }
        | RootfsError::NoBindSource(_)
        | RootfsError::TooBig { .. } => Code::INVALID_ARGUMENT,
        _ => Code::INTERNAL,
    }
}

/// An agent call that failed: the agent's code when it answered, and the
/// runtime's wording of the failure (the agent's message, escaped).
fn agent_error(e: &AgentError) -> (Code, String) {
    let msg = e.to_string();
    let code = match e.status_code() {
        Some(c) => passed_through(c),
        // ttrpc's words for a request whose deadline passed.
        None if msg.contains("deadline elapsed") => Code::DEADLINE_EXCEEDED,
        None => Code::INTERNAL,
    };
    (code, msg)
}

/// The agent's code when containerd acts on it as such; anything else
/// (UNKNOWN, INTERNAL, UNAVAILABLE: containerd would take the latter for
/// a dead shim) becomes INTERNAL.
fn passed_through(code: Code) -> Code {
    match code {
        Code::NOT_FOUND
        | Code::ALREADY_EXISTS
        | Code::INVALID_ARGUMENT
        | Code::FAILED_PRECONDITION
        | Code::UNIMPLEMENTED
        | Code::DEADLINE_EXCEEDED
        | Code::RESOURCE_EXHAUSTED
        | Code::PERMISSION_DENIED
        | Code::OUT_OF_RANGE
        | Code::CANCELLED => code,
        _ => Code::INTERNAL,
    }
}

/// One line of at most [`MAX_MESSAGE`] bytes: the first non-empty line
/// (multi-line errors, such as a boot failure with log tails, say where
/// the rest is), other control characters escaped.
pub fn one_line(s: &str) -> String {
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    // Control characters escaped; backslashes kept (the runtime already
    // escaped guest text: no second escaping).
    let mut out = String::with_capacity(first.len());
    for c in first.chars() {
        if c.is_control() {
            out.push_str(&escape_control(c.encode_utf8(&mut [0; 4])));
        } else {
            out.push(c);
        }
    }
    if lines.next().is_some() {
        out.push_str(" (more in the shim log)");
    }
    if out.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(e: TtrpcError) -> (Code, String) {
        match e {
            TtrpcError::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    fn agent_failure(error: TtrpcError) -> VmError {
        VmError::Sandbox(SandboxError::Agent(AgentError::call("StartContainer")(
            error,
        )))
    }

    #[test]
    fn agent_status_keeps_its_code_and_message_without_debug_structs() {
        let e = agent_failure(TtrpcError::RpcStatus(ttrpc::get_status(
            Code::NOT_FOUND,
            "container \"web\" not found",
        )));
        let (code, msg) = parts(vm_error(Op::new("start", "web", ""), &e));
        assert_eq!(code, Code::NOT_FOUND);
        assert_eq!(
            msg,
            "start container web: in the guest: container \"web\" not found"
        );

        let e = agent_failure(TtrpcError::RpcStatus(ttrpc::get_status(
            Code::FAILED_PRECONDITION,
            "container \"web\" is not created",
        )));
        let (code, msg) = parts(vm_error(Op::new("start", "web", "e1"), &e));
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert_eq!(
            msg,
            "start exec e1 of container web: in the guest: container \"web\" is not created"
        );
        for bad in ["Status {", "special_fields", "rpc status", "code:"] {
            assert!(!msg.contains(bad), "{msg:?} contains {bad:?}");
        }

        let e = agent_failure(TtrpcError::RpcStatus(ttrpc::get_status(
            Code::ALREADY_EXISTS,
            "web already exists",
        )));
        assert_eq!(
            parts(vm_error(Op::new("create", "web", ""), &e)).0,
            Code::ALREADY_EXISTS
        );
    }

    #[test]
    fn agent_codes_containerd_would_misread_become_internal() {
        for c in [Code::UNAVAILABLE, Code::UNKNOWN, Code::OK, Code::DATA_LOSS] {
            let e = agent_failure(TtrpcError::RpcStatus(ttrpc::get_status(c, "x")));
            assert_eq!(classify(&e).0, Code::INTERNAL, "{c:?}");
        }
    }

    #[test]
    fn agent_transport_failures_are_named() {
        let e = agent_failure(TtrpcError::Others("Request deadline elapsed".into()));
        let (code, msg) = classify(&e);
        assert_eq!(code, Code::DEADLINE_EXCEEDED);
        assert!(
            msg.contains("StartContainer") && msg.contains("deadline"),
            "{msg}"
        );
        let e = agent_failure(TtrpcError::RemoteClosed);
        let (code, msg) = classify(&e);
        assert_eq!(code, Code::INTERNAL);
        assert!(msg.contains("StartContainer"), "{msg}");
    }

    #[test]
    fn host_side_errors_get_their_codes() {
        let e = VmError::Rootfs(RootfsError::NoFreeSlot);
        assert_eq!(classify(&e).0, Code::RESOURCE_EXHAUSTED);
        let e = VmError::Container(ContainerError::Rootfs(RootfsError::NoMount));
        assert_eq!(classify(&e).0, Code::INVALID_ARGUMENT);
        let e = VmError::Container(ContainerError::BadSpec {
            path: "/b/config.json".into(),
            message: "bad".into(),
        });
        assert_eq!(classify(&e).0, Code::INVALID_ARGUMENT);
        let e = VmError::Sandbox(SandboxError::GuestImage {
            what: "kernel",
            path: "/nonexistent/vmlinux".into(),
            reason: "No such file or directory".into(),
        });
        let (code, msg) = parts(vm_error(Op::new("create", "c1", ""), &e));
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert!(msg.starts_with("create container c1: "), "{msg}");
        assert!(msg.contains("/nonexistent/vmlinux"), "{msg}");
    }

    #[test]
    fn guest_text_becomes_one_bounded_line() {
        let e = agent_failure(TtrpcError::RpcStatus(ttrpc::get_status(
            Code::INTERNAL,
            format!("first\x1b[31m line\nsecond line\n{}", "x".repeat(5000)),
        )));
        let (_, msg) = parts(vm_error(Op::new("signal", "c", "e"), &e));
        assert!(!msg.contains('\n') && !msg.contains('\x1b'), "{msg:?}");
        assert!(msg.len() <= MAX_MESSAGE + '…'.len_utf8(), "{}", msg.len());
        assert!(
            msg.starts_with(
                "signal exec e of container c: in the guest: first\\x1b[31m line\\nsecond line"
            ),
            "{msg}"
        );
        assert!(msg.ends_with('…'), "{msg}");
        assert_eq!(one_line(&"é".repeat(MAX_MESSAGE)).len(), MAX_MESSAGE + 3);
    }

    #[test]
    fn a_multi_line_host_error_shows_its_first_line() {
        assert_eq!(
            one_line("the guest did not become ready: timeout\n--- serial.log ---\nPanic"),
            "the guest did not become ready: timeout (more in the shim log)"
        );
        assert_eq!(one_line("\n  one\t line \n"), "one\\t line");
        assert_eq!(one_line("a\\x1b b"), "a\\x1b b", "escaped once only");
    }
}
