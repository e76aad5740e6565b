//! virtio-fs (device id 26) whose queues are served by an external
//! vhost-user backend (virtiofsd); this VMM is the vhost-user frontend.
//!
//! - The backend's socket is connected, and the session set up
//!   (`SET_OWNER`, features, protocol features), when the VM is built:
//!   before privileges are dropped, and a missing or dead backend is an
//!   error at start. Guest memory is then a sealed memfd mapped shared
//!   ([`crate::vstate::vm::MemoryBacking::SharedMemfd`]).
//! - On DRIVER_OK the vCPU thread checks the guest's queues ([`queue`]:
//!   sizes, alignment, rings inside guest memory) and hands them to the
//!   device's own thread ([`backend`]), which sends `SET_FEATURES`,
//!   `SET_MEM_TABLE` and, per ready queue, `SET_VRING_NUM`, `_ADDR`,
//!   `_BASE`, `_CALL`, `_KICK` and `_ENABLE`. No vhost-user message is
//!   sent from a vCPU thread, so a slow or stuck backend cannot stop a
//!   vCPU. Bad queues fail the activation (the transport sets
//!   DEVICE_NEEDS_RESET).
//! - Kick: one eventfd per queue, registered with KVM as an ioeventfd on
//!   the transport's QueueNotify register with the queue index as
//!   datamatch, so a notify goes from the guest to the backend without
//!   leaving the kernel; a notify that still reaches the transport is
//!   relayed into the same eventfd.
//! - Call: one eventfd per queue, read by the device thread, which sets
//!   the used-ring bit of the interrupt status register and injects the
//!   IRQ through the device's irqfd (the transport's status register must
//!   show why the interrupt came, so the backend cannot write the irqfd
//!   itself).
//! - If the backend dies (its socket hangs up) or an activation fails,
//!   the device stops, the VMM logs it and goes on; the device reports
//!   DEVICE_NEEDS_RESET with a configuration-change interrupt.
//!
//! Config space: `tag` (36 bytes, NUL padded) and `num_request_queues`
//! (1): queue 0 is the high-priority queue, queue 1 the request queue.

pub mod backend;
pub mod queue;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::device_thread::DeviceLink;
use super::{read_config_bytes, Interrupt, VirtioDevice};
use crate::config::MAX_FS_TAG;

/// virtio device id of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Queues: one high-priority queue and one request queue.
pub const NUM_QUEUES: usize = 2;
/// Index of the request queue.
pub const REQUEST_QUEUE: usize = 1;
/// Size of each queue offered to the guest.
pub const QUEUE_SIZES: [u16; NUM_QUEUES] = [256, 256];
/// Bytes of the config space: tag and num_request_queues.
pub const CONFIG_SIZE: usize = MAX_FS_TAG + 4;
/// Ring features the guest may negotiate when the backend offers them:
/// VIRTIO_RING_F_INDIRECT_DESC (28), VIRTIO_RING_F_EVENT_IDX (29).
pub const RING_FEATURES: u64 = (1 << 28) | (1 << 29);

/// Errors setting up a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs {tag:?}: cannot connect to the vhost-user socket {socket}: {source} (is virtiofsd running?)")]
    Connect {
        tag: String,
        socket: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("virtio-fs {tag:?}: vhost-user {what} with {socket}: {source}")]
    Protocol {
        tag: String,
        socket: std::path::PathBuf,
        what: &'static str,
        source: vhost::Error,
    },
    #[error("virtio-fs {tag:?}: the backend at {socket} does not offer {what}")]
    MissingFeature {
        tag: String,
        socket: std::path::PathBuf,
        what: &'static str,
    },
    #[error("virtio-fs {tag:?}: {what}: {source}")]
    Io {
        tag: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// What the device, its thread and the control socket share.
#[derive(Default)]
pub struct FsShared {
    /// The backend hung up: the device is dead for good.
    backend_gone: AtomicBool,
    /// Bumped by every activation and reset (vCPU side).
    generation: AtomicU64,
    /// The generation whose activation the backend refused (0: none).
    failed_generation: AtomicU64,
}

impl FsShared {
    /// Whether the backend is still connected.
    pub fn backend_connected(&self) -> bool {
        !self.backend_gone.load(Ordering::SeqCst)
    }

    fn needs_reset(&self) -> bool {
        let failed = self.failed_generation.load(Ordering::SeqCst);
        !self.backend_connected()
            || (failed != 0 && failed == self.generation.load(Ordering::SeqCst))
    }
}

/// Messages from the device (vCPU threads) to the device thread.
pub enum Event {
    /// Checked queues to hand to the backend.
    Activate(backend::Activation),
    /// The driver reset the device: stop the backend's rings.
    Reset,
}

/// The virtio-fs device.
pub struct Fs {
    tag: String,
    config: [u8; CONFIG_SIZE],
    features: u64,
    link: DeviceLink<Event>,
    shared: Arc<FsShared>,
}

/// The config space of a device with `tag` (already checked to fit).
pub fn config_space(tag: &str) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    let n = tag.len().min(MAX_FS_TAG);
    c[..n].copy_from_slice(&tag.as_bytes()[..n]);
    c[MAX_FS_TAG..].copy_from_slice(&1u32.to_le_bytes());
    c
}

