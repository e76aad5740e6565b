//! Minimal i8042 keyboard controller: the reset line (command 0xFE on port
//! 0x64, what Linux's `reboot` uses on x86) and Ctrl-Alt-Del injection for a
//! graceful shutdown request.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Status / command port.
pub const CMD_PORT: u16 = 0x64;
/// Keyboard IRQ.
pub const KBD_IRQ: u32 = 1;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET: u8 = 0xfe;

const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

const CTR_KBD_INT: u8 = 0x01;

/// Scancodes (set 2) of Ctrl, Alt, Del presses, as Firecracker-compatible
/// guests expect.
pub const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];
const QUEUE_MAX: usize = 64;

/// What a guest write asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum I8042Action {
    None,
    /// The guest pulsed the CPU reset line.
    Reset,
}

/// The controller.
pub struct I8042 {
    queue: VecDeque<u8>,
    ctr: u8,
    status: u8,
    pending_cmd: Option<u8>,
    outp: u8,
    irq: EventFd,
}

impl I8042 {
    /// A controller raising IRQ 1 through `irq`.
    pub fn new(irq: EventFd) -> Self {
        I8042 {
            queue: VecDeque::new(),
            ctr: CTR_KBD_INT,
            status: SB_SYSTEM | SB_KBD_ENABLED,
            pending_cmd: None,
            outp: 0x01,
            irq,
        }
    }

    fn push(&mut self, b: u8) {
        if self.queue.len() < QUEUE_MAX {
            self.queue.push_back(b);
        }
    }

    fn raise(&self) {
        if self.ctr & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.write(1) {
                tracing::warn!("i8042 interrupt failed: {e}");
            }
        }
    }

    /// Queues the Ctrl-Alt-Del key presses and interrupts the guest.
    pub fn send_ctrl_alt_del(&mut self) {
        for b in CTRL_ALT_DEL {
            self.push(b);
        }
        self.raise();
    }

    /// Guest reads `port`.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            CMD_PORT => {
                let avail = if self.queue.is_empty() {
                    0
                } else {
                    SB_OUT_DATA_AVAIL
                };
                self.status | avail
            }
            DATA_PORT => {
                let b = self.queue.pop_front().unwrap_or(0);
                if !self.queue.is_empty() {
                    self.raise();
                }
                b
            }
            _ => 0xff,
        }
    }

    /// Guest writes `value` to `port`.
    pub fn write(&mut self, port: u16, value: u8) -> I8042Action {
        match port {
            CMD_PORT => {
                self.status |= SB_LAST_WAS_CMD;
                match value {
                    CMD_RESET => return I8042Action::Reset,
                    CMD_READ_CTR => self.push(self.ctr),
                    CMD_SELF_TEST => self.push(0x55),
                    CMD_KBD_TEST => self.push(0x00),
                    CMD_READ_OUTP => self.push(self.outp),
                    CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending_cmd = Some(value),
                    _ => {}
                }
            }
            DATA_PORT => {
                self.status &= !SB_LAST_WAS_CMD;
                match self.pending_cmd.take() {
                    Some(CMD_WRITE_CTR) => self.ctr = value,
                    Some(CMD_WRITE_OUTP) => {
                        self.outp = value;
                        // Output port bit 0 low holds the CPU in reset.
                        if value & 1 == 0 {
                            return I8042Action::Reset;
                        }
                    }
                    _ => {
                        // A keyboard command: acknowledge it.
                        self.push(0xfa);
                        self.raise();
                    }
                }
            }
            _ => {}
        }
        I8042Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_and_ctrl_alt_del_queue_work() {
        let mut k = I8042::new(EventFd::new(0).unwrap());
        assert_eq!(k.write(CMD_PORT, CMD_RESET), I8042Action::Reset);
        assert_eq!(k.read(CMD_PORT) & SB_OUT_DATA_AVAIL, 0);
        k.send_ctrl_alt_del();
        let mut got = vec![];
        while k.read(CMD_PORT) & SB_OUT_DATA_AVAIL != 0 {
            got.push(k.read(DATA_PORT));
        }
        assert_eq!(got, CTRL_ALT_DEL);
        for _ in 0..1000 {
            k.send_ctrl_alt_del();
        }
        assert!(k.queue.len() <= QUEUE_MAX);
    }
}
