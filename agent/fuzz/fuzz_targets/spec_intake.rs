//! The agent's intake of what the host sends: a container's config.json
//! (with the shared filesystem's bind map) and an exec's process spec. Any
//! bytes give a plan or an error, never a panic; an accepted spec never
//! plans a mount outside the container's root, nor a masked, read-only or
//! device path that is not absolute and clean.
#![no_main]

use std::collections::HashMap;
use std::path::{Component, Path};

use ampoule_agent::container::intake;
use libfuzzer_sys::fuzz_target;

const ROOTFS: &str = "/run/ampoule/containers/fuzz/rootfs";
const SHARED: &str = "/run/ampoule/shared";

fn clean_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        let _ = intake::process_spec("fuzz", rest);
        return;
    }
    let Ok(c) = intake::container_spec("fuzz", rest) else {
        return;
    };
    for p in c.masked_paths.iter().chain(&c.readonly_paths) {
        assert!(clean_absolute(p), "{p:?}");
    }
    for d in &c.devices {
        assert!(clean_absolute(&d.path), "{:?}", d.path);
    }
    // Every bind source of the spec is in the shared map, under a clean
    // relative name, as the host writes it.
    let mut binds = HashMap::new();
    for (i, m) in c.spec.mounts().iter().flatten().enumerate() {
        if let Some(src) = m.source() {
            binds.insert(src.to_string_lossy().into_owned(), format!("volumes/v{i}"));
        }
    }
    if let Ok(steps) = intake::shared_mounts(&c.spec, Path::new(ROOTFS), Path::new(SHARED), &binds)
    {
        for s in &steps {
            assert!(
                s.target.starts_with(ROOTFS) && clean_absolute(&s.target),
                "mount target {:?} leaves the root",
                s.target
            );
            if s.bind {
                if let Some(src) = &s.source {
                    assert!(src.starts_with(SHARED), "bind source {src:?}");
                }
            }
        }
    }
});
