//! The TX queue: guest frames, a bounded number per pass, each copied into
//! one reused buffer and handed on at once.
//!
//! A TX chain is the 12-byte virtio-net header then the Ethernet frame, in
//! any number of device-readable descriptors. A chain fails alone (it is
//! returned to the guest as used, counted, and the pass goes on) when it:
//!
//! - holds more than [`MAX_FRAME_WITH_HDR`] bytes (its copy stops there),
//! - has more than [`MAX_CHAIN_DESCRIPTORS`] descriptors, ends with a
//!   descriptor that still says NEXT (a loop, which virtio-queue cuts after
//!   a queue's worth of descriptors, or a next index out of range), or has
//!   no descriptor at all (a head index out of range),
//! - has a device-writable descriptor or one outside guest memory,
//! - is shorter than the header and an Ethernet header,
//! - asks for an offload that was not offered (a header with flags or a
//!   GSO type).
//!
//! Nothing is kept between chains: at most one frame of
//! [`MAX_FRAME_WITH_HDR`] bytes is ever held, and a pass ends after
//! `budget` chains so that RX and the other events get their turn.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{ETH_HLEN, MAX_CHAIN_DESCRIPTORS, MAX_FRAME_WITH_HDR, VNET_HDR_LEN};

/// Why a TX chain was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("empty chain (head index out of range?)")]
    Empty,
    #[error("device-writable descriptor in a TX chain")]
    WriteOnly,
    #[error("more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("the chain does not end (a loop or a next index out of range)")]
    Unterminated,
    #[error("frame of at least {0} bytes with its header, more than {MAX_FRAME_WITH_HDR}")]
    Oversized(u64),
    #[error("descriptor at {addr:#x} ({len} bytes) is outside guest memory")]
    Memory { addr: u64, len: u32 },
    #[error("frame of {0} bytes with its header is too short")]
    TooShort(usize),
    #[error(
        "header asks for offloads that were not offered (flags {flags:#x}, gso_type {gso_type})"
    )]
    Offload { flags: u8, gso_type: u8 },
}

impl TxError {
    /// Whether the chain was dropped for its size alone.
    pub fn is_oversized(&self) -> bool {
        matches!(self, TxError::Oversized(_))
    }
}

