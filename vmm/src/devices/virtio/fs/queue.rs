//! Checks of the guest's virtqueue configuration before it is handed to the
//! vhost-user backend, which trusts what the frontend tells it.
//!
//! A queue the guest marked ready must have a power-of-two size no larger
//! than the device's maximum, aligned rings (descriptor table 16 bytes,
//! available ring 2, used ring 4; virtio 1.x, 2.7), and each ring wholly
//! inside one region of guest memory that the backend maps (a memfd
//! region). The backend gets the rings as addresses in this process
//! (`VHOST_USER_SET_VRING_ADDR` carries frontend virtual addresses), so
//! they are translated here too.

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use virtio_queue::{Queue, QueueT};

/// A queue the guest configured wrongly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("{got} queues, the device has {want}")]
    Count { got: usize, want: usize },
    #[error("queue {index}: size {size} is not a power of two from 1 to {max}")]
    Size { index: usize, size: u16, max: u16 },
    #[error("queue {index}: {ring} at {addr:#x} is not {align}-byte aligned")]
    Align {
        index: usize,
        ring: &'static str,
        addr: u64,
        align: u64,
    },
    #[error(
        "queue {index}: {ring} at {addr:#x} ({len} bytes) is not inside shareable guest memory"
    )]
    Range {
        index: usize,
        ring: &'static str,
        addr: u64,
        len: u64,
    },
    #[error("no queue is ready")]
    NoneReady,
}

/// One ready queue, checked, as the backend is told about it: the rings
/// as addresses in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringSetup {
    pub index: usize,
    pub size: u16,
    pub next_avail: u16,
    pub desc_host: u64,
    pub avail_host: u64,
    pub used_host: u64,
}

/// Bytes of each ring of a queue of `size` entries (with the event-index
/// fields, which the backend may use whatever was negotiated).
pub fn ring_sizes(size: u16) -> [(&'static str, u64, u64); 3] {
    let n = u64::from(size);
    [
        ("descriptor table", 16 * n, 16),
        ("available ring", 6 + 2 * n, 2),
        ("used ring", 6 + 8 * n, 4),
    ]
}

/// The host address of `len` bytes at `addr` if they lie in one region
/// that is backed by a file the backend can map.
pub fn host_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    let region = mem.find_region(GuestAddress(addr))?;
    region.file_offset()?;
    let offset = addr.checked_sub(region.start_addr().0)?;
    let end = offset.checked_add(len)?;
    if len == 0 || end > region.len() {
        return None;
    }
    let host = region.get_host_address(MemoryRegionAddress(offset)).ok()?;
    Some(host as u64)
}

/// Checks one queue. `Ok(None)` for a queue the guest did not make ready
/// (the backend is not told about it).
pub fn check_queue(
    mem: &GuestMemoryMmap,
    index: usize,
    q: &Queue,
) -> Result<Option<VringSetup>, QueueError> {
    if !q.ready() {
        return Ok(None);
    }
    let rings = [q.desc_table(), q.avail_ring(), q.used_ring()];
    check_rings(mem, index, q.size(), q.max_size(), rings, q.next_avail()).map(Some)
}

/// Checks a ready queue of `size` entries (at most `max`) whose descriptor
/// table, available ring and used ring are at `rings`. `Queue` itself
/// refuses bad sizes and misaligned rings; they are checked again here,
/// where the values leave for another process.
pub fn check_rings(
    mem: &GuestMemoryMmap,
    index: usize,
    size: u16,
    max: u16,
    rings: [u64; 3],
    next_avail: u16,
) -> Result<VringSetup, QueueError> {
    if size == 0 || size > max || !size.is_power_of_two() {
        return Err(QueueError::Size { index, size, max });
    }
    let mut host = [0u64; 3];
    for (i, ((ring, len, align), addr)) in ring_sizes(size).into_iter().zip(rings).enumerate() {
        if addr % align != 0 {
            return Err(QueueError::Align {
                index,
                ring,
                addr,
                align,
            });
        }
        host[i] = host_range(mem, addr, len).ok_or(QueueError::Range {
            index,
            ring,
            addr,
            len,
        })?;
    }
    Ok(VringSetup {
        index,
        size,
        next_avail,
        desc_host: host[0],
        avail_host: host[1],
        used_host: host[2],
    })
}

