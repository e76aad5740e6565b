//! x86_64: guest memory layout, boot state, MP table, CPUID.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
