//! Emulated devices and the port-I/O / MMIO dispatch used by vCPU threads.

pub mod bus;
pub mod i8042;
pub mod serial;
pub mod serial_log;
pub mod virtio;
