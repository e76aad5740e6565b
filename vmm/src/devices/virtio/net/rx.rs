//! The RX queue: frames from the tap into the buffers the guest posted, a
//! bounded number per pass.
//!
//! A frame is read from the tap only once a buffer for it has been taken
//! off the available ring; with no buffer the pass stops and the frame
//! stays in the kernel's tap queue (whose length the kernel bounds, dropping
//! beyond it), and the device thread stops polling the tap until the guest
//! posts buffers again (an RX notification).
//!
//! - A buffer is one chain of device-writable descriptors inside guest
//!   memory. Any other chain (a read-only descriptor, one outside memory,
//!   a loop, too many descriptors, a head index out of range) is returned
//!   with length 0 without taking a frame, and counted.
//! - A frame larger than the buffer it was read for is dropped (counted)
//!   and that buffer is returned with length 0: a frame is never cut nor
//!   spread over several buffers (VIRTIO_NET_F_MRG_RXBUF is not offered).
//! - Each frame gets a fresh 12-byte header: no flags, no GSO,
//!   `num_buffers` 1. A frame the tap hands over with a GSO type or a
//!   partial checksum (impossible with offloads off, see [`super::tap`]),
//!   or too short or too long, is dropped and its buffer kept for the next.

use std::io::ErrorKind;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{ETH_HLEN, MAX_CHAIN_DESCRIPTORS, MAX_FRAME_WITH_HDR, VNET_HDR_LEN};

/// VIRTIO_NET_HDR_F_NEEDS_CSUM.
const HDR_F_NEEDS_CSUM: u8 = 1;

/// Size of the buffer a frame is read into: one byte more than the largest
/// frame, so that a longer one is seen.
pub const READ_BUF_LEN: usize = MAX_FRAME_WITH_HDR + 1;

/// Why an RX buffer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RxBufferError {
    #[error("empty chain (head index out of range?)")]
    Empty,
    #[error("device-readable descriptor in an RX chain")]
    ReadOnly,
    #[error("more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("the chain does not end (a loop or a next index out of range)")]
    Unterminated,
    #[error("descriptor at {addr:#x} ({len} bytes) is outside guest memory")]
    Memory { addr: u64, len: u32 },
}

/// Why a frame from the tap was dropped (its buffer is kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes with its header is too short")]
    TooShort(usize),
    #[error("frame longer than {MAX_FRAME_WITH_HDR} bytes with its header")]
    TooLong,
    #[error("frame with offloads (flags {flags:#x}, gso_type {gso_type})")]
    Offload { flags: u8, gso_type: u8 },
}

/// Checks the chain made of `descs` and puts its regions in `regions`
/// (cleared first); returns its capacity in bytes.
pub fn parse_rx_chain<I>(
    mem: &GuestMemoryMmap,
    descs: I,
    regions: &mut Vec<(GuestAddress, u32)>,
) -> Result<usize, RxBufferError>
where
    I: IntoIterator<Item = Descriptor>,
{
    regions.clear();
    let mut capacity = 0usize;
    let mut last_has_next = false;
    for d in descs {
        if regions.len() >= MAX_CHAIN_DESCRIPTORS {
            return Err(RxBufferError::TooManyDescriptors);
        }
        if !d.is_write_only() {
            return Err(RxBufferError::ReadOnly);
        }
        let len = d.len();
        if len > 0 && !GuestMemoryBackend::check_range(mem, d.addr(), len as usize) {
            return Err(RxBufferError::Memory {
                addr: d.addr().0,
                len,
            });
        }
        regions.push((d.addr(), len));
        // At most MAX_CHAIN_DESCRIPTORS * u32::MAX: no overflow in 64 bits.
        capacity = capacity.saturating_add(len as usize);
        last_has_next = d.has_next();
    }
    if regions.is_empty() {
        return Err(RxBufferError::Empty);
    }
    if last_has_next {
        return Err(RxBufferError::Unterminated);
    }
    Ok(capacity)
}

