//! virtio 1.x devices on the virtio-mmio transport.

pub mod block;
pub mod device_thread;
pub mod fs;
pub mod mmio;
#[cfg(test)]
pub mod mock_queue;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Interrupt status bit: a used buffer was added.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line: status bits read by the guest through the
/// transport, and the irqfd that injects the IRQ.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    evt: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt injected through `evt` (registered as an irqfd).
    pub fn new(evt: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(evt),
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("virtio interrupt injection failed: {e}");
        }
    }

    /// Signals used buffers.
    pub fn signal_used(&self) {
        self.raise(INT_USED_RING);
    }

    /// Signals a configuration change.
    pub fn signal_config(&self) {
        self.raise(INT_CONFIG);
    }

    /// Current status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// virtio device id (1 net, 2 block, 19 vsock, 26 fs).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered feature bits.
    fn features(&self) -> u64;
    /// Reads from the device config space; out of range reads give zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the device config space (ignored by default).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// The driver set DRIVER_OK: the device gets its queues.
    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        acked_features: u64,
        interrupt: Interrupt,
    ) -> Result<(), String>;
    /// The driver notified queue `index`.
    fn queue_notify(&mut self, index: u32);
    /// Eventfds to signal, instead of a `queue_notify` call, when the
    /// driver writes a queue index to QueueNotify (registered with KVM as
    /// ioeventfds with that index as datamatch). None by default.
    fn queue_notify_eventfds(&self) -> Vec<(u32, Arc<EventFd>)> {
        Vec::new()
    }
    /// The driver reset the device: drop the queues.
    fn reset(&mut self);
    /// The device entered an error state since DRIVER_OK (its backend
    /// died, say): the transport shows DEVICE_NEEDS_RESET.
    fn needs_reset(&self) -> bool {
        false
    }
}

/// Reads `data.len()` bytes at `offset` out of `config`, zero past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - off);
    data[..n].copy_from_slice(&config[off..off + n]);
}

/// Counts an event and says whether to log it (1st, 2nd, 4th, 8th, ...),
/// to rate-limit logs of malformed guest requests.
pub fn should_log(counter: &mut u64) -> bool {
    *counter = counter.saturating_add(1);
    counter.is_power_of_two()
}
