//! virtio-net (device id 1) on a tap file descriptor.
//!
//! - Features: VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC and
//!   VIRTIO_NET_F_STATUS; no offloads (no CSUM, GSO or MRG_RXBUF), so every
//!   buffer carries one whole frame behind the 12-byte `virtio_net_hdr`
//!   (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
//!   num_buffers), all zero but `num_buffers` 1 on RX.
//! - Queues: 0 is RX, 1 is TX (256 entries each), no control queue.
//! - Config space: the MAC (6 bytes) and the status (`LINK_UP`, cleared
//!   with a configuration-change interrupt if the tap goes away).
//! - The tap ([`tap`]): opened by name in the VMM's network namespace or
//!   inherited as an fd, non-blocking, with or without the kernel's
//!   virtio-net header.
//! - One device thread per NIC ([`backend`], `net<N>`) serves both queues
//!   and the tap with epoll: the queue notifications are ioeventfds (one
//!   per queue, the queue index as datamatch), so a kick goes from the
//!   guest to this thread without a vCPU exit to user space.
//! - Bounds: TX ([`tx`]) handles at most [`BUDGET`] chains per pass, each
//!   frame at most [`MAX_FRAME_WITH_HDR`] bytes, copied into one reused
//!   buffer and written to the tap at once (a full tap drops the frame, as
//!   a NIC does). RX ([`rx`]) reads a frame only into a buffer the guest
//!   posted, at most [`BUDGET`] per pass, and stops polling the tap while
//!   the guest has no buffer. Nothing a guest does makes the thread buffer
//!   more than one frame each way, or block.
//! - Counters (frames, bytes, drops by reason) are shared with the control
//!   socket's `status`.

pub mod backend;
pub mod rx;
pub mod tap;
pub mod tx;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::device_thread::DeviceLink;
use super::{read_config_bytes, Interrupt, VirtioDevice};
use crate::config::MacAddr;

/// virtio device id of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// The device has a MAC address in its config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The config space has a link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Status bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Queues: RX and TX.
pub const NUM_QUEUES: usize = 2;
/// Size of each queue offered to the guest.
pub const QUEUE_SIZES: [u16; NUM_QUEUES] = [256, 256];
/// `struct virtio_net_hdr_v1` (with `num_buffers`, as VERSION_1 has it).
pub const VNET_HDR_LEN: usize = 12;
/// An Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Largest frame, header included, either way.
pub const MAX_FRAME_WITH_HDR: usize = 65550;
/// Most descriptors in one chain (a queue's worth).
pub const MAX_CHAIN_DESCRIPTORS: usize = 256;
/// Most chains handled per queue and pass.
pub const BUDGET: usize = 256;
/// Bytes of the config space: mac and status.
pub const CONFIG_SIZE: usize = 8;

// A longer frame than the largest is seen as such when read; a frame of
// 64 KiB fits; a chain may hold a queue's worth of descriptors.
const _: () = assert!(rx::READ_BUF_LEN > MAX_FRAME_WITH_HDR);
const _: () = assert!(MAX_FRAME_WITH_HDR - VNET_HDR_LEN >= 65536);
const _: () = assert!(MAX_CHAIN_DESCRIPTORS == QUEUE_SIZES[TX_QUEUE] as usize);

/// Errors setting up a virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error("net tap {name:?}: {what}: {source}")]
    Io {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Counters of one NIC.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames (and their bytes, without the header) given to the guest.
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames dropped because the guest's buffer was too small.
    pub rx_dropped_too_small: AtomicU64,
    /// Frames from the tap dropped for their content (size, offloads).
    pub rx_dropped_bad_frame: AtomicU64,
    /// Malformed RX buffers returned unused.
    pub rx_bad_buffers: AtomicU64,
    /// Frames (and their bytes, without the header) written to the tap.
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames the tap did not take (full queue, tap gone).
    pub tx_dropped: AtomicU64,
    /// Chains dropped for being larger than [`MAX_FRAME_WITH_HDR`].
    pub tx_oversized: AtomicU64,
    /// Chains dropped as malformed (see [`tx`]).
    pub tx_malformed: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

impl NetStats {
    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "rx_frames": g(&self.rx_frames),
            "rx_bytes": g(&self.rx_bytes),
            "rx_dropped_too_small": g(&self.rx_dropped_too_small),
            "rx_dropped_bad_frame": g(&self.rx_dropped_bad_frame),
            "rx_bad_buffers": g(&self.rx_bad_buffers),
            "tx_frames": g(&self.tx_frames),
            "tx_bytes": g(&self.tx_bytes),
            "tx_dropped": g(&self.tx_dropped),
            "tx_oversized": g(&self.tx_oversized),
            "tx_malformed": g(&self.tx_malformed),
        })
    }
}

