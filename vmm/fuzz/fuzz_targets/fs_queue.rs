//! virtio-fs: the checks of the guest's queue configuration before it is
//! handed to the vhost-user backend (sizes, alignment, rings inside the
//! shareable memory, translation to host addresses), and config-space
//! reads at any offset and size.
#![no_main]

use std::sync::OnceLock;

use ampoule_vmm::devices::virtio::fs::{config_space, queue, CONFIG_SIZE};
use ampoule_vmm::devices::virtio::read_config_bytes;
use ampoule_vmm::vstate::vm::{create_memory, MemoryBacking};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x10_0000;

fn memory() -> &'static GuestMemoryMmap {
    static M: OnceLock<GuestMemoryMmap> = OnceLock::new();
    M.get_or_init(|| create_memory(MEM_SIZE, MemoryBacking::SharedMemfd).expect("guest memory"))
}

fn le<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

fuzz_target!(|data: &[u8]| {
    let mem = memory();
    let base = mem.get_host_address(GuestAddress(0)).expect("base") as u64;
    // size u16, max u16, three ring addresses u64 (small ones near the
    // end of memory when the flag bit says so), next_avail u16.
    let size = u16::from_le_bytes(le(data));
    let max = u16::from_le_bytes(le(data.get(2..).unwrap_or_default()));
    let mut rings = [0u64; 3];
    for (i, r) in rings.iter_mut().enumerate() {
        let raw = u64::from_le_bytes(le(data.get(4 + 8 * i..).unwrap_or_default()));
        *r = if raw & 1 != 0 {
            (raw >> 1) % (MEM_SIZE + 0x1000)
        } else {
            raw
        };
    }
    let next = u16::from_le_bytes(le(data.get(28..).unwrap_or_default()));
    if let Ok(v) = queue::check_rings(mem, 1, size, max, rings, next) {
        assert!(v.size.is_power_of_two() && v.size <= max);
        for ((_, len, align), host) in
            queue::ring_sizes(v.size)
                .into_iter()
                .zip([v.desc_host, v.avail_host, v.used_host])
        {
            assert!(host >= base && host + len <= base + MEM_SIZE);
            assert_eq!((host - base) % align, 0);
        }
    }
    // Config space reads.
    let cfg = config_space("fuzz-tag");
    let off = u64::from_le_bytes(le(data.get(30..).unwrap_or_default()));
    let n = usize::from(data.get(38).copied().unwrap_or(4)) % 16;
    let mut buf = vec![0xa5u8; n];
    read_config_bytes(&cfg, off, &mut buf);
    if off >= CONFIG_SIZE as u64 {
        assert!(buf.iter().all(|&b| b == 0));
    }
});
