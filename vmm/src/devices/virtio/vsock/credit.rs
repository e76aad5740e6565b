//! virtio-vsock credit accounting of one connection, both ways.
//!
//! Guest to host: the host advertises `buf_alloc` bytes of buffer; the
//! guest may have at most that many bytes sent but not yet forwarded to the
//! host stream (`recv_cnt - fwd_cnt`). A guest that sends more is over its
//! credit, and the data is refused, so what the host buffers for one
//! connection never exceeds what it advertised.
//!
//! Host to guest: the guest advertises its own `buf_alloc` and `fwd_cnt`;
//! the host sends at most `buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes.
//! Counters are free-running and wrap, as the specification says.

use std::num::Wrapping;

/// The guest sent more than the credit the host advertised.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest sent {len} bytes with {buffered} of {buf_alloc} already buffered")]
pub struct OverCredit {
    pub len: u32,
    pub buffered: u32,
    pub buf_alloc: u32,
}

/// Credit counters of one connection.
#[derive(Debug, Clone)]
pub struct Credit {
    /// Receive buffer the host advertises to the guest.
    buf_alloc: u32,
    /// Bytes accepted from the guest.
    recv_cnt: Wrapping<u32>,
    /// Bytes of those written to the host stream.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: Wrapping<u32>,
    /// The guest's receive buffer.
    peer_buf_alloc: u32,
    /// Bytes the guest says it consumed.
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
}

impl Credit {
    /// A connection whose host side advertises `buf_alloc` bytes.
    pub fn new(buf_alloc: u32) -> Credit {
        Credit {
            buf_alloc,
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
        }
    }

    /// Bytes accepted from the guest and not yet forwarded.
    pub fn buffered(&self) -> u32 {
        (self.recv_cnt - self.fwd_cnt).0
    }

    /// Accounts `len` bytes from the guest, or refuses them when they do
    /// not fit in the advertised buffer.
    pub fn accept(&mut self, len: u32) -> Result<(), OverCredit> {
        let buffered = self.buffered();
        if u64::from(buffered) + u64::from(len) > u64::from(self.buf_alloc) {
            return Err(OverCredit {
                len,
                buffered,
                buf_alloc: self.buf_alloc,
            });
        }
        self.recv_cnt += Wrapping(len);
        Ok(())
    }

    /// `n` buffered bytes reached the host stream.
    pub fn forwarded(&mut self, n: u32) {
        let n = n.min(self.buffered());
        self.fwd_cnt += Wrapping(n);
    }

    /// Whether enough was forwarded since the guest last heard of it that
    /// a credit update is worth sending (a quarter of the buffer).
    pub fn update_due(&self) -> bool {
        (self.fwd_cnt - self.fwd_cnt_sent).0 >= self.buf_alloc / 4
    }

    /// `(buf_alloc, fwd_cnt)` for a packet header; records that the guest
    /// now knows this `fwd_cnt`.
    pub fn header_fields(&mut self) -> (u32, u32) {
        self.fwd_cnt_sent = self.fwd_cnt;
        (self.buf_alloc, self.fwd_cnt.0)
    }

    /// The guest's credit fields from a packet it sent.
    pub fn peer_update(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the host may still send to the guest. A guest claiming to
    /// have consumed more than it was sent gets no credit.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `n` bytes were sent to the guest.
    pub fn sent(&mut self, n: u32) {
        self.tx_cnt += Wrapping(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_data_beyond_the_advertised_buffer_is_refused() {
        let mut c = Credit::new(1000);
        assert_eq!(c.accept(600), Ok(()));
        assert_eq!(c.accept(400), Ok(()));
        assert_eq!(c.buffered(), 1000);
        assert_eq!(
            c.accept(1),
            Err(OverCredit {
                len: 1,
                buffered: 1000,
                buf_alloc: 1000
            })
        );
        assert_eq!(c.buffered(), 1000, "a refused packet is not counted");
        c.forwarded(300);
        assert_eq!(c.buffered(), 700);
        assert_eq!(c.accept(300), Ok(()));
        assert!(c.accept(1).is_err());
        assert!(c.accept(u32::MAX).is_err());
    }

    #[test]
    fn credit_accounting_survives_counter_wraparound() {
        let mut c = Credit::new(4096);
        // Move every counter close to u32::MAX, then across it.
        for _ in 0..(u32::MAX / 4096) {
            c.accept(4096).unwrap();
            c.forwarded(4096);
        }
        for _ in 0..4 {
            c.accept(4000).unwrap();
            assert!(c.accept(97).is_err());
            c.forwarded(4000);
            assert_eq!(c.buffered(), 0);
        }
    }

    #[test]
    fn forwarding_more_than_buffered_cannot_create_credit() {
        let mut c = Credit::new(100);
        c.accept(10).unwrap();
        c.forwarded(50);
        assert_eq!(c.buffered(), 0);
        assert!(c.accept(101).is_err());
        assert_eq!(c.accept(100), Ok(()));
    }

    #[test]
    fn credit_update_is_due_after_a_quarter_of_the_buffer() {
        let mut c = Credit::new(1024);
        c.accept(1024).unwrap();
        c.forwarded(255);
        assert!(!c.update_due());
        c.forwarded(1);
        assert!(c.update_due());
        assert_eq!(c.header_fields(), (1024, 256));
        assert!(!c.update_due());
    }

    #[test]
    fn host_sends_only_within_the_guests_credit() {
        let mut c = Credit::new(1024);
        assert_eq!(c.peer_credit(), 0, "no credit before the guest speaks");
        c.peer_update(5000, 0);
        assert_eq!(c.peer_credit(), 5000);
        c.sent(4000);
        assert_eq!(c.peer_credit(), 1000);
        c.peer_update(5000, 3000);
        assert_eq!(c.peer_credit(), 4000);
        // A guest claiming to have consumed more than it got: no credit.
        c.peer_update(5000, 9000);
        assert_eq!(c.peer_credit(), 0);
    }
}
