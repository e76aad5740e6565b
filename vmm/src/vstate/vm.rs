//! The KVM VM: guest memory registered with KVM, in-kernel irqchip and PIT.
//!
//! Guest memory is anonymous private memory, or, when a vhost-user backend
//! must map it too (virtio-fs), a sealed memfd mapped shared: its fd goes to
//! the backend in `VHOST_USER_SET_MEM_TABLE`.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MmapRegion,
};

/// Errors while creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and is this user allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("descriptor {0} is not /dev/kvm (KVM_GET_API_VERSION failed)")]
    NotKvm(RawFd),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("allocating {mib} MiB of guest memory: {reason}")]
    Memory { mib: u64, reason: String },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Opens /dev/kvm, or adopts the inherited descriptor `fd` of it, and
/// checks its API version (on a descriptor that is not /dev/kvm the
/// version ioctl fails).
pub fn open_kvm(fd: Option<RawFd>) -> Result<Kvm, VmError> {
    let kvm = match fd {
        None => Kvm::new().map_err(VmError::OpenKvm)?,
        // SAFETY: the configuration checked that `fd` is open and that no
        // other device of the VMM was given it; it was handed to this
        // process for KVM, so the Kvm becomes its only owner.
        Some(fd) => unsafe { Kvm::from_raw_fd(fd) },
    };
    let v = kvm.get_api_version();
    if v != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(match fd {
            Some(fd) if v < 0 => VmError::NotKvm(fd),
            _ => VmError::ApiVersion(v),
        });
    }
    Ok(kvm)
}

/// How guest memory is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Anonymous private memory (no other process maps it).
    Anonymous,
    /// A sealed memfd mapped shared, whose fd a vhost-user backend can map.
    SharedMemfd,
}

/// Allocates `size` bytes of guest memory at guest address 0.
pub fn create_memory(size: u64, backing: MemoryBacking) -> Result<GuestMemoryMmap, VmError> {
    let err = |reason: String| VmError::Memory {
        mib: size >> 20,
        reason,
    };
    let len = usize::try_from(size).map_err(|_| err("too large".into()))?;
    match backing {
        MemoryBacking::Anonymous => {
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).map_err(|e| err(e.to_string()))
        }
        MemoryBacking::SharedMemfd => {
            let file = sealed_memfd(size).map_err(|e| err(format!("memfd: {e}")))?;
            let region = MmapRegion::from_file(FileOffset::new(file, 0), len)
                .map_err(|e| err(format!("mapping the memfd: {e}")))?;
            let region = GuestRegionMmap::new(region, GuestAddress(0))
                .ok_or_else(|| err("region end overflows".into()))?;
            GuestMemoryMmap::from_regions(vec![region]).map_err(|e| err(e.to_string()))
        }
    }
}

/// A memfd of `size` bytes whose size is sealed (it can neither grow nor
/// shrink, so no process mapping it can be made to fault by a truncate)
/// and whose seals are sealed.
fn sealed_memfd(size: u64) -> std::io::Result<File> {
    let len = libc::off_t::try_from(size).map_err(|_| std::io::Error::other("too large"))?;
    // SAFETY: the name is a NUL-terminated string literal; memfd_create only
    // reads it and returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"ampoule-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len as u64)?;
    let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    if unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_ADD_SEALS,
            seals,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Creates the VM, registers `mem` and creates the irqchip and PIT.
pub fn create_vm(kvm_sys: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm = kvm_sys.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmError::Memory {
                mib: region.len() >> 20,
                reason: e.to_string(),
            })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range is a live mmap owned by `mem`, which outlives
        // the VM in every caller (both are dropped only at process exit), and
        // regions do not overlap.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    vm.set_tss_address(0xfffb_d000)
        .map_err(kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    kvm(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vm_memory::{Bytes, GuestMemoryRegion};

    #[test]
    fn shared_memory_is_one_sealed_memfd_region_and_anonymous_memory_has_no_file() {
        let mem = create_memory(4 << 20, MemoryBacking::SharedMemfd).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let region = mem.iter().next().unwrap();
        assert_eq!(region.len(), 4 << 20);
        let fo = region.file_offset().expect("a memfd-backed region");
        assert_eq!(fo.start(), 0);
        let file = fo.file();
        // SAFETY: F_GET_SEALS on an fd the region owns; integer arguments only.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        let want = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        assert_eq!(seals & want, want, "seals {seals:#x}");
        assert!(file.set_len(8 << 20).is_err(), "the size is sealed");
        // Writes through the mapping reach the file (MAP_SHARED).
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);

        let anon = create_memory(4 << 20, MemoryBacking::Anonymous).unwrap();
        assert!(anon.iter().next().unwrap().file_offset().is_none());
    }
}
