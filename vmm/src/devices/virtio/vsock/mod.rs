//! virtio-vsock with the host side as a Unix socket ("hybrid vsock").
//!
//! - A host client connects to the socket, writes `CONNECT <port>\n` and
//!   gets `OK <hostport>\n` once the guest accepted; if nothing listens on
//!   that guest port the Unix connection is closed.
//! - A guest connection to CID 2 port P is connected to `<socket>_P`.
//!
//! The device's queues are served by one backend thread ([`muxer`]); the
//! vCPU thread only wakes it on a queue notification.

pub mod credit;
pub mod handshake;
pub mod muxer;
pub mod tx;

use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, Interrupt, VirtioDevice};

/// virtio device id of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// The guest's context id.
pub const GUEST_CID: u64 = 3;
/// The host's context id.
pub const HOST_CID: u64 = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 64];

/// Messages from the device (vCPU threads) to the backend thread.
pub enum Event {
    Activate {
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    },
    Reset,
}

/// The virtio-vsock device.
pub struct Vsock {
    tx: Sender<Event>,
    wake: Arc<EventFd>,
}

/// Errors starting vsock.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock socket {path}: {source}")]
    Bind {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("vsock backend: {0}")]
    Backend(std::io::Error),
}

impl Vsock {
    /// Binds `uds`; returns the device and its backend, whose thread the
    /// caller starts ([`muxer::Backend::start`]).
    pub fn new(uds: &Path) -> Result<(Vsock, muxer::Backend), VsockError> {
        let (tx, wake, backend) = muxer::bind(uds)?;
        Ok((Vsock { tx, wake }, backend))
    }

    fn send(&self, e: Event) {
        if self.tx.send(e).is_err() {
            tracing::error!("vsock backend thread is gone");
        }
        if let Err(e) = self.wake.write(1) {
            tracing::error!("waking vsock backend: {e}");
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&GUEST_CID.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        _acked_features: u64,
        interrupt: Interrupt,
    ) -> Result<(), String> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err("wrong number of queues".into());
        }
        self.send(Event::Activate {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, _index: u32) {
        if let Err(e) = self.wake.write(1) {
            tracing::error!("waking vsock backend: {e}");
        }
    }

    fn reset(&mut self) {
        self.send(Event::Reset);
    }
}
