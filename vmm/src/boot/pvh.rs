//! The PVH start info and memory map.

use super::{check_range, layout, BootError, Initramfs};
use crate::vm::memory::{e820_map, GuestMemory};
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::GuestAddress;

/// The PVH start info magic (`XEN_HVM_START_MAGIC_VALUE`).
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Writes `hvm_start_info` (version 1, with a memory map) at
/// [`layout::PVH_START_INFO`].
pub(super) fn write_start_info(mem: &GuestMemory, size: u64, initrd: Option<Initramfs>) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(size)
        .into_iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let memmap_bytes = memmap.len() * std::mem::size_of::<hvm_memmap_table_entry>();
    check_range(mem, "PVH memory map", layout::PVH_MEMMAP, memmap_bytes)?;
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE,
        memmap_paddr: layout::PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(layout::PVH_START_INFO));
    if let Some(initrd) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST;
        params = BootParams::new(&info, GuestAddress(layout::PVH_START_INFO));
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(layout::PVH_MODLIST));
    }
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP));
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem).map_err(|e| BootError::Write {
        what: "PVH start info",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::memory::allocate;
    use vm_memory::Bytes;

    #[test]
    fn start_info_points_at_cmdline_and_memmap() {
        let mem = allocate(64 << 20).unwrap();
        write_start_info(
            &mem,
            64 << 20,
            Some(Initramfs {
                addr: 0x300_0000,
                size: 0x1234,
            }),
        )
        .unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_START_INFO)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, layout::CMDLINE);
        assert_eq!(info.memmap_entries, 4);
        assert_eq!(info.nr_modules, 1);
        let last: hvm_memmap_table_entry = mem.read_obj(GuestAddress(layout::PVH_MEMMAP + 2 * 24)).unwrap();
        assert_eq!((last.addr, last.size, last.type_), (0x100000, (64 << 20) - 0x100000, 1));
        // The PCI configuration window, reserved.
        let ecam: hvm_memmap_table_entry = mem.read_obj(GuestAddress(layout::PVH_MEMMAP + 3 * 24)).unwrap();
        assert_eq!((ecam.addr, ecam.size, ecam.type_), (0xe000_0000, 0x1000_0000, 2));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1234));
    }
}