/// Checks every queue of the device (`want` of them); at least one must be
/// ready.
pub fn check_queues(
    mem: &GuestMemoryMmap,
    queues: &[Queue],
    want: usize,
) -> Result<Vec<VringSetup>, QueueError> {
    if queues.len() != want {
        return Err(QueueError::Count {
            got: queues.len(),
            want,
        });
    }
    let mut out = Vec::with_capacity(want);
    for (i, q) in queues.iter().enumerate() {
        if let Some(v) = check_queue(mem, i, q)? {
            out.push(v);
        }
    }
    if out.is_empty() {
        return Err(QueueError::NoneReady);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::vm::{create_memory, MemoryBacking};

    const MIB: u64 = 1 << 20;

    fn queue(size: u16, desc: u64, avail: u64, used: u64) -> Queue {
        let mut st = Queue::new(256).unwrap().state();
        st.size = size;
        st.ready = true;
        st.desc_table = desc;
        st.avail_ring = avail;
        st.used_ring = used;
        Queue::try_from(st).expect("a queue state the transport can hold")
    }

    #[test]
    fn good_rings_translate_to_host_addresses_in_the_memfd_mapping() {
        let mem = create_memory(4 * MIB, MemoryBacking::SharedMemfd).unwrap();
        let q = queue(256, 0x10000, 0x11000, 0x12000);
        let v = check_queue(&mem, 1, &q).unwrap().unwrap();
        let base = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        assert_eq!(v.index, 1);
        assert_eq!(v.size, 256);
        assert_eq!(v.desc_host, base + 0x10000);
        assert_eq!(v.avail_host, base + 0x11000);
        assert_eq!(v.used_host, base + 0x12000);
        let mut not_ready = queue(256, 0x10000, 0x11000, 0x12000);
        not_ready.set_ready(false);
        assert_eq!(check_queue(&mem, 0, &not_ready), Ok(None));
    }

    #[test]
    fn rings_outside_memory_are_refused() {
        let mem = create_memory(4 * MIB, MemoryBacking::SharedMemfd).unwrap();
        let end = 4 * MIB;
        for (q, what) in [
            (
                queue(256, 0xffff_ffff_f000, 0x11000, 0x12000),
                "descriptor table",
            ),
            (queue(256, 0x10000, end, 0x12000), "available ring"),
            // The used ring (6 + 8 * 256 bytes) runs past the end.
            (queue(256, 0x10000, 0x11000, end - 0x100), "used ring"),
            (
                queue(256, u64::MAX - 0xf, 0x11000, 0x12000),
                "descriptor table",
            ),
        ] {
            let e = check_queue(&mem, 1, &q).unwrap_err();
            assert!(
                matches!(e, QueueError::Range { ring, .. } if ring == what),
                "{e}"
            );
        }
        assert!(host_range(&mem, 0x1000, 0).is_none());
        assert!(host_range(&mem, end - 4, 8).is_none());
        assert!(host_range(&mem, end - 8, 8).is_some());
        assert!(host_range(&mem, u64::MAX, u64::MAX).is_none());
    }

    #[test]
    fn misaligned_rings_and_bad_sizes_are_refused() {
        let mem = create_memory(4 * MIB, MemoryBacking::SharedMemfd).unwrap();
        let ok = [0x10000, 0x11000, 0x12000];
        assert!(check_rings(&mem, 0, 256, 256, ok, 0).is_ok());
        for (rings, ring) in [
            ([0x10008, 0x11000, 0x12000], "descriptor table"),
            ([0x10000, 0x11001, 0x12000], "available ring"),
            ([0x10000, 0x11000, 0x12002], "used ring"),
        ] {
            let e = check_rings(&mem, 0, 256, 256, rings, 0).unwrap_err();
            assert!(
                matches!(e, QueueError::Align { ring: r, .. } if r == ring),
                "{e}"
            );
        }
        for size in [0, 3, 512] {
            let e = check_rings(&mem, 0, size, 256, ok, 0).unwrap_err();
            assert!(matches!(e, QueueError::Size { .. }), "{e}");
        }
    }

    #[test]
    fn anonymous_memory_is_not_shareable_and_an_idle_device_is_refused() {
        let anon = create_memory(4 * MIB, MemoryBacking::Anonymous).unwrap();
        let q = queue(256, 0x10000, 0x11000, 0x12000);
        assert!(matches!(
            check_queue(&anon, 0, &q),
            Err(QueueError::Range { .. })
        ));
        let mem = create_memory(4 * MIB, MemoryBacking::SharedMemfd).unwrap();
        let idle = [Queue::new(256).unwrap(), Queue::new(256).unwrap()];
        assert_eq!(check_queues(&mem, &idle, 2), Err(QueueError::NoneReady));
        assert!(matches!(
            check_queues(&mem, &idle[..1], 2),
            Err(QueueError::Count { got: 1, want: 2 })
        ));
    }
}
