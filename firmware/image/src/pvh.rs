//! The PVH `struct hvm_start_info` the loader leaves for us (ebx at entry).

/// `XEN_HVM_START_MAGIC_VALUE`.
const MAGIC: u32 = 0x336e_c578;
/// Memory map entry type of usable RAM.
pub const E820_RAM: u32 = 1;
/// Longest command line we read.
const CMDLINE_MAX: usize = 4096;

#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    // Version 1 and later.
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

pub struct BootInfo {
    pub cmdline: &'static str,
    /// Empty when the loader gave no memory map (version 0).
    pub memmap: &'static [MemmapEntry],
}

/// Reads the start info at `paddr`, or says why it cannot.
pub fn read(paddr: u64) -> Result<BootInfo, &'static str> {
    if paddr == 0 || !paddr.is_multiple_of(8) {
        return Err("no PVH start info (ebx at entry is not a start info address)");
    }
    // SAFETY: memory is identity-mapped; the PVH loader put the structure
    // here and nobody writes it afterwards.
    let info = unsafe { &*(paddr as *const StartInfo) };
    if info.magic != MAGIC {
        return Err("no PVH start info (bad magic)");
    }
    let cmdline = if info.cmdline_paddr == 0 {
        ""
    } else {
        let base = info.cmdline_paddr as *const u8;
        // SAFETY: the loader guarantees a NUL-terminated string; reading
        // stops at the NUL or after CMDLINE_MAX bytes of identity-mapped RAM.
        let len = (0..CMDLINE_MAX)
            .find(|&i| unsafe { *base.add(i) } == 0)
            .unwrap_or(CMDLINE_MAX);
        // SAFETY: the `len` bytes were just read above.
        let bytes = unsafe { core::slice::from_raw_parts(base, len) };
        core::str::from_utf8(bytes).map_err(|_| "the command line is not UTF-8")?
    };
    let memmap = if info.version >= 1 && info.memmap_paddr != 0 && info.memmap_entries != 0 {
        // SAFETY: version >= 1 start infos carry a map of that many entries.
        unsafe { core::slice::from_raw_parts(info.memmap_paddr as *const MemmapEntry, info.memmap_entries as usize) }
    } else {
        &[]
    };
    Ok(BootInfo { cmdline, memmap })
}
