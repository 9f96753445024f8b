//! Putting a kernel, its initramfs and command line into guest memory, and the
//! structure that tells the kernel where everything is (PVH start_info or the
//! Linux zero page).

pub mod linux;
pub mod pvh;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::{KernelFormat, VmConfig};
use crate::cpu::regs::EntryMode;
use crate::layout::{low_ram_end, CMDLINE_ADDR, HIMEM_START, PAGE_SIZE};

/// The 64-bit entry point of a bzImage sits 0x200 past where it is loaded.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path}: {source}")]
    LoadKernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("initramfs {path}: {source}")]
    Initramfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initramfs {path}: {size} bytes do not fit between the kernel (ends at {kernel_end:#x}) and {limit:#x}")]
    InitramfsTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("writing boot data to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("writing the command line: {0}")]
    CmdlineLoad(linux_loader::loader::Error),
}

/// Where the boot vCPU starts, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    pub mode: EntryMode,
    pub entry: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Initramfs {
    pub addr: u64,
    pub size: u64,
}

struct LoadedKernel {
    entry: BootEntry,
    end: u64,
    /// The bzImage's own setup header, to be copied into the zero page.
    setup_header: Option<setup_header>,
}

/// Loads everything `config` names and writes the boot structure; returns where the
/// boot vCPU starts.
pub fn load(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    rsdp_addr: GuestAddress,
) -> Result<BootEntry, BootError> {
    let kernel = load_kernel(mem, &config.kernel, config.kernel_format)?;
    let initrd_limit = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max) + 1)
        .unwrap_or(u64::MAX)
        .min(low_ram_end(config.memory_bytes()));
    let initramfs = match &config.initramfs {
        Some(path) => Some(load_initramfs(mem, path, kernel.end, initrd_limit)?),
        None => None,
    };

    let mut cmdline = Cmdline::new(crate::config::MAX_CMDLINE_LEN).map_err(BootError::Cmdline)?;
    cmdline
        .insert_str(&config.cmdline)
        .map_err(BootError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(BootError::CmdlineLoad)?;

    let memory = config.memory_bytes();
    match kernel.entry.mode {
        EntryMode::Pvh => pvh::write_start_info(mem, memory, initramfs, rsdp_addr)?,
        EntryMode::Linux64 => linux::write_zero_page(
            mem,
            memory,
            kernel.setup_header,
            config.cmdline.len(),
            initramfs,
            rsdp_addr,
        )?,
    }
    Ok(kernel.entry)
}

fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    format: KernelFormat,
) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    let load_error = |source| BootError::LoadKernel {
        path: path.to_owned(),
        source,
    };
    let highmem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::Elf => {
            let loaded = Elf::load(mem, None, &mut file, highmem).map_err(load_error)?;
            let entry = match loaded.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => BootEntry {
                    mode: EntryMode::Pvh,
                    entry: addr.0,
                },
                _ => BootEntry {
                    mode: EntryMode::Linux64,
                    entry: loaded.kernel_load.0,
                },
            };
            Ok(LoadedKernel {
                entry,
                end: loaded.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let loaded = BzImage::load(mem, None, &mut file, highmem).map_err(load_error)?;
            Ok(LoadedKernel {
                entry: BootEntry {
                    mode: EntryMode::Linux64,
                    entry: loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                },
                end: loaded.kernel_end,
                setup_header: loaded.setup_header,
            })
        }
    }
}

/// Puts the initramfs at the top of low RAM (below `limit`), page-aligned, where it
/// stays clear of the kernel and of anything the kernel unpacks.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<Initramfs, BootError> {
    let io_error = |source| BootError::Initramfs {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    let too_large = || BootError::InitramfsTooLarge {
        path: path.to_owned(),
        size,
        kernel_end,
        limit,
    };
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end)
        .ok_or_else(too_large)?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(source) => io_error(source),
            other => BootError::Memory(other),
        })?;
    Ok(Initramfs { addr, size })
}
