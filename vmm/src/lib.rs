//! ampoule-vmm: the microVM monitor (KVM, memory, boot, devices).
//!
//! One process runs one microVM: [`config`] describes it (flags or a JSON
//! file), [`vmm::Vmm`] builds it and runs it until the guest resets or
//! powers off, or a shutdown through the control socket ([`api`], whose
//! line protocol is documented there) or SIGTERM ends it.
//!
//! - Boot ([`arch::x86_64`]): an ELF kernel loaded with linux-loader,
//!   entered through its PVH entry (32-bit, `%ebx` = `hvm_start_info` with
//!   the memory map and the initrd as module 0) when the ELF has the PVH
//!   note, else through the 64-bit Linux entry (long mode, identity-mapped
//!   4 GiB, `%rsi` = zero page with e820, command line and initrd). MP
//!   table in the EBDA; APs wait for INIT/SIPI; CPUID from
//!   `KVM_GET_SUPPORTED_CPUID` with KVM's hypervisor leaves kept.
//! - Memory layout ([`arch::x86_64::layout`]): RAM from 0 (at most 3 GiB),
//!   virtio-mmio windows from `0xd000_0000` (IRQ 5 up), announced on the
//!   kernel command line as `virtio_mmio.device=4K@<addr>:<irq>`: the
//!   vsock device first, then the drives in slot order, then the
//!   virtio-fs devices, then the NICs. Guest memory is anonymous, or a sealed memfd
//!   mapped shared when a virtio-fs device needs its backend to map it.
//! - Devices ([`devices`]): COM1 8250 (vm-superio) to the serial log (at
//!   most `serial_log_max_bytes`, newest output kept) or stdout; i8042
//!   (reset line, Ctrl-Alt-Del for graceful shutdown); port 0xf4 debug
//!   exit; virtio-blk with run-time slots; virtio-vsock with the
//!   hybrid-vsock Unix socket; virtio-fs served by a vhost-user backend
//!   (virtiofsd), this VMM being the frontend; virtio-net on a tap, opened
//!   by name or inherited as an fd.
//! - Seccomp ([`seccomp`]): one allowlist per thread kind (main, vCPU,
//!   vsock, virtio-fs, virtio-net, control listener, control client), installed in each thread
//!   before it handles guest or client data; anything else kills the
//!   process (SIGSYS). `--no-seccomp` turns them off for debugging.
//! - Privileges ([`jail`]): with `--uid`/`--gid` the VMM drops to that
//!   identity with no capabilities once everything is open (virtio-fs
//!   backend sockets connected, taps attached), before any thread starts.
//! - Sockets ([`unix_socket`]): the control and vsock sockets are mode 0600
//!   whatever the umask.
//! - VM end: i8042 reset, debug-exit port, triple fault (`KVM_EXIT_SHUTDOWN`)
//!   and KVM system events end the VM with exit status 0; a vCPU failure
//!   (e.g. an emulation error) exits 1 with the reason.
//!
//! The freestanding test guests in `vmm/test-guests/` (built by the
//! integration tests with gcc) exercise all of this on any KVM host,
//! including PVM hosts where a standard Linux guest cannot run.

pub mod api;
pub mod arch;
pub mod config;
pub mod devices;
pub mod jail;
pub mod seccomp;
pub mod unix_socket;
pub mod vmm;
pub mod vstate;
