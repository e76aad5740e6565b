//! Loading the kernel and initrd and writing what a 64-bit Linux kernel is
//! handed at entry: boot page tables, GDT, and either the PVH start info
//! (ELF with a PVH note) or the zero page (`boot_params`, 64-bit entry).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{GDT_32, GDT_64};
use super::layout::*;

/// Errors while loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("initrd {path}: {reason}")]
    Initrd { path: PathBuf, reason: String },
    #[error("guest memory ({mib} MiB) is too small: {what}")]
    MemoryTooSmall { mib: u64, what: String },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing boot data to guest memory: {0}")]
    Write(String),
}

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = start info.
    Pvh(u64),
    /// Linux 64-bit boot protocol: long mode, `%rsi` = zero page.
    Linux64(u64),
}

impl EntryPoint {
    /// Guest address of the first instruction.
    pub fn addr(&self) -> u64 {
        match self {
            EntryPoint::Pvh(a) | EntryPoint::Linux64(a) => *a,
        }
    }
}

/// Where the initrd went.
#[derive(Debug, Clone, Copy)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;

/// Highest physical end of the ELF's loadable segments, after checking that
/// the file is a 64-bit x86 ELF.
pub fn elf_load_end(path: &Path) -> Result<u64, BootError> {
    let err = |reason: String| BootError::Kernel {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = File::open(path).map_err(|e| err(e.to_string()))?;
    let mut ehdr = [0u8; 64];
    f.read_exact(&mut ehdr)
        .map_err(|_| err("not an ELF file (too short)".into()))?;
    if ehdr[0..4] != [0x7f, b'E', b'L', b'F'] {
        return Err(err("not an ELF file".into()));
    }
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(err("not a 64-bit little-endian ELF".into()));
    }
    let machine = u16::from_le_bytes([ehdr[18], ehdr[19]]);
    if machine != EM_X86_64 {
        return Err(err(format!("ELF machine {machine} is not x86_64")));
    }
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().unwrap_or_default());
    let phentsize = u16::from_le_bytes([ehdr[54], ehdr[55]]);
    let phnum = u16::from_le_bytes([ehdr[56], ehdr[57]]);
    if phentsize != 56 || phnum == 0 {
        return Err(err("ELF has no usable program headers".into()));
    }
    let mut end = 0u64;
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff.saturating_add(i * 56)))
            .and_then(|_| f.read_exact(&mut ph))
            .map_err(|_| err("truncated ELF program headers".into()))?;
        let p_type = u32::from_le_bytes(ph[0..4].try_into().unwrap_or_default());
        if p_type != PT_LOAD {
            continue;
        }
        let paddr = u64::from_le_bytes(ph[24..32].try_into().unwrap_or_default());
        let memsz = u64::from_le_bytes(ph[40..48].try_into().unwrap_or_default());
        if paddr < HIMEM_START {
            return Err(err(format!(
                "segment at {paddr:#x} is below {HIMEM_START:#x}"
            )));
        }
        let seg_end = paddr
            .checked_add(memsz)
            .ok_or_else(|| err("segment address overflows".into()))?;
        end = end.max(seg_end);
    }
    if end == 0 {
        return Err(err("ELF has no loadable segment".into()));
    }
    Ok(end)
}

