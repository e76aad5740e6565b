//! The readiness announcement: one guest-initiated vsock connection to the
//! host (CID 2), made once the agent serves, carrying one line.

use std::time::Duration;

use ampoule_agent_api::{HOST_CID, READY_PREFIX, VERSION};
use tokio::io::AsyncWriteExt;
use tokio_vsock::{VsockAddr, VsockStream};

#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error("connecting to the host's readiness port {port}: {source}")]
    Connect {
        port: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the readiness line: {0}")]
    Write(#[source] std::io::Error),
}

/// `AMPOULE_AGENT_READY <version>\n`.
pub fn ready_line() -> String {
    format!("{READY_PREFIX} {VERSION}\n")
}

/// Connects to CID 2 `port` and writes the readiness line. The host listens
/// before the VM starts; a few retries cover a transport still settling.
pub async fn announce(port: u32) -> Result<(), ReadyError> {
    let mut last = None;
    for attempt in 0..5u32 {
        match VsockStream::connect(VsockAddr::new(HOST_CID, port)).await {
            Ok(mut s) => {
                s.write_all(ready_line().as_bytes())
                    .await
                    .map_err(ReadyError::Write)?;
                s.flush().await.map_err(ReadyError::Write)?;
                let _ = s.shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(attempt, error = %e, "readiness connect");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
        }
    }
    Err(ReadyError::Connect {
        port,
        source: last.unwrap_or_else(|| std::io::Error::other("no attempt")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_is_prefix_space_version_newline() {
        assert_eq!(ready_line(), format!("AMPOULE_AGENT_READY {VERSION}\n"));
    }
}
