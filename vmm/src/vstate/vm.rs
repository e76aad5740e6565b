//! The KVM VM: guest memory registered with KVM, in-kernel irqchip and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors while creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and is this user allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
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

/// Opens /dev/kvm and checks its API version.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let v = kvm.get_api_version();
    if v != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmError::ApiVersion(v));
    }
    Ok(kvm)
}

/// Allocates `size` bytes of anonymous guest memory at guest address 0.
pub fn create_memory(size: u64) -> Result<GuestMemoryMmap, VmError> {
    let len = usize::try_from(size).map_err(|_| VmError::Memory {
        mib: size >> 20,
        reason: "too large".into(),
    })?;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).map_err(|e| VmError::Memory {
        mib: size >> 20,
        reason: e.to_string(),
    })
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
