//! Who may talk to the agent: the host (peer CID 2), nobody else.
//!
//! The guest kernel has no vsock loopback, so a process in the guest (any
//! container's) cannot reach the agent's ports at all; this check is the
//! agent's own line behind that: every vsock listener (ttrpc, stdio) drops a
//! connection whose peer is not the host before reading a byte of it.

use std::io;
use std::time::Duration;

use ampoule_agent_api::HOST_CID;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

/// How long an accept loop rests after an accept error (EMFILE, ENOMEM), so
/// that a lasting one does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Whether a connection from `peer_cid` may be served: only the host's.
/// CID 1 (local), the guest's own CID and VMADDR_CID_ANY are what a guest
/// process would appear as over a loopback transport; any other CID would be
/// another VM.
pub fn serves(peer_cid: u32) -> bool {
    peer_cid == HOST_CID
}

/// The next connection on `listener` from the host; others are logged and
/// closed unread.
pub async fn accept_from_host(
    listener: &VsockListener,
    port: u32,
) -> io::Result<(VsockStream, VsockAddr)> {
    loop {
        let (conn, peer) = listener.accept().await?;
        if serves(peer.cid()) {
            return Ok((conn, peer));
        }
        tracing::warn!(
            port,
            peer_cid = peer.cid(),
            peer_port = peer.port(),
            "vsock connection from outside the host refused"
        );
        drop(conn);
    }
}

/// A ttrpc listener over `listener` that yields host connections only.
pub fn host_only_ttrpc_listener(
    listener: VsockListener,
    port: u32,
) -> ttrpc::r#async::transport::Listener {
    let accepted = futures::stream::unfold(listener, move |listener| async move {
        let next = accept_from_host(&listener, port).await;
        let item = match next {
            Ok((conn, _)) => Ok(conn),
            Err(e) => {
                tracing::warn!(port, error = %e, "vsock accept");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                Err(e)
            }
        };
        Some((item, listener))
    });
    ttrpc::r#async::transport::Listener::new(accepted)
}

/// Accepts host connections on `listener` forever, handing each to `serve`;
/// accept errors are logged and retried after a pause.
pub async fn accept_loop<F>(listener: VsockListener, port: u32, mut serve: F)
where
    F: FnMut(VsockStream, VsockAddr),
{
    loop {
        match accept_from_host(&listener, port).await {
            Ok((conn, peer)) => serve(conn, peer),
            Err(e) => {
                tracing::warn!(port, error = %e, "vsock accept");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_cid_is_served() {
        assert!(serves(2));
        assert_eq!(HOST_CID, 2);
    }

    #[test]
    fn local_own_any_hypervisor_and_other_vm_cids_are_refused() {
        let vmaddr_cid_any = u32::MAX;
        let vmaddr_cid_local = 1;
        let vmaddr_cid_hypervisor = 0;
        for cid in [
            vmaddr_cid_local,
            ampoule_agent_api::GUEST_CID,
            vmaddr_cid_any,
            vmaddr_cid_hypervisor,
            4,
            1000,
        ] {
            assert!(!serves(cid), "cid {cid} must not be served");
        }
    }
}
