//! The hybrid-vsock handshake (`CONNECT <port>\n`), fed byte by byte as
//! the muxer reads it.
#![no_main]

use ampoule_vmm::devices::virtio::vsock::handshake::{parse, Handshake, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = Vec::new();
    for &b in data {
        buf.push(b);
        match parse(&buf) {
            Handshake::Incomplete => assert!(buf.len() < MAX_LINE && !buf.contains(&b'\n')),
            Handshake::Connect(port) => {
                assert_eq!(buf.last(), Some(&b'\n'));
                assert!(buf.len() <= MAX_LINE);
                let line = std::str::from_utf8(&buf).expect("a valid line is ASCII");
                let digits = line
                    .trim_end_matches('\n')
                    .trim_end_matches('\r')
                    .strip_prefix("CONNECT ")
                    .expect("CONNECT prefix");
                assert_eq!(digits.parse::<u32>().ok(), Some(port));
                return;
            }
            Handshake::Invalid(_) => return,
        }
    }
});