/// Loads the ELF kernel; returns its entry and the end of its image.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
) -> Result<(EntryPoint, u64), BootError> {
    let end = elf_load_end(path)?;
    if end > mem_size {
        return Err(BootError::MemoryTooSmall {
            mib: mem_size >> 20,
            what: format!("kernel {} needs memory up to {:#x}", path.display(), end),
        });
    }
    let mut f = File::open(path).map_err(|e| BootError::Kernel {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let res = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(|e| {
        BootError::Kernel {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    let entry = match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh(addr.0),
        _ => EntryPoint::Linux64(read_entry(path)?),
    };
    Ok((entry, end.max(res.kernel_end)))
}

fn read_entry(path: &Path) -> Result<u64, BootError> {
    let mut f = File::open(path).map_err(|e| BootError::Kernel {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut ehdr = [0u8; 32];
    f.read_exact(&mut ehdr).map_err(|e| BootError::Kernel {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(u64::from_le_bytes(
        ehdr[24..32].try_into().unwrap_or_default(),
    ))
}

/// Loads the initrd at the highest page-aligned address that fits.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    kernel_end: u64,
) -> Result<InitrdPlacement, BootError> {
    let err = |reason: String| BootError::Initrd {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = File::open(path).map_err(|e| err(e.to_string()))?;
    let size = f.metadata().map_err(|e| err(e.to_string()))?.len();
    let top = mem_size.min(INITRD_ADDR_MAX + 1);
    let kernel_end_aligned = (kernel_end + 0xfff) & !0xfff;
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end_aligned)
        .ok_or_else(|| BootError::MemoryTooSmall {
            mib: mem_size >> 20,
            what: format!(
                "no room for initrd {} ({size} bytes) above the kernel (ends at {kernel_end:#x})",
                path.display()
            ),
        })?;
    let size_usize = usize::try_from(size).map_err(|_| err("too large".into()))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size_usize)
        .map_err(|e| err(format!("reading into guest memory: {e}")))?;
    Ok(InitrdPlacement { addr, size })
}

/// Writes the boot GDT, an empty IDT and page tables identity-mapping 4 GiB
/// with 2 MiB pages.
pub fn write_tables(mem: &GuestMemoryMmap, entry: EntryPoint) -> Result<(), BootError> {
    let w = |e: vm_memory::GuestMemoryError| BootError::Write(e.to_string());
    let gdt: &[u64; 4] = match entry {
        EntryPoint::Pvh(_) => &GDT_32,
        EntryPoint::Linux64(_) => &GDT_64,
    };
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(w)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(w)?;
    // PML4[0] -> PDPT; PDPT[0..4] -> PD0..PD3; PDn[i] -> 2 MiB page.
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(w)?;
    for pd in 0..4u64 {
        let pd_addr = PDE_START + pd * 0x1000;
        mem.write_obj(pd_addr | 0x03, GuestAddress(PDPTE_START + pd * 8))
            .map_err(w)?;
        let mut table = [0u8; 4096];
        for (i, chunk) in table.chunks_exact_mut(8).enumerate() {
            let page = ((pd << 30) | ((i as u64) << 21)) | 0x83;
            chunk.copy_from_slice(&page.to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd_addr)).map_err(w)?;
    }
    Ok(())
}

/// The e820 map: low RAM, then RAM from 1 MiB to the end of memory.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    const E820_RAM: u32 = 1;
    const E820_RESERVED: u32 = 2;
    vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        (HIMEM_START, mem_size - HIMEM_START, E820_RAM),
    ]
}

/// Writes the command line and the boot information for `entry`.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    entry: EntryPoint,
    mem_size: u64,
    cmdline: &Cmdline,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootError> {
    let cstr = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let bytes = cstr.as_bytes_with_nul();
    if bytes.len() > CMDLINE_MAX_SIZE {
        return Err(BootError::Cmdline(format!(
            "{} bytes, at most {}",
            bytes.len(),
            CMDLINE_MAX_SIZE
        )));
    }
    mem.write_slice(bytes, GuestAddress(CMDLINE_START))
        .map_err(|e| BootError::Write(e.to_string()))?;
    let e820 = e820_map(mem_size);
    match entry {
        EntryPoint::Pvh(_) => {
            let mut info = hvm_start_info {
                magic: 0x336e_c578,
                version: 1,
                cmdline_paddr: CMDLINE_START,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: e820.len() as u32,
                ..Default::default()
            };
            let memmap: Vec<hvm_memmap_table_entry> = e820
                .iter()
                .map(|&(addr, size, type_)| hvm_memmap_table_entry {
                    addr,
                    size,
                    type_,
                    reserved: 0,
                })
                .collect();
            let mut params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
            if let Some(rd) = initrd {
                // One module: the initrd, placed right after the memory map.
                let modlist = PVH_MEMMAP_START + 24 * e820.len() as u64;
                info.nr_modules = 1;
                info.modlist_paddr = modlist;
                params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
                let module = linux_loader::loader::elf::start_info::hvm_modlist_entry {
                    paddr: rd.addr,
                    size: rd.size,
                    ..Default::default()
                };
                params.set_modules(&[module], GuestAddress(modlist));
            }
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
                .map_err(|e| BootError::Write(e.to_string()))?;
        }
        EntryPoint::Linux64(_) => {
            let mut bp = boot_params::default();
            bp.hdr.type_of_loader = 0xff;
            bp.hdr.boot_flag = 0xaa55;
            bp.hdr.header = 0x5372_6448; // "HdrS"
            bp.hdr.kernel_alignment = 0x0100_0000;
            bp.hdr.cmd_line_ptr = CMDLINE_START as u32;
            bp.hdr.cmdline_size = bytes.len() as u32;
            if let Some(rd) = initrd {
                bp.hdr.ramdisk_image = rd.addr as u32;
                bp.hdr.ramdisk_size = rd.size as u32;
            }
            for (i, &(addr, size, type_)) in e820.iter().enumerate() {
                bp.e820_table[i] = boot_e820_entry {
                    addr,
                    size,
                    r#type: type_,
                };
            }
            bp.e820_entries = e820.len() as u8;
            let params = BootParams::new::<boot_params>(&bp, GuestAddress(ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
                .map_err(|e| BootError::Write(e.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_map_covers_low_and_high_ram() {
        let m = e820_map(64 << 20);
        assert_eq!(m[0], (0, EBDA_START, 1));
        assert_eq!(m[2], (HIMEM_START, (64 << 20) - HIMEM_START, 1));
    }

    #[test]
    fn non_elf_kernel_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("ampoule-vmm-ut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("notelf");
        std::fs::write(&p, b"#!/bin/sh\necho hi\n").unwrap();
        let e = elf_load_end(&p).unwrap_err().to_string();
        assert!(e.contains("not an ELF"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
