//! The ttrpc connection to the guest agent (vsock port 1024).

use std::path::Path;
use std::time::Duration;

pub use ampoule_agent_api::agent_ttrpc::AgentClient;
use ampoule_agent_api::AGENT_PORT;

use crate::vsock::{self, VsockError};

/// Errors while reaching the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the agent: {0}")]
    Connect(#[from] VsockError),
    #[error("agent call {call} failed: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: ttrpc::Error,
    },
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
