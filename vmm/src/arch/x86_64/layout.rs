//! Guest physical memory layout.

/// GDT used to enter the kernel.
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries (right after the start info).
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the boot page tables.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the boot page tables.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories (identity map of 4 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line (including NUL).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the EBDA, where the MP table lives; end of low RAM.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels load at or above this address.
pub const HIMEM_START: u64 = 0x10_0000;
/// virtio-mmio devices, one 4 KiB window each.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// First IRQ given to virtio-mmio devices.
pub const MMIO_FIRST_IRQ: u32 = 5;
/// Local APIC base.
pub const APIC_START: u64 = 0xfee0_0000;
/// IOAPIC base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Highest address an initrd may end at (Linux's default initrd_addr_max).
pub const INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