impl Fs {
    /// Connects to the backend at `socket` and sets the session up;
    /// returns the device and its thread, which the caller starts
    /// ([`backend::Backend::start`]) once privileges are dropped.
    pub fn new(tag: &str, socket: &Path) -> Result<(Fs, backend::Backend), FsError> {
        let (setup, backend) = backend::connect(tag, socket)?;
        Ok((
            Fs {
                tag: tag.to_string(),
                config: config_space(tag),
                features: setup.features & RING_FEATURES,
                link: setup.link,
                shared: setup.shared,
            },
            backend,
        ))
    }

    /// State shared with the control socket.
    pub fn shared(&self) -> Arc<FsShared> {
        self.shared.clone()
    }

    /// The tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        acked_features: u64,
        interrupt: Interrupt,
    ) -> Result<(), String> {
        if !self.shared.backend_connected() {
            return Err(format!("virtio-fs {:?}: the backend is gone", self.tag));
        }
        let vrings = queue::check_queues(&mem, &queues, NUM_QUEUES)
            .map_err(|e| format!("virtio-fs {:?}: {e}", self.tag))?;
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.link.send(Event::Activate(backend::Activation {
            mem,
            vrings,
            features: acked_features,
            interrupt,
            generation,
        }));
        Ok(())
    }

    fn queue_notify(&mut self, index: u32) {
        self.link.kick(index);
    }

    fn queue_notify_eventfds(&self) -> Vec<(u32, Arc<EventFd>)> {
        self.link.kick_eventfds()
    }

    fn reset(&mut self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.link.send(Event::Reset);
    }

    fn needs_reset(&self) -> bool {
        self.shared.needs_reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_holds_the_nul_padded_tag_and_one_request_queue() {
        let c = config_space("shared");
        assert_eq!(&c[..6], b"shared");
        assert!(c[6..MAX_FS_TAG].iter().all(|&b| b == 0));
        assert_eq!(&c[MAX_FS_TAG..], &1u32.to_le_bytes());
        let long = "x".repeat(MAX_FS_TAG);
        let c = config_space(&long);
        assert_eq!(&c[..MAX_FS_TAG], long.as_bytes());
        // Reads past the end give zeros, reads across it are cut.
        let mut buf = [0xffu8; 8];
        read_config_bytes(&c, (CONFIG_SIZE - 4) as u64, &mut buf);
        assert_eq!(buf, [1, 0, 0, 0, 0, 0, 0, 0]);
        read_config_bytes(&c, u64::MAX, &mut buf);
        assert_eq!(buf, [0; 8]);
    }

    #[test]
    fn needs_reset_follows_the_failed_generation_and_a_dead_backend() {
        let s = FsShared::default();
        assert!(!s.needs_reset());
        s.generation.store(3, Ordering::SeqCst);
        s.failed_generation.store(3, Ordering::SeqCst);
        assert!(s.needs_reset());
        // A reset or a new activation moves past the failure.
        s.generation.store(4, Ordering::SeqCst);
        assert!(!s.needs_reset());
        s.backend_gone.store(true, Ordering::SeqCst);
        assert!(s.needs_reset());
        assert!(!s.backend_connected());
    }
}
