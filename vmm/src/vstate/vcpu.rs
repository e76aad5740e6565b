//! vCPU creation and the per-vCPU thread running `KVM_RUN`.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::arch::x86_64::boot::EntryPoint;
use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::{Bus, ExitReason};
use crate::seccomp::{self, Filters, ThreadKind};

/// Errors while creating vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id} registers: {source}")]
    Regs { id: u8, source: regs::RegsError },
    #[error("spawning vCPU thread: {0}")]
    Spawn(std::io::Error),
}

/// Creates `count` vCPUs with CPUID, LAPIC and (for the boot CPU) boot registers.
pub fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    count: u8,
    entry: EntryPoint,
) -> Result<Vec<VcpuFd>, VcpuError> {
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VcpuError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let mut vcpus = Vec::with_capacity(count.into());
    for id in 0..count {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Kvm {
                what: "KVM_CREATE_VCPU",
                source,
            })?;
        let mut c: CpuId = base_cpuid.clone();
        cpuid::filter_cpuid(&mut c, id, count);
        vcpu.set_cpuid2(&c).map_err(|source| VcpuError::Kvm {
            what: "KVM_SET_CPUID2",
            source,
        })?;
        regs::setup_lint(&vcpu).map_err(|source| VcpuError::Regs { id, source })?;
        // Application processors wait for INIT/SIPI from the boot CPU, as
        // on real hardware; only the boot CPU gets the entry state.
        if id == 0 {
            regs::setup_boot_regs(&vcpu, entry).map_err(|source| VcpuError::Regs { id, source })?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Starts one thread per vCPU, each under the vCPU seccomp filter of
/// `filters` before it first enters the guest.
pub fn start_vcpus(
    vcpus: Vec<VcpuFd>,
    bus: Arc<Bus>,
    filters: &Filters,
) -> Result<Vec<JoinHandle<Option<()>>>, VcpuError> {
    let mut handles = Vec::new();
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let bus = bus.clone();
        let h = seccomp::spawn(format!("vcpu{id}"), ThreadKind::Vcpu, filters, move || {
            run_vcpu(id, vcpu, &bus)
        })
        .map_err(VcpuError::Spawn)?;
        handles.push(h);
    }
    Ok(handles)
}

fn run_vcpu(id: usize, mut vcpu: VcpuFd, bus: &Bus) {
    loop {
        if bus.exit.is_done() {
            return;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => bus.pio_read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => bus.pio_write(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => bus.mmio_read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => bus.mmio_write(addr, data),
            Ok(VcpuExit::Shutdown) => {
                bus.exit.exit(ExitReason::GuestStopped(format!(
                    "vCPU {id}: shutdown (triple fault or reset)"
                )));
                return;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let what = match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => "poweroff",
                    KVM_SYSTEM_EVENT_RESET => "reset",
                    _ => "system event",
                };
                bus.exit
                    .exit(ExitReason::GuestStopped(format!("vCPU {id}: {what}")));
                return;
            }
            Ok(VcpuExit::Hlt) => {
                // With the in-kernel irqchip HLT is handled by KVM; an HLT exit
                // means this vCPU will never run again.
                tracing::debug!("vCPU {id} halted");
                return;
            }
            Ok(VcpuExit::InternalError) => {
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                bus.exit.exit(ExitReason::VcpuError(format!(
                    "vCPU {id}: KVM internal error (instruction emulation failed) at rip {rip:#x}"
                )));
                return;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                bus.exit.exit(ExitReason::VcpuError(format!(
                    "vCPU {id}: VM entry failed, reason {reason:#x} on host cpu {cpu}"
                )));
                return;
            }
            Ok(other) => {
                tracing::debug!("vCPU {id}: unhandled exit {other:?}");
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                bus.exit.exit(ExitReason::VcpuError(format!(
                    "vCPU {id}: KVM_RUN failed: {e}"
                )));
                return;
            }
        }
    }
}
