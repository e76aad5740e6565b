//! virtio-net: arbitrary descriptor chains through the bounded TX pass
//! (every chain returned or refused, frames within the limit with a zeroed
//! header, at most one frame held), and the same chains as RX buffers
//! filled with frames cut from the input, as a tap would hand them over
//! with or without its virtio-net header (bounded reads and used entries;
//! buffers may lie anywhere, the rings included, as a guest may put them).
#![no_main]

mod chain;

use ampoule_vmm::devices::virtio::net::{rx, tx, ETH_HLEN, MAX_FRAME_WITH_HDR, VNET_HDR_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let budget = usize::from(ctl % 20);
    let vnet = ctl & 0x80 != 0;
    let Some((mem, mut q)) = chain::build(rest) else {
        return;
    };
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let pass = tx::drain_tx(&mem, &mut q, budget, &mut buf, |r| {
        seen += 1;
        if let Ok(f) = r {
            assert!(f.len() <= MAX_FRAME_WITH_HDR);
            assert!(f.len() >= VNET_HDR_LEN + ETH_HLEN);
            assert!(f[..VNET_HDR_LEN].iter().all(|&b| b == 0));
        }
    });
    assert!(pass.popped <= budget);
    assert_eq!(seen, pass.popped);
    assert!(pass.used <= pass.popped);
    assert!(buf.len() <= MAX_FRAME_WITH_HDR);

    // The same chains as RX buffers; frames of varying sizes from the
    // input, some larger than any buffer.
    let Some((mem, mut q)) = chain::build(rest) else {
        return;
    };
    let step = usize::from(ctl & 0x3f) * 37 + 1;
    let mut frames = rest.chunks(step);
    let mut reads = 0usize;
    let mut regions = Vec::new();
    let mut rbuf = vec![0u8; rx::READ_BUF_LEN];
    let pass = rx::fill_rx(&mem, &mut q, budget, vnet, &mut regions, &mut rbuf, |b| {
        reads += 1;
        match frames.next() {
            Some(f) => {
                let n = f.len().min(b.len());
                b[..n].copy_from_slice(&f[..n]);
                Ok(n)
            }
            None => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    });
    assert!(reads <= budget);
    assert!(pass.used <= budget);
    assert!(pass.delivered + pass.too_small <= reads as u64);
});
