//! Shared by the queue targets: guest memory and descriptor chains built
//! from fuzz input.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM size; descriptors may point anywhere, inside or not.
pub const MEM_SIZE: usize = 0x10_0000;
/// Where the input's payload bytes are copied in guest memory.
pub const PAYLOAD: u64 = 0x8000;
const DESC_BYTES: usize = 16;
/// Most descriptors taken from one input.
const MAX_DESCS: usize = 8;

/// Reads a little-endian integer of `N` bytes, zero-padded.
fn le<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// Guest memory, and a queue of size 16 whose available ring holds the
/// chains described at the start of `data` (first byte: descriptor count;
/// then per descriptor addr u64, len u32, flags u16, next u16); the rest
/// of `data` is copied to [`PAYLOAD`].
pub fn build(data: &[u8]) -> Option<(GuestMemoryMmap, Queue)> {
    let (&count, rest) = data.split_first()?;
    let count = (count as usize % MAX_DESCS) + 1;
    if rest.len() < count * DESC_BYTES {
        return None;
    }
    let (descs, payload) = rest.split_at(count * DESC_BYTES);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    let payload = &payload[..payload.len().min(MEM_SIZE - PAYLOAD as usize)];
    mem.write_slice(payload, GuestAddress(PAYLOAD)).ok()?;
    let raw: Vec<RawDescriptor> = descs
        .chunks_exact(DESC_BYTES)
        .map(|d| {
            let addr = u64::from_le_bytes(le(&d[0..8]));
            let len = u32::from_le_bytes(le(&d[8..12]));
            let flags = u16::from_le_bytes(le(&d[12..14]));
            let next = u16::from_le_bytes(le(&d[14..16]));
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        })
        .collect();
    let q = MockSplitQueue::new(&mem, 16);
    q.add_desc_chains(&raw, 0).ok()?;
    let queue = q.create_queue().ok()?;
    Some((mem, queue))
}

/// Pops every chain of `queue` (at most 16) and hands it to `f`.
#[allow(dead_code)] // not every target that includes this module uses it
pub fn for_each_chain<F>(mem: &GuestMemoryMmap, queue: &mut Queue, mut f: F)
where
    F: FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>),
{
    for _ in 0..16 {
        let Ok(mut it) = queue.iter(mem) else { return };
        let Some(chain) = it.next() else { return };
        f(chain);
    }
}
