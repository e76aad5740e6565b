//! virtio-mmio register reads and writes in any order, size and offset,
//! on a virtio-blk device with an empty slot (so that a driver that gets
//! as far as DRIVER_OK and notifies runs the device on its own rings).
#![no_main]

use std::sync::{Arc, Mutex};

use ampoule_vmm::devices::bus::MmioDevice;
use ampoule_vmm::devices::virtio::block::{Block, Slot};
use ampoule_vmm::devices::virtio::mmio::MmioTransport;
use ampoule_vmm::devices::virtio::Interrupt;
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]) else {
        return;
    };
    let Ok(evt) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let slot = Arc::new(Mutex::new(Slot {
        id: "fuzz".into(),
        read_only: false,
        backing: None,
    }));
    let Ok(mut t) = MmioTransport::new(
        Box::new(Block::new(slot)),
        Arc::new(mem),
        Interrupt::new(evt),
    ) else {
        return;
    };
    // Each access: kind/size byte, offset u16, value u32.
    for op in data.chunks_exact(7) {
        let size = [1usize, 2, 4, 8][usize::from(op[0] & 3)];
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) % 0x200);
        let value = u64::from(u32::from_le_bytes([op[3], op[4], op[5], op[6]]));
        if op[0] & 4 == 0 {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..size]);
        } else {
            t.write(offset, &value.to_le_bytes()[..size]);
        }
    }
});
