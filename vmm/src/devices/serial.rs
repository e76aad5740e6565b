//! 8250 UART (vm-superio) at COM1, its interrupt through an irqfd, output to
//! the serial log (capped, see [`super::serial_log`]) or stdout.

use std::fs::File;
use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::serial_log::CappedLog;

/// COM1 base port.
pub const COM1_BASE: u16 = 0x3f8;
/// COM1 IRQ.
pub const COM1_IRQ: u32 = 4;

/// Raises the serial IRQ through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Unbuffered output: every guest byte reaches the file at once.
pub enum SerialOut {
    /// The serial log file, kept under its size limit.
    Log(CappedLog),
    /// The VMM's stdout, for whoever reads it.
    Stdout(File),
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SerialOut::Log(l) => l.write(buf),
            SerialOut::Stdout(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The COM1 device.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, SerialOut>,
    write_errors: u64,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), out),
            write_errors: 0,
        }
    }

    /// Guest reads register `offset`.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// Guest writes register `offset`.
    pub fn write(&mut self, offset: u8, value: u8) {
        if let Err(e) = self.uart.write(offset, value) {
            self.write_errors += 1;
            if self.write_errors.is_power_of_two() {
                tracing::warn!(count = self.write_errors, "serial output failed: {e:?}");
            }
        }
    }
}
