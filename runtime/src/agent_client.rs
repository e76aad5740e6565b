//! The ttrpc connection to the guest agent (vsock port 1024).

use std::path::Path;
use std::time::Duration;

pub use ampoule_agent_api::agent_ttrpc::AgentClient;
use ampoule_agent_api::AGENT_PORT;

use crate::text::escape_control;
use crate::vsock::{self, VsockError};

/// Errors while reaching the agent.
///
/// `Call` prints the agent's own message once, with the guest's text
/// escaped (it is hostile and ends up on a terminal), and does not return
/// its ttrpc error from `source()`: that would print a second time, as a
/// debug dump of the status, in an error chain.
#[derive(Debug)]
pub enum AgentError {
    Connect(VsockError),
    Call {
        call: &'static str,
        source: ttrpc::Error,
    },
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Connect(e) => write!(f, "cannot connect to the agent: {e}"),
            AgentError::Call { call, source } => f.write_str(&describe_call(call, source)),
        }
    }
}

impl std::error::Error for AgentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentError::Connect(e) => Some(e),
            AgentError::Call { .. } => None,
        }
    }
}

impl From<VsockError> for AgentError {
    fn from(e: VsockError) -> Self {
        AgentError::Connect(e)
    }
}

impl AgentError {
    /// For `map_err`: the failure of agent call `call`.
    pub fn call(call: &'static str) -> impl FnOnce(ttrpc::Error) -> AgentError {
        move |source| AgentError::Call { call, source }
    }

    /// The ttrpc status code the agent answered with, if it answered.
    pub fn status_code(&self) -> Option<ttrpc::Code> {
        match self {
            AgentError::Call {
                source: ttrpc::Error::RpcStatus(s),
                ..
            } => Some(s.code()),
            _ => None,
        }
    }
}

/// `in the guest: <the agent's message>` when the agent answered with an
/// error status; what went wrong with the call otherwise.
fn describe_call(call: &str, e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) if !s.message().is_empty() => {
            format!("in the guest: {}", escape_control(s.message()))
        }
        ttrpc::Error::RpcStatus(s) => {
            format!("in the guest: {call} failed with status {:?}", s.code())
        }
        ttrpc::Error::Socket(m) | ttrpc::Error::Others(m) => {
            format!("agent call {call}: {}", escape_control(m))
        }
        ttrpc::Error::Eof | ttrpc::Error::RemoteClosed | ttrpc::Error::LocalClosed => {
            format!("agent call {call}: the connection to the agent closed")
        }
        other => format!("agent call {call}: {}", escape_control(&other.to_string())),
    }
}

/// Default deadline of an agent call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A ttrpc context with a deadline.
pub fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_duration(timeout)
}

/// Opens a ttrpc client to the agent through the hybrid vsock socket `uds`.
pub async fn connect_agent(uds: &Path, timeout: Duration) -> Result<AgentClient, AgentError> {
    let stream = vsock::connect(uds, AGENT_PORT, timeout).await?;
    let socket = ttrpc::r#async::transport::Socket::from(stream);
    Ok(AgentClient::new(ttrpc::r#async::Client::new(socket)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::error_chain;
    use ttrpc::Code;

    #[test]
    fn an_agent_status_prints_its_message_once_without_debug_structs() {
        let e = AgentError::Call {
            call: "CreateContainer",
            source: ttrpc::error::get_rpc_status(
                Code::FAILED_PRECONDITION,
                "executable \"nope\" not found in $PATH",
            ),
        };
        assert_eq!(
            e.to_string(),
            "in the guest: executable \"nope\" not found in $PATH"
        );
        assert_eq!(e.status_code(), Some(Code::FAILED_PRECONDITION));
        let chained = anyhow::Error::new(crate::sandbox::SandboxError::from(e))
            .context("create container \"x\"");
        let line = error_chain(chained.as_ref());
        assert_eq!(
            line,
            "create container \"x\": in the guest: executable \"nope\" not found in $PATH"
        );
        for debris in ["Status {", "special_fields", "rpc status", "details"] {
            assert!(!line.contains(debris), "{line}");
        }
    }

    #[test]
    fn the_guests_message_cannot_drive_the_terminal() {
        let e = AgentError::Call {
            call: "StartContainer",
            source: ttrpc::error::get_rpc_status(Code::INTERNAL, "bad\x1b[2Jthing\n"),
        };
        assert_eq!(e.to_string(), "in the guest: bad\\x1b[2Jthing\\n");
    }

    #[test]
    fn an_empty_status_or_a_transport_failure_names_the_call() {
        let e = AgentError::Call {
            call: "WaitProcess",
            source: ttrpc::error::get_rpc_status(Code::DEADLINE_EXCEEDED, ""),
        };
        assert_eq!(
            e.to_string(),
            "in the guest: WaitProcess failed with status DEADLINE_EXCEEDED"
        );
        let e = AgentError::Call {
            call: "Check",
            source: ttrpc::Error::Socket("socket disconnected".into()),
        };
        assert_eq!(e.to_string(), "agent call Check: socket disconnected");
        assert_eq!(e.status_code(), None);
    }
}
