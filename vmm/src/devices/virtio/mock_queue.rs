//! Unit-test helpers for the devices' queue code: a guest memory of 1 MiB
//! and split queues (virtio-queue's mock) whose available ring holds the
//! chains a test builds.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// VIRTQ_DESC_F_NEXT.
pub const F_NEXT: u16 = 1;
/// VIRTQ_DESC_F_WRITE.
pub const F_WRITE: u16 = 2;

/// 1 MiB of guest memory at address 0.
pub fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// A descriptor.
pub fn d(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
    Descriptor::new(addr, len, flags, next)
}

/// A queue of `size` whose descriptor table holds `descs` and whose
/// available ring holds the chains they make.
pub fn queue(m: &GuestMemoryMmap, size: u16, descs: &[Descriptor]) -> Queue {
    let q = MockSplitQueue::new(m, size);
    let raw: Vec<RawDescriptor> = descs.iter().map(|&d| RawDescriptor::from(d)).collect();
    q.add_desc_chains(&raw, 0).unwrap();
    q.create_queue().unwrap()
}

/// Used ring entry `i` of `q`: (head index, length).
pub fn used(m: &GuestMemoryMmap, q: &Queue, i: u64) -> (u32, u32) {
    let base = q.used_ring() + 4 + 8 * i;
    let id: u32 = m.read_obj(GuestAddress(base)).unwrap();
    let len: u32 = m.read_obj(GuestAddress(base + 4)).unwrap();
    (id, len)
}