/// Copies the chain made of `descs` into `buf` (cleared first; it never
/// grows past [`MAX_FRAME_WITH_HDR`] bytes) and checks it. On success
/// `buf` holds the header, zeroed, then the frame.
pub fn read_tx_chain<I>(mem: &GuestMemoryMmap, descs: I, buf: &mut Vec<u8>) -> Result<(), TxError>
where
    I: IntoIterator<Item = Descriptor>,
{
    buf.clear();
    // Once: resizes below stay within it.
    if buf.capacity() < MAX_FRAME_WITH_HDR {
        buf.reserve_exact(MAX_FRAME_WITH_HDR);
    }
    let mut count = 0usize;
    let mut total = 0u64;
    let mut last_has_next = false;
    for d in descs {
        count += 1;
        if count > MAX_CHAIN_DESCRIPTORS {
            return Err(TxError::TooManyDescriptors);
        }
        if d.is_write_only() {
            return Err(TxError::WriteOnly);
        }
        total += u64::from(d.len());
        if total > MAX_FRAME_WITH_HDR as u64 {
            return Err(TxError::Oversized(total));
        }
        let start = buf.len();
        // total <= MAX_FRAME_WITH_HDR: fits in usize.
        buf.resize(start + d.len() as usize, 0);
        mem.read_slice(&mut buf[start..], d.addr())
            .map_err(|_| TxError::Memory {
                addr: d.addr().0,
                len: d.len(),
            })?;
        last_has_next = d.has_next();
    }
    if count == 0 {
        return Err(TxError::Empty);
    }
    if last_has_next {
        return Err(TxError::Unterminated);
    }
    if buf.len() < VNET_HDR_LEN + ETH_HLEN {
        return Err(TxError::TooShort(buf.len()));
    }
    let (flags, gso_type) = (buf[0], buf[1]);
    if flags != 0 || gso_type != 0 {
        return Err(TxError::Offload { flags, gso_type });
    }
    // The other fields mean nothing without offloads: the tap gets zeros.
    buf[..VNET_HDR_LEN].fill(0);
    Ok(())
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TxPass {
    /// Chains taken off the available ring.
    pub popped: usize,
    /// Chains put in the used ring (the others had a head index out of
    /// range: there is no used entry to give them).
    pub used: usize,
    /// The budget ran out: the queue may hold more.
    pub more: bool,
    /// The queue itself is broken (not ready, or a bad available index).
    pub queue_error: Option<String>,
}

/// Pops at most `budget` chains from `q`, calling `f` on each right away
/// with the header and frame (`buf`'s contents) or why it was dropped.
pub fn drain_tx<F>(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    budget: usize,
    buf: &mut Vec<u8>,
    mut f: F,
) -> TxPass
where
    F: FnMut(Result<&[u8], TxError>),
{
    let mut pass = TxPass::default();
    while pass.popped < budget {
        let chain = match q.iter(mem) {
            Ok(mut it) => match it.next() {
                Some(c) => c,
                None => return pass,
            },
            Err(e) => {
                pass.queue_error = Some(format!("tx queue: {e:?}"));
                return pass;
            }
        };
        pass.popped += 1;
        let head = chain.head_index();
        match read_tx_chain(mem, chain, buf) {
            Ok(()) => f(Ok(&buf[..])),
            Err(e) => f(Err(e)),
        }
        if q.add_used(mem, head, 0).is_ok() {
            pass.used += 1;
        }
    }
    pass.more = true;
    pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mock_queue::{d, mem, queue, F_NEXT, F_WRITE};
    use vm_memory::GuestAddress;

    const HDR: u64 = 0x8000;
    const FRAME: u64 = 0x9000;
    const BIG: u64 = 0x2_0000;

    fn frame(m: &GuestMemoryMmap) {
        m.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(HDR))
            .unwrap();
        let f: Vec<u8> = (0..60u8).collect();
        m.write_slice(&f, GuestAddress(FRAME)).unwrap();
    }

    #[test]
    fn a_header_and_frame_in_two_descriptors_are_gathered_with_a_zeroed_header() {
        let m = mem();
        frame(&m);
        // Fields that mean nothing without offloads are cleared.
        m.write_slice(&[0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 7, 7], GuestAddress(HDR))
            .unwrap();
        let mut buf = Vec::new();
        read_tx_chain(&m, [d(HDR, 12, F_NEXT, 1), d(FRAME, 60, 0, 0)], &mut buf).unwrap();
        assert_eq!(buf.len(), 72);
        assert_eq!(&buf[..12], &[0u8; 12]);
        assert_eq!(&buf[12..], (0..60u8).collect::<Vec<_>>().as_slice());
    }

    #[test]
    fn bad_chains_are_refused_with_their_reason_and_never_overflow() {
        let m = mem();
        frame(&m);
        let mut buf = Vec::new();
        let mut check = |descs: Vec<Descriptor>, want: TxError| {
            assert_eq!(read_tx_chain(&m, descs, &mut buf), Err(want));
            assert!(buf.len() <= MAX_FRAME_WITH_HDR);
        };
        check(vec![], TxError::Empty);
        check(vec![d(HDR, 12, F_NEXT | F_WRITE, 1)], TxError::WriteOnly);
        // Two descriptors of 40000 bytes: the copy stops at the limit.
        check(
            vec![d(BIG, 40_000, F_NEXT, 1), d(BIG, 40_000, 0, 0)],
            TxError::Oversized(80_000),
        );
        check(
            vec![d(BIG, u32::MAX, 0, 0)],
            TxError::Oversized(u64::from(u32::MAX)),
        );
        check(
            vec![d(HDR, 12, F_NEXT, 1), d(0x7fff_0000_0000, 64, 0, 0)],
            TxError::Memory {
                addr: 0x7fff_0000_0000,
                len: 64,
            },
        );
        check(
            vec![d(HDR, 12, F_NEXT, 1), d(FRAME, 4, 0, 0)],
            TxError::TooShort(16),
        );
        // What virtio-queue yields for a chain looping on itself: a
        // queue's worth of descriptors, the last still saying NEXT.
        check(
            (0..256).map(|_| d(FRAME, 64, F_NEXT, 3)).collect(),
            TxError::Unterminated,
        );
        // An indirect table may hold many more.
        check(
            (0..300).map(|_| d(FRAME, 0, F_NEXT, 3)).collect(),
            TxError::TooManyDescriptors,
        );
        for (flags, gso_type) in [(1, 0), (0, 4)] {
            m.write_slice(&[flags, gso_type], GuestAddress(HDR))
                .unwrap();
            check(
                vec![d(HDR, 12, F_NEXT, 1), d(FRAME, 60, 0, 0)],
                TxError::Offload { flags, gso_type },
            );
        }
        // The largest frame passes.
        m.write_slice(&[0, 0], GuestAddress(HDR)).unwrap();
        read_tx_chain(
            &m,
            [
                d(HDR, 12, F_NEXT, 1),
                d(BIG, (MAX_FRAME_WITH_HDR - 12) as u32, 0, 0),
            ],
            &mut buf,
        )
        .unwrap();
        assert_eq!(buf.len(), MAX_FRAME_WITH_HDR);
    }

    #[test]
    fn a_pass_handles_at_most_its_budget_and_returns_every_chain() {
        let m = mem();
        frame(&m);
        let mut descs = Vec::new();
        for i in 0..100u16 {
            descs.push(d(HDR, 12, F_NEXT, 2 * i + 1));
            // Every other chain is oversized.
            let len = if i % 2 == 0 { 60 } else { 70_000 };
            descs.push(d(FRAME, len, 0, 0));
        }
        let mut queue = queue(&m, 256, &descs);
        let mut buf = Vec::new();
        let (mut ok, mut oversized) = (0, 0);
        let mut pass = drain_tx(&m, &mut queue, 32, &mut buf, |r| match r {
            Ok(f) => {
                assert_eq!(f.len(), 72);
                ok += 1
            }
            Err(e) => {
                assert!(e.is_oversized(), "{e}");
                oversized += 1
            }
        });
        assert_eq!((pass.popped, pass.used), (32, 32));
        assert!(pass.more);
        while pass.more {
            pass = drain_tx(&m, &mut queue, 32, &mut buf, |r| match r {
                Ok(_) => ok += 1,
                Err(_) => oversized += 1,
            });
        }
        assert_eq!(pass.popped, 4);
        assert_eq!((ok, oversized), (50, 50));
        assert_eq!(queue.next_used(), 100);
        assert!(buf.capacity() <= MAX_FRAME_WITH_HDR);
    }
}