/// Writes `frame` across `regions`, which hold at least `frame.len()` bytes.
pub fn write_frame(
    mem: &GuestMemoryMmap,
    regions: &[(GuestAddress, u32)],
    frame: &[u8],
) -> Result<(), RxBufferError> {
    let mut rest = frame;
    for &(addr, len) in regions {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(len as usize);
        mem.write_slice(&rest[..n], addr)
            .map_err(|_| RxBufferError::Memory { addr: addr.0, len })?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Checks a frame of `len` bytes (header included) read into `buf`, and
/// gives it the header the guest gets.
pub fn check_frame(buf: &mut [u8], len: usize) -> Result<(), FrameError> {
    if len < VNET_HDR_LEN + ETH_HLEN {
        return Err(FrameError::TooShort(len));
    }
    if len > MAX_FRAME_WITH_HDR || len > buf.len() {
        return Err(FrameError::TooLong);
    }
    let (flags, gso_type) = (buf[0], buf[1]);
    if flags & HDR_F_NEEDS_CSUM != 0 || gso_type != 0 {
        return Err(FrameError::Offload { flags, gso_type });
    }
    // No flags (DATA_VALID needs VIRTIO_NET_F_GUEST_CSUM), num_buffers 1.
    buf[..VNET_HDR_LEN].fill(0);
    buf[VNET_HDR_LEN - 2..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
    Ok(())
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct RxPass {
    /// Chains put in the used ring.
    pub used: usize,
    /// Frames given to the guest, and their bytes (without the header).
    pub delivered: u64,
    pub bytes: u64,
    /// Frames dropped because the buffer was too small.
    pub too_small: u64,
    /// Malformed buffers returned unused, and the last reason.
    pub bad_buffers: u64,
    pub last_bad_buffer: Option<RxBufferError>,
    /// Frames from the tap dropped for their content, and the last reason.
    pub bad_frames: u64,
    pub last_bad_frame: Option<FrameError>,
    /// The guest has no buffer posted: stop reading the tap.
    pub no_buffers: bool,
    /// The tap had no more frames.
    pub source_empty: bool,
    /// The budget ran out with buffers and frames left.
    pub more: bool,
    /// The queue itself is broken (not ready, or a bad available index).
    pub queue_error: Option<String>,
    /// Reading the tap failed.
    pub read_error: Option<std::io::Error>,
}

/// Moves at most `budget` frames (or buffers) from `read` into the guest's
/// buffers on `q`. `read` fills its argument with one frame and returns its
/// length: with its 12-byte header when `vnet_hdr`, else the frame alone
/// (the header is added here). `buf` holds one frame at a time and must be
/// [`READ_BUF_LEN`] bytes long.
#[allow(clippy::too_many_arguments)]
pub fn fill_rx<R>(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    budget: usize,
    vnet_hdr: bool,
    regions: &mut Vec<(GuestAddress, u32)>,
    buf: &mut [u8],
    mut read: R,
) -> RxPass
where
    R: FnMut(&mut [u8]) -> std::io::Result<usize>,
{
    let mut pass = RxPass::default();
    let offset = if vnet_hdr { 0 } else { VNET_HDR_LEN };
    let mut work = 0usize;
    loop {
        if work >= budget {
            pass.more = true;
            return pass;
        }
        work += 1;
        let chain = match q.iter(mem) {
            Ok(mut it) => match it.next() {
                Some(c) => c,
                None => {
                    pass.no_buffers = true;
                    return pass;
                }
            },
            Err(e) => {
                pass.queue_error = Some(format!("rx queue: {e:?}"));
                return pass;
            }
        };
        let head = chain.head_index();
        let capacity = match parse_rx_chain(mem, chain, regions) {
            Ok(c) => c,
            Err(e) => {
                pass.bad_buffers += 1;
                pass.last_bad_buffer = Some(e);
                if q.add_used(mem, head, 0).is_ok() {
                    pass.used += 1;
                }
                continue;
            }
        };
        let Some(space) = buf.get_mut(offset..) else {
            q.go_to_previous_position();
            pass.read_error = Some(std::io::Error::other("read buffer too small"));
            return pass;
        };
        let len = match read(space) {
            Ok(n) => n.saturating_add(offset),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                q.go_to_previous_position();
                pass.source_empty = true;
                return pass;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                q.go_to_previous_position();
                continue;
            }
            Err(e) => {
                q.go_to_previous_position();
                pass.read_error = Some(e);
                return pass;
            }
        };
        if let Err(e) = check_frame(buf, len) {
            q.go_to_previous_position();
            pass.bad_frames += 1;
            pass.last_bad_frame = Some(e);
            continue;
        }
        let used_len = if len > capacity {
            pass.too_small += 1;
            0
        } else {
            match write_frame(mem, regions, &buf[..len]) {
                Ok(()) => {
                    pass.delivered += 1;
                    pass.bytes += (len - VNET_HDR_LEN) as u64;
                    // len <= MAX_FRAME_WITH_HDR.
                    len as u32
                }
                Err(e) => {
                    pass.bad_buffers += 1;
                    pass.last_bad_buffer = Some(e);
                    0
                }
            }
        };
        if q.add_used(mem, head, used_len).is_ok() {
            pass.used += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mock_queue::{d, mem, used, F_NEXT, F_WRITE};
    use std::collections::VecDeque;

    /// A tap with `frames` queued (each with a zero header when `vnet`).
    fn source(frames: &[Vec<u8>], vnet: bool) -> VecDeque<Vec<u8>> {
        frames
            .iter()
            .map(|f| {
                let mut v = if vnet {
                    vec![0u8; VNET_HDR_LEN]
                } else {
                    Vec::new()
                };
                v.extend_from_slice(f);
                v
            })
            .collect()
    }

    fn reader(src: &mut VecDeque<Vec<u8>>) -> impl FnMut(&mut [u8]) -> std::io::Result<usize> + '_ {
        move |b: &mut [u8]| match src.pop_front() {
            Some(f) => {
                let n = f.len().min(b.len());
                b[..n].copy_from_slice(&f[..n]);
                Ok(n)
            }
            None => Err(ErrorKind::WouldBlock.into()),
        }
    }

    fn queue(m: &GuestMemoryMmap, chains: &[Descriptor]) -> Queue {
        crate::devices::virtio::mock_queue::queue(m, 256, chains)
    }

    /// One pass of at most `budget` frames from `src`, with fresh buffers.
    fn pass(
        m: &GuestMemoryMmap,
        q: &mut Queue,
        budget: usize,
        vnet: bool,
        src: &mut VecDeque<Vec<u8>>,
    ) -> RxPass {
        let mut regions = Vec::new();
        let mut buf = vec![0u8; READ_BUF_LEN];
        fill_rx(m, q, budget, vnet, &mut regions, &mut buf, reader(src))
    }

    #[test]
    fn frames_fill_posted_buffers_with_a_fresh_header_both_tap_modes() {
        for vnet in [true, false] {
            let m = mem();
            let mut q = queue(
                &m,
                &[
                    d(0x8000, 2048, F_WRITE, 0),
                    // Header and frame in separate descriptors.
                    d(0x9000, 12, F_WRITE | F_NEXT, 2),
                    d(0xa000, 2048, F_WRITE, 0),
                ],
            );
            let f1: Vec<u8> = (0..60u8).collect();
            let f2: Vec<u8> = (0..100u8).rev().collect();
            let mut src = source(&[f1.clone(), f2.clone(), f1.clone()], vnet);
            if vnet {
                // DATA_VALID from the host does not reach the guest.
                src[0][0] = 2;
            }
            let p = pass(&m, &mut q, 64, vnet, &mut src);
            assert_eq!((p.delivered, p.used, p.bytes), (2, 2, 160));
            assert!(p.no_buffers && !p.source_empty);
            // The third frame waits in the tap for a buffer.
            assert_eq!(src.len(), 1);
            let mut hdr = [0u8; 12];
            m.read_slice(&mut hdr, GuestAddress(0x8000)).unwrap();
            assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
            let mut got = vec![0u8; 60];
            m.read_slice(&mut got, GuestAddress(0x800c)).unwrap();
            assert_eq!(got, f1);
            let mut got = vec![0u8; 100];
            m.read_slice(&mut got, GuestAddress(0xa000)).unwrap();
            assert_eq!(got, f2);
            assert_eq!(used(&m, &q, 0), (0, 72));
            assert_eq!(used(&m, &q, 1), (1, 112));
        }
    }

    #[test]
    fn small_and_malformed_buffers_never_overflow_and_are_returned_empty() {
        let m = mem();
        m.write_slice(&[0xee; 64], GuestAddress(0x8000)).unwrap();
        let mut q = queue(
            &m,
            &[
                // Read-only, outside memory: no frame taken.
                d(0x8000, 64, 0, 0),
                d(0x7fff_0000_0000, 2048, F_WRITE, 0),
                // 4 bytes: the frame is dropped, the buffer returned empty.
                d(0x8000, 4, F_WRITE, 0),
                d(0x9000, 2048, F_WRITE, 0),
                // A next index out of range: no frame taken.
                d(0xc000, 2048, F_WRITE | F_NEXT, 60000),
            ],
        );
        let mut src = source(&[vec![1; 60], vec![2; 60]], true);
        let p = pass(&m, &mut q, 64, true, &mut src);
        assert_eq!((p.bad_buffers, p.too_small, p.delivered), (3, 1, 1));
        assert_eq!(p.used, 5);
        assert_eq!(used(&m, &q, 2), (2, 0));
        assert_eq!(used(&m, &q, 3), (3, 72));
        assert!(p.no_buffers);
        // The 4-byte buffer was not written.
        let mut b = [0u8; 8];
        m.read_slice(&mut b, GuestAddress(0x8000)).unwrap();
        assert_eq!(b, [0xee; 8]);
        let mut got = [0u8; 60];
        m.read_slice(&mut got, GuestAddress(0x900c)).unwrap();
        assert_eq!(got, [2; 60]);
    }

    #[test]
    fn bad_frames_keep_their_buffer_and_an_empty_tap_gives_it_back() {
        let m = mem();
        let mut q = queue(&m, &[d(0x8000, 2048, F_WRITE, 0)]);
        let mut gso = vec![0u8; 72];
        gso[1] = 1;
        let mut csum = vec![0u8; 72];
        csum[0] = 1;
        let mut src: VecDeque<Vec<u8>> = [vec![0u8; 20], gso, csum, vec![0u8; 70_000]]
            .into_iter()
            .collect();
        let p = pass(&m, &mut q, 64, true, &mut src);
        assert_eq!((p.bad_frames, p.delivered, p.used), (4, 0, 0));
        assert!(p.source_empty && !p.no_buffers);
        // The buffer is still available.
        assert_eq!(q.next_avail(), 0);
    }

    #[test]
    fn a_pass_stops_at_its_budget() {
        let m = mem();
        let chains: Vec<Descriptor> = (0..100)
            .map(|i| d(0x1_0000 + 2048 * i, 2048, F_WRITE, 0))
            .collect();
        let mut q = queue(&m, &chains);
        let frames: Vec<Vec<u8>> = (0..100).map(|_| vec![7u8; 100]).collect();
        let mut src = source(&frames, false);
        let p = pass(&m, &mut q, 32, false, &mut src);
        assert_eq!(p.delivered, 32);
        assert!(p.more);
        assert_eq!(src.len(), 68);
    }
}
