//! The virtio-mmio transport (version 2, virtio 1.x), as Linux's
//! `virtio_mmio` driver uses it with devices declared on the command line
//! (`virtio_mmio.device=4K@0xd0000000:5`).
//!
//! Every register access from the guest is checked: unknown offsets, wrong
//! access sizes, writes to read-only registers and out-of-range queue
//! selections are ignored (and logged, rate-limited).

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{should_log, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::MmioDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4150_4d41; // "AMPA"

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
    config_generation: u32,
    bad_accesses: u64,
}

impl MmioTransport {
    /// Wraps `device`; its interrupt goes through `interrupt`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Interrupt,
    ) -> Result<Self, String> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(|e| format!("queue of size {max}: {e:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            activated: false,
            config_generation: 0,
            bad_accesses: 0,
        })
    }

    /// Bumps the config generation (after the device config changed).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// The device, for the control socket.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue addresses and size can only change before DRIVER_OK and while
    /// the queue is not ready.
    fn queue_config_allowed(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
    }

    fn bad(&mut self, what: &str, offset: u64) {
        if should_log(&mut self.bad_accesses) {
            tracing::warn!(
                count = self.bad_accesses,
                "virtio-mmio (device {}): {what} at offset {offset:#x}",
                self.device.device_type()
            );
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits may only be added, never removed (except by reset).
        if value & self.status != self.status {
            self.bad("status bits cleared without reset", reg::STATUS);
            return;
        }
        let new = value & !self.status;
        if new & STATUS_FEATURES_OK != 0 {
            let offered = self.offered_features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                // Refuse: FEATURES_OK stays clear, the driver sees it.
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        if new & STATUS_DRIVER_OK != 0 && !self.activated {
            if self.status & STATUS_FEATURES_OK == 0 {
                self.bad("DRIVER_OK before FEATURES_OK", reg::STATUS);
                self.status = value | STATUS_NEEDS_RESET;
                return;
            }
            let mem: &GuestMemoryMmap = &self.mem;
            let bad_queue = self
                .queues
                .iter()
                .position(|q| q.ready() && !q.is_valid(mem));
            if let Some(i) = bad_queue {
                self.bad(
                    &format!("queue {i} has invalid addresses or size"),
                    reg::STATUS,
                );
                self.status = value | STATUS_NEEDS_RESET;
                return;
            }
            let copies: Result<Vec<Queue>, _> = self
                .queues
                .iter()
                .map(|q| Queue::try_from(q.state()))
                .collect();
            let queues = match copies {
                Ok(q) => q,
                Err(e) => {
                    self.bad(&format!("queue state: {e:?}"), reg::STATUS);
                    self.status = value | STATUS_NEEDS_RESET;
                    return;
                }
            };
            match self.device.activate(
                self.mem.clone(),
                queues,
                self.driver_features,
                self.interrupt.clone(),
            ) {
                Ok(()) => self.activated = true,
                Err(e) => {
                    tracing::warn!(
                        "virtio device {} activation failed: {e}",
                        self.device.device_type()
                    );
                    self.status = value | STATUS_NEEDS_RESET;
                    return;
                }
            }
        }
        self.status = value;
        let _ = (STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FAILED);
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK != 0 || self.status & STATUS_DRIVER == 0 {
                    self.bad("driver features written in the wrong state", offset);
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => self.bad("driver features select out of range", offset),
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                if !self.queue_config_allowed() {
                    self.bad("queue register written in the wrong state", offset);
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    self.bad("queue select out of range", offset);
                    return;
                };
                if offset != reg::QUEUE_READY && q.ready() {
                    self.bad("queue register written while the queue is ready", offset);
                    return;
                }
                match offset {
                    reg::QUEUE_NUM => {
                        let size = u16::try_from(v).unwrap_or(0);
                        if q.try_set_size(size).is_err() {
                            self.bad("invalid queue size", offset);
                        }
                    }
                    reg::QUEUE_READY => q.set_ready(v == 1),
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(v), None),
                    reg::QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(v)),
                    reg::QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            reg::QUEUE_NOTIFY => {
                if self.activated && (v as usize) < self.queues.len() {
                    self.device.queue_notify(v);
                } else {
                    self.bad("notify of an inactive device or unknown queue", offset);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            _ => self.bad("write to a read-only or unknown register", offset),
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => {
                let f = self.offered_features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => {
                if self.status & STATUS_DRIVER_OK != 0 && self.device.needs_reset() {
                    self.status | STATUS_NEEDS_RESET
                } else {
                    self.status
                }
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                self.bad("read of a write-only or unknown register", offset);
                0
            }
        }
    }
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            data.fill(0);
            self.bad("register read not 4 bytes aligned", offset);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.bad("register write not 4 bytes", offset);
            return;
        };
        if offset & 3 != 0 {
            self.bad("unaligned register write", offset);
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}
