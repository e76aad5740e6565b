//! Popping guest packets off the TX queue, a bounded number per pass.
//!
//! Each packet is checked and handed to the caller as soon as it is popped,
//! its data copied into one reused buffer: nothing accumulates however fast
//! the guest re-posts descriptors, and a pass ends after `budget` chains so
//! that other connections and the RX queue get their turn.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::GuestMemoryMmap;

use super::{GUEST_CID, HOST_CID};

/// virtio-vsock stream socket type.
pub const TYPE_STREAM: u16 = 1;
/// Operation codes.
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// Largest packet payload accepted from the guest.
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// The header fields the muxer acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub src_port: u32,
    pub dst_port: u32,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// One popped TX chain.
#[derive(Debug, PartialEq, Eq)]
pub enum TxItem<'a> {
    /// A stream packet from the guest's CID to the host's, with its data.
    Packet(Header, &'a [u8]),
    /// A stream packet with wrong CIDs, to be answered with a reset.
    Misaddressed { src_port: u32, dst_port: u32 },
    /// A packet that is dropped (malformed, or of another type).
    Dropped(String),
}

/// What one pass did.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct TxPass {
    /// Chains returned to the guest.
    pub used: usize,
    /// The budget ran out: the queue may hold more.
    pub more: bool,
    /// The queue itself is broken (bad ring index or address).
    pub queue_error: Option<String>,
}

/// Pops at most `budget` chains from `q`, calling `f` on each right away.
/// `scratch` holds one packet's data at a time.
pub fn drain_tx<F>(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    budget: usize,
    scratch: &mut Vec<u8>,
    mut f: F,
) -> TxPass
where
    F: FnMut(TxItem<'_>),
{
    let mut pass = TxPass::default();
    while pass.used < budget {
        let mut chain = match q.iter(mem) {
            Ok(mut it) => match it.next() {
                Some(c) => c,
                None => return pass,
            },
            Err(e) => {
                pass.queue_error = Some(format!("tx queue: {e:?}"));
                return pass;
            }
        };
        let head = chain.head_index();
        match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
            Ok(pkt) => {
                if pkt.type_() != TYPE_STREAM {
                    f(TxItem::Dropped(format!("packet of type {}", pkt.type_())));
                } else if pkt.src_cid() != GUEST_CID || pkt.dst_cid() != HOST_CID {
                    if pkt.op() == OP_RST {
                        f(TxItem::Dropped("misaddressed reset".into()));
                    } else {
                        f(TxItem::Misaddressed {
                            src_port: pkt.src_port(),
                            dst_port: pkt.dst_port(),
                        });
                    }
                } else {
                    let n = pkt.data_slice().map_or(0, |s| s.len());
                    scratch.clear();
                    scratch.resize(n, 0);
                    if let Some(s) = pkt.data_slice() {
                        s.copy_to(&mut scratch[..]);
                    }
                    let h = Header {
                        src_port: pkt.src_port(),
                        dst_port: pkt.dst_port(),
                        op: pkt.op(),
                        flags: pkt.flags(),
                        buf_alloc: pkt.buf_alloc(),
                        fwd_cnt: pkt.fwd_cnt(),
                    };
                    f(TxItem::Packet(h, &scratch[..]));
                }
            }
            Err(e) => f(TxItem::Dropped(format!("bad tx packet: {e:?}"))),
        }
        if let Err(e) = q.add_used(mem, head, 0) {
            pass.queue_error = Some(format!("tx add_used: {e:?}"));
            return pass;
        }
        pass.used += 1;
    }
    pass.more = true;
    pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mock_queue::{d, mem, queue, F_NEXT};
    use vm_memory::{Bytes, GuestAddress};

    const HDR: u64 = 0x8000;
    const DATA: u64 = 0x9000;

    fn header(src_cid: u64, op: u16, len: u32) -> [u8; 44] {
        let mut h = [0u8; 44];
        h[0..8].copy_from_slice(&src_cid.to_le_bytes());
        h[8..16].copy_from_slice(&HOST_CID.to_le_bytes());
        h[16..20].copy_from_slice(&7u32.to_le_bytes());
        h[20..24].copy_from_slice(&1024u32.to_le_bytes());
        h[24..28].copy_from_slice(&len.to_le_bytes());
        h[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        h[30..32].copy_from_slice(&op.to_le_bytes());
        h[36..40].copy_from_slice(&4096u32.to_le_bytes());
        h
    }

    /// A queue of 256 whose available ring holds `chains` packets, each a
    /// header descriptor and a data descriptor.
    fn flooded(m: &GuestMemoryMmap, chains: u16) -> Queue {
        let mut descs = Vec::new();
        for i in 0..chains {
            descs.push(d(HDR, 44, F_NEXT, 2 * i + 1));
            descs.push(d(DATA, 16, 0, 0));
        }
        queue(m, 256, &descs)
    }

    #[test]
    fn a_pass_handles_at_most_its_budget_and_says_more_remain() {
        let m = mem();
        m.write_slice(&header(GUEST_CID, OP_RW, 16), GuestAddress(HDR))
            .unwrap();
        m.write_slice(b"0123456789abcdef", GuestAddress(DATA))
            .unwrap();
        let mut q = flooded(&m, 100);
        let mut scratch = Vec::new();
        let mut seen = 0;
        let pass = drain_tx(&m, &mut q, 32, &mut scratch, |item| {
            assert!(
                matches!(item, TxItem::Packet(h, d) if h.op == OP_RW && d == b"0123456789abcdef")
            );
            seen += 1;
        });
        assert_eq!(seen, 32);
        assert_eq!(pass.used, 32);
        assert!(pass.more);
        // Passes go on from where the last one stopped; the last says done.
        let p2 = drain_tx(&m, &mut q, 32, &mut scratch, |_| seen += 1);
        let p3 = drain_tx(&m, &mut q, 32, &mut scratch, |_| seen += 1);
        let p4 = drain_tx(&m, &mut q, 32, &mut scratch, |_| seen += 1);
        assert_eq!((p2.used, p3.used, p4.used), (32, 32, 4));
        assert!(!p4.more);
        assert_eq!(seen, 100);
        assert!(scratch.capacity() <= MAX_PKT_DATA as usize);
    }

    #[test]
    fn misaddressed_and_malformed_packets_are_reported_not_delivered() {
        let m = mem();
        m.write_slice(&header(77, OP_REQUEST, 0), GuestAddress(HDR))
            .unwrap();
        let mut q = flooded(&m, 1);
        let mut items = Vec::new();
        drain_tx(&m, &mut q, 8, &mut Vec::new(), |i| {
            items.push(format!("{i:?}"))
        });
        assert_eq!(
            items,
            [format!(
                "{:?}",
                TxItem::Misaddressed {
                    src_port: 7,
                    dst_port: 1024
                }
            )]
        );
        // A length beyond the largest packet: dropped.
        m.write_slice(
            &header(GUEST_CID, OP_RW, MAX_PKT_DATA + 1),
            GuestAddress(HDR),
        )
        .unwrap();
        let mut q = flooded(&m, 1);
        let mut dropped = 0;
        drain_tx(&m, &mut q, 8, &mut Vec::new(), |i| {
            assert!(matches!(i, TxItem::Dropped(_)), "{i:?}");
            dropped += 1;
        });
        assert_eq!(dropped, 1);
    }
}
