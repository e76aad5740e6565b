//! virtio-blk request parsing and serving: arbitrary descriptor chains
//! and request bytes against a small disk and an empty slot.
#![no_main]

mod chain;

use std::sync::OnceLock;

use ampoule_vmm::devices::virtio::block::request;
use ampoule_vmm::devices::virtio::block::Backing;
use libfuzzer_sys::fuzz_target;

fn disk_path() -> &'static std::path::Path {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("ampoule-fuzz-blk-{}", std::process::id()));
        std::fs::write(&p, vec![0x5a; 8 * 512]).expect("fuzz disk");
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((mem, mut queue)) = chain::build(rest) else {
        return;
    };
    let mut backing = match mode % 3 {
        0 => None,
        1 => Backing::open(disk_path(), true).ok(),
        _ => Backing::open(disk_path(), false).ok(),
    };
    chain::for_each_chain(&mem, &mut queue, |c| {
        let _ = request::handle(&mem, c, "fuzz", backing.as_mut());
    });
    // The disk never grows, whatever the guest asked.
    if let Ok(md) = std::fs::metadata(disk_path()) {
        assert_eq!(md.len(), 8 * 512);
    }
});
