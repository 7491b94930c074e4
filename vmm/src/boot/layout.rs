//! Where covm puts boot structures in low guest memory.
//!
//! ```text
//! 0x0500  boot GDT            0x0520  boot IDT (empty)
//! 0x7000  PVH start info / Linux zero page (one or the other)
//! 0x7040  PVH memory map (after the 56-byte start info)
//! 0x7800  PVH module list (initramfs)
//! 0x8ff0  initial stack (64-bit Linux entry)
//! 0x9000  PML4, 0xa000 PDPT, 0xb000 PD: identity map of the first 1 GiB
//! 0x20000 command line (up to CMDLINE_MAX bytes)
//! ```
//! The built-in firmware's AP trampoline sits at 0x8000 and its image at
//! 1 MiB (see `covm_guest_abi::layout`); PVH boots touch neither the stack
//! nor the page tables above.

/// Boot GDT.
pub const BOOT_GDT: u64 = 0x500;
/// Boot IDT.
pub const BOOT_IDT: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_START_INFO: u64 = 0x7000;
/// PVH memory map.
pub const PVH_MEMMAP: u64 = 0x7040;
/// PVH module list.
pub const PVH_MODLIST: u64 = 0x7800;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the 64-bit Linux entry.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Page map level 4.
pub const PML4: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT: u64 = 0xa000;
/// Page directory (2 MiB pages).
pub const PD: u64 = 0xb000;
/// Command line.
pub const CMDLINE: u64 = 0x20000;
/// Largest command line, NUL included.
pub const CMDLINE_MAX: usize = 4096;
