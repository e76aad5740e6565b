//! Drive slots: every sandbox boots with `slot_count()` extra read-only
//! virtio-blk drives, each backed by a sparse file of `SLOT_BYTES`. Filling
//! a slot writes an image into its file in place (same inode, which the VM
//! process holds open; its reads go through the host page cache, so they
//! see the new bytes). The guest has never mounted the slot; the page cache
//! of a block device is dropped on its last close (after the boot-time
//! partition scan), so its first mount reads the image. This needs nothing
//! from the hypervisor beyond drives at boot, so it works on QEMU microvm
//! (no virtio-mmio hotplug, no medium change on virtio-blk) and on
//! ampoule-vmm alike. A slot is used once per sandbox: reusing one after its
//! container is gone would depend on the guest having dropped its cache.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{io, RootfsError};

/// virtio-mmio transports of QEMU's microvm machine: every virtio device
/// of a sandbox (vsock, drives, a NIC) takes one.
pub const VIRTIO_TRANSPORTS: usize = 8;
/// Transports kept for devices other than drives: vsock, and a NIC.
pub const RESERVED_TRANSPORTS: usize = 2;

/// Drive slots to declare at boot for containers added later to the pod,
/// when `boot_drives` drives are attached at boot: whatever transports are
/// left (5 with one rootfs image, 4 with a bind sources image too).
pub fn slot_count(boot_drives: usize) -> usize {
    VIRTIO_TRANSPORTS.saturating_sub(RESERVED_TRANSPORTS + boot_drives)
}
/// Apparent size of a slot file (sparse: costs only what is written).
pub const SLOT_BYTES: u64 = 4 << 30;

/// Creates a sparse slot file of `SLOT_BYTES`.
pub fn create_slot(path: &Path) -> Result<(), RootfsError> {
    let f = File::create(path).map_err(io("creating drive slot", path))?;
    f.set_len(SLOT_BYTES)
        .map_err(io("sizing drive slot", path))?;
    Ok(())
}

/// Writes `image` at the start of the slot file `slot`, in place.
pub fn fill_slot(slot: &Path, image: &Path) -> Result<(), RootfsError> {
    let mut src = File::open(image).map_err(io("opening image", image))?;
    let size = src.metadata().map_err(io("reading image", image))?.len();
    if size > SLOT_BYTES {
        return Err(RootfsError::TooBig {
            path: image.to_path_buf(),
            size,
        });
    }
    let mut dst = OpenOptions::new()
        .write(true)
        .open(slot)
        .map_err(io("opening drive slot", slot))?;
    dst.seek(SeekFrom::Start(0))
        .map_err(io("seeking drive slot", slot))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).map_err(io("reading image", image))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])
            .map_err(io("writing drive slot", slot))?;
    }
    dst.sync_data().map_err(io("syncing drive slot", slot))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn slots_fill_the_transports_left() {
        assert_eq!(slot_count(1), 5);
        assert_eq!(slot_count(2), 4);
        assert_eq!(slot_count(9), 0);
    }

    #[test]
    fn slot_is_filled_in_place() {
        let d = tempfile::tempdir().unwrap();
        let slot = d.path().join("slot0");
        create_slot(&slot).unwrap();
        let ino = std::fs::metadata(&slot).unwrap().ino();
        let img = d.path().join("img");
        std::fs::write(&img, b"EROFS-ish").unwrap();
        fill_slot(&slot, &img).unwrap();
        let md = std::fs::metadata(&slot).unwrap();
        assert_eq!(md.ino(), ino);
        assert_eq!(md.len(), SLOT_BYTES);
        let mut head = [0u8; 9];
        File::open(&slot).unwrap().read_exact(&mut head).unwrap();
        assert_eq!(&head, b"EROFS-ish");
    }
}
