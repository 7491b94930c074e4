//! The Linux zero page (`boot_params`) for the 64-bit boot protocol.

use super::{layout, BootError, Initramfs};
use crate::vm::memory::{e820_map, GuestMemory};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::GuestAddress;

/// "HdrS": the setup header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector flag.
const BOOT_FLAG: u16 = 0xaa55;
/// "Undefined" boot loader id (0xff), as other VMMs report.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags: the heap_end_ptr field is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// Alignment a kernel without a setup header is assumed to want.
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// Writes the zero page at [`layout::ZERO_PAGE`]. `header` is the bzImage's
/// setup header; an ELF kernel has none and gets a minimal valid one.
pub(super) fn write_zero_page(
    mem: &GuestMemory,
    size: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<Initramfs>,
) -> Result<(), BootError> {
    let hdr = header.unwrap_or(setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS_MAGIC,
        kernel_alignment: DEFAULT_KERNEL_ALIGNMENT,
        ..Default::default()
    });
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(size);
    if map.len() > params.e820_table.len() {
        return Err(BootError::Write {
            what: "e820 map",
            reason: format!("{} entries do not fit", map.len()),
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE)),
        mem,
    )
    .map_err(|e| BootError::Write {
        what: "zero page",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::memory::allocate;
    use vm_memory::Bytes;

    #[test]
    fn zero_page_for_an_elf_kernel() {
        let mem = allocate(5 << 30).unwrap();
        write_zero_page(
            &mem,
            5 << 30,
            None,
            12,
            Some(Initramfs {
                addr: 0x1000_0000,
                size: 0x2000,
            }),
        )
        .unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE as u32);
        assert_eq!({ hdr.cmdline_size }, 12);
        assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (0x1000_0000, 0x2000));
        // Low RAM, the legacy hole, RAM from 1 MiB, the ECAM, high RAM.
        assert_eq!(p.e820_entries, 5);
        let ecam = p.e820_table[3];
        assert_eq!(({ ecam.addr }, { ecam.r#type }), (0xe000_0000, 2));
        let high = p.e820_table[4];
        assert_eq!(({ high.addr }, { high.size }, { high.r#type }), (4 << 30, 2 << 30, 1));
    }

    #[test]
    fn bzimage_header_is_kept() {
        let mem = allocate(64 << 20).unwrap();
        let header = setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x20f,
            ..Default::default()
        };
        write_zero_page(&mem, 64 << 20, Some(header), 0, None).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE)).unwrap();
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.type_of_loader }, LOADER_TYPE_UNDEFINED);
    }
}
