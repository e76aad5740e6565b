//! Dispatch of port I/O and MMIO exits to devices, and the VM-exit signal
//! shared by vCPU threads and the main loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::i8042::{self, I8042Action, I8042};
use super::serial::{SerialDevice, COM1_BASE};

/// Port that ends the VM when written (like QEMU's isa-debug-exit).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Guest reset, poweroff, triple fault or debug-exit port: a clean end.
    GuestStopped(String),
    /// A vCPU failed (emulation error, failed entry, ioctl error).
    VcpuError(String),
}

/// Shared "the VM is over" flag plus an eventfd the main loop polls.
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
    done: AtomicBool,
}

impl ExitSignal {
    /// A fresh signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            reason: Mutex::new(None),
            done: AtomicBool::new(false),
        })
    }

    /// Records the first reason and wakes the main loop.
    pub fn exit(&self, reason: ExitReason) {
        if let Ok(mut r) = self.reason.lock() {
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.done.store(true, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::error!("cannot signal VM exit: {e}");
        }
    }

    /// Whether the VM has ended.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// The recorded reason.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    /// The eventfd to poll.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// An MMIO device on the bus.
pub trait MmioDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` into the device window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// An MMIO device shared between vCPU threads.
pub type SharedMmio = Arc<Mutex<dyn MmioDevice>>;

/// Everything a vCPU exit can reach.
pub struct Bus {
    pub serial: Mutex<SerialDevice>,
    pub i8042: Mutex<I8042>,
    pub exit: Arc<ExitSignal>,
    /// (base, size, device), non-overlapping.
    pub mmio: Vec<(u64, u64, SharedMmio)>,
}

impl Bus {
    /// Port read; unclaimed ports read as all ones.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        match port {
            COM1_BASE..=0x3ff if data.len() == 1 => {
                if let Ok(mut s) = self.serial.lock() {
                    data[0] = s.read((port - COM1_BASE) as u8);
                }
            }
            i8042::DATA_PORT | i8042::CMD_PORT if data.len() == 1 => {
                if let Ok(mut k) = self.i8042.lock() {
                    data[0] = k.read(port);
                }
            }
            _ => {}
        }
    }

    /// Port write; unclaimed ports are ignored.
    pub fn pio_write(&self, port: u16, data: &[u8]) {
        match port {
            COM1_BASE..=0x3ff if data.len() == 1 => {
                if let Ok(mut s) = self.serial.lock() {
                    s.write((port - COM1_BASE) as u8, data[0]);
                }
            }
            i8042::DATA_PORT | i8042::CMD_PORT if data.len() == 1 => {
                let action = match self.i8042.lock() {
                    Ok(mut k) => k.write(port, data[0]),
                    Err(_) => I8042Action::None,
                };
                if action == I8042Action::Reset {
                    self.exit
                        .exit(ExitReason::GuestStopped("i8042 reset".into()));
                }
            }
            DEBUG_EXIT_PORT => {
                self.exit
                    .exit(ExitReason::GuestStopped("debug exit port".into()));
            }
            _ => {}
        }
    }

    fn find_mmio(&self, addr: u64) -> Option<(u64, &SharedMmio)> {
        self.mmio
            .iter()
            .find(|(base, size, _)| addr >= *base && addr - *base < *size)
            .map(|(base, _, d)| (addr - base, d))
    }

    /// MMIO read; unclaimed addresses read as zero.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some((off, dev)) = self.find_mmio(addr) {
            if let Ok(mut d) = dev.lock() {
                d.read(off, data);
            }
        }
    }

    /// MMIO write; unclaimed addresses are ignored.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((off, dev)) = self.find_mmio(addr) {
            if let Ok(mut d) = dev.lock() {
                d.write(off, data);
            }
        }
    }
}