/// What the device, its thread and the control socket share.
#[derive(Debug)]
pub struct NetShared {
    pub mac: MacAddr,
    pub tap_name: String,
    pub vnet_hdr: bool,
    pub stats: NetStats,
    link_up: AtomicBool,
}

impl NetShared {
    /// Whether the link is up (the tap is still there).
    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::SeqCst)
    }

    /// The control socket's view of the NIC.
    pub fn status(&self) -> serde_json::Value {
        let mut v = self.stats.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("mac".into(), self.mac.to_string().into());
            o.insert("tap".into(), self.tap_name.clone().into());
            o.insert("vnet_hdr".into(), self.vnet_hdr.into());
            o.insert(
                "link".into(),
                if self.link_up() { "up" } else { "down" }.into(),
            );
        }
        v
    }
}

/// The config space of a NIC with `mac` whose link is `up`.
pub fn config_space(mac: MacAddr, up: bool) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    c[..6].copy_from_slice(&mac.0);
    let status = if up { VIRTIO_NET_S_LINK_UP } else { 0 };
    c[6..].copy_from_slice(&status.to_le_bytes());
    c
}

/// Messages from the device (vCPU threads) to the device thread.
pub enum Event {
    Activate {
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    },
    Reset,
}

/// The virtio-net device.
pub struct Net {
    shared: Arc<NetShared>,
    link: DeviceLink<Event>,
}

impl Net {
    /// A NIC with `mac` on `tap`; returns the device and its thread, which
    /// the caller starts ([`backend::Backend::start`]) once privileges are
    /// dropped.
    pub fn new(mac: MacAddr, tap: tap::Tap) -> Result<(Net, backend::Backend), NetError> {
        let shared = Arc::new(NetShared {
            mac,
            tap_name: tap.name().to_string(),
            vnet_hdr: tap.vnet_hdr(),
            stats: NetStats::default(),
            link_up: AtomicBool::new(true),
        });
        let (link, backend) = backend::prepare(tap, shared.clone())?;
        Ok((Net { shared, link }, backend))
    }

    /// State shared with the control socket.
    pub fn shared(&self) -> Arc<NetShared> {
        self.shared.clone()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = config_space(self.shared.mac, self.shared.link_up());
        read_config_bytes(&c, offset, data);
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        _acked_features: u64,
        interrupt: Interrupt,
    ) -> Result<(), String> {
        if queues.len() != NUM_QUEUES {
            return Err(format!(
                "net {:?}: {} queues, the device has {NUM_QUEUES}",
                self.shared.tap_name,
                queues.len()
            ));
        }
        self.link.send(Event::Activate {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u32) {
        self.link.kick(index);
    }

    fn queue_notify_eventfds(&self) -> Vec<(u32, Arc<EventFd>)> {
        self.link.kick_eventfds()
    }

    fn reset(&mut self) {
        self.link.send(Event::Reset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_holds_the_mac_and_the_link_status() {
        let mac = MacAddr([2, 0x11, 0x22, 0x33, 0x44, 0x55]);
        let c = config_space(mac, true);
        assert_eq!(c, [2, 0x11, 0x22, 0x33, 0x44, 0x55, 1, 0]);
        assert_eq!(config_space(mac, false)[6..], [0, 0]);
        // Reads of any size and offset, zeros past the end.
        let mut b = [0xffu8; 4];
        read_config_bytes(&c, 4, &mut b);
        assert_eq!(b, [0x44, 0x55, 1, 0]);
        read_config_bytes(&c, 6, &mut b);
        assert_eq!(b, [1, 0, 0, 0]);
    }
}
