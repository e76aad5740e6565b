//! vsock TX packet handling: arbitrary descriptor chains and packet bytes
//! through the bounded TX pass, and every delivered packet's data through
//! the credit accounting of one connection.
#![no_main]

mod chain;

use ampoule_vmm::devices::virtio::vsock::credit::Credit;
use ampoule_vmm::devices::virtio::vsock::tx::{drain_tx, TxItem, MAX_PKT_DATA, OP_RW};
use libfuzzer_sys::fuzz_target;

const BUF: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&budget, rest)) = data.split_first() else {
        return;
    };
    let Some((mem, mut queue)) = chain::build(rest) else {
        return;
    };
    let budget = usize::from(budget % 20);
    let mut scratch = Vec::new();
    let mut credit = Credit::new(BUF);
    let mut seen = 0usize;
    let pass = drain_tx(&mem, &mut queue, budget, &mut scratch, |item| {
        seen += 1;
        if let TxItem::Packet(h, d) = item {
            assert!(d.len() <= MAX_PKT_DATA as usize);
            if h.op == OP_RW {
                let before = credit.buffered();
                match credit.accept(d.len() as u32) {
                    Ok(()) => assert_eq!(credit.buffered(), before + d.len() as u32),
                    Err(_) => assert_eq!(credit.buffered(), before),
                }
                credit.forwarded(h.fwd_cnt % 2048);
            }
            credit.peer_update(h.buf_alloc, h.fwd_cnt);
            assert!(credit.peer_credit() <= h.buf_alloc);
        }
        assert!(credit.buffered() <= BUF);
    });
    assert!(pass.used <= budget);
    assert!(seen == pass.used || (pass.queue_error.is_some() && seen == pass.used + 1));
    assert!(scratch.len() <= MAX_PKT_DATA as usize);
});
