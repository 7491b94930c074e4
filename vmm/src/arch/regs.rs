//! Registers, segments, page tables, MSRs and LAPIC set-up at boot.

use crate::boot::layout;
use crate::boot::{BootEntry, EntryMode};
use crate::vm::memory::GuestMemory;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM ioctl failed.
    #[error("cannot set the boot {what} of vCPU {vcpu}: {source}")]
    Kvm {
        /// What was being set.
        what: &'static str,
        /// Which vCPU.
        vcpu: u8,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// KVM did not accept a boot MSR.
    #[error("KVM refused boot MSR {msr:#x} of vCPU {vcpu}")]
    MsrRefused {
        /// The MSR.
        msr: u32,
        /// Which vCPU.
        vcpu: u8,
    },
    /// Writing a boot table into guest memory failed.
    #[error("cannot write the boot {0} into guest memory")]
    Memory(&'static str),
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Boot GDT: null, 64-bit code, flat data, TSS (for the Linux entry), and
/// 32-bit code at 0x08 is not needed: PVH uses its own segment cache values.
const GDT_CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
const GDT_CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
const GDT_DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
const GDT_TSS: u64 = gdt_entry(0x808b, 0, 0xfffff);

/// Packs a GDT descriptor from its flags (access byte low, granularity
/// nibble high), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The KVM segment register matching GDT descriptor `entry` at `index`.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let limit = ((entry >> 32) & 0x000f_0000) | (entry & 0xffff);
    let granular = (entry >> 55) & 1 == 1;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            ((limit as u32) << 12) | 0xfff
        } else {
            limit as u32
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// The bootstrap vCPU's registers at the entry: what covm sets on top of
/// KVM's INIT state. One value serves both KVM ([`apply_bsp`]) and the
/// launch measurement (`platform::image::bsp_state`), so what is
/// measured is what runs. General-purpose registers not named are zero.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct BootRegs {
    pub rip: u64,
    pub rflags: u64,
    pub rbx: u64,
    pub rsi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: kvm_segment,
    pub ds: kvm_segment,
    pub es: kvm_segment,
    pub fs: kvm_segment,
    pub gs: kvm_segment,
    pub ss: kvm_segment,
    pub tr: kvm_segment,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub idt_base: u64,
    pub idt_limit: u16,
}

/// Writes the boot GDT, IDT and (for the 64-bit entry) page tables into
/// guest memory and returns the bootstrap vCPU's registers for `entry`.
/// Touches no vCPU, so it also serves `covm measure`.
pub fn boot_regs(mem: &GuestMemory, entry: &BootEntry) -> Result<BootRegs, RegsError> {
    let (code, cr0, cr3, cr4, efer, (rbx, rsi, rsp)) = match entry.mode {
        // PVH: flat 32-bit protected mode, paging off, EBX = start info.
        EntryMode::Pvh => (GDT_CODE32, CR0_PE | CR0_ET, 0, 0, 0, (entry.boot_info, 0, 0)),
        EntryMode::Linux64 => {
            write_page_tables(mem)?;
            (
                GDT_CODE64,
                CR0_PE | CR0_ET | CR0_NE | CR0_PG,
                layout::PML4,
                CR4_PAE,
                EFER_LME | EFER_LMA,
                (0, entry.boot_info, layout::BOOT_STACK),
            )
        }
    };
    write_gdt(mem, &[0, code, GDT_DATA, GDT_TSS])?;
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT))
        .map_err(|_| RegsError::Memory("IDT"))?;
    let data = segment(GDT_DATA, 2);
    Ok(BootRegs {
        rip: entry.entry,
        rflags: 2,
        rbx,
        rsi,
        rsp,
        rbp: rsp,
        cr0,
        cr3,
        cr4,
        efer,
        cs: segment(code, 1),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: segment(GDT_TSS, 3),
        gdt_base: layout::BOOT_GDT,
        gdt_limit: 4 * 8 - 1,
        idt_base: layout::BOOT_IDT,
        idt_limit: 7,
    })
}

/// Sets the bootstrap vCPU's registers to `boot` (over KVM's INIT state).
pub fn apply_bsp(vcpu: &VcpuFd, boot: &BootRegs) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, vcpu: 0, source };
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    sregs.cs = boot.cs;
    sregs.ds = boot.ds;
    sregs.es = boot.es;
    sregs.fs = boot.fs;
    sregs.gs = boot.gs;
    sregs.ss = boot.ss;
    sregs.tr = boot.tr;
    sregs.gdt.base = boot.gdt_base;
    sregs.gdt.limit = boot.gdt_limit;
    sregs.idt.base = boot.idt_base;
    sregs.idt.limit = boot.idt_limit;
    sregs.cr0 = boot.cr0;
    sregs.cr3 = boot.cr3;
    sregs.cr4 = boot.cr4;
    sregs.efer = boot.efer;
    let regs = kvm_regs {
        rflags: boot.rflags,
        rip: boot.rip,
        rbx: boot.rbx,
        rsi: boot.rsi,
        rsp: boot.rsp,
        rbp: boot.rbp,
        ..Default::default()
    };
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("registers"))
}

fn write_gdt(mem: &GuestMemory, table: &[u64]) -> Result<(), RegsError> {
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::BOOT_GDT + 8 * i as u64))
            .map_err(|_| RegsError::Memory("GDT"))?;
    }
    Ok(())
}

/// Identity-maps the first 1 GiB with 2 MiB pages for the 64-bit entry.
fn write_page_tables(mem: &GuestMemory) -> Result<(), RegsError> {
    let err = |_| RegsError::Memory("page tables");
    mem.write_obj(layout::PDPT | 0x03, GuestAddress(layout::PML4))
        .map_err(err)?;
    mem.write_obj(layout::PD | 0x03, GuestAddress(layout::PDPT))
        .map_err(err)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(layout::PD + i * 8))
            .map_err(err)?;
    }
    Ok(())
}

/// x87 and SSE control words as after reset.
pub fn setup_fpu(vcpu: &VcpuFd, index: u8) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Kvm {
        what: "FPU",
        vcpu: index,
        source,
    })
}

/// MSR indices set at boot.
mod msr {
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC: u32 = 0x10;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
}

/// The MSR values a guest expects at reset: system-call MSRs cleared, fast
/// strings on, MTRRs enabled with write-back default (so memory is cached).
pub fn setup_msrs(vcpu: &VcpuFd, index: u8) -> Result<(), RegsError> {
    let values = [
        (msr::SYSENTER_CS, 0),
        (msr::SYSENTER_ESP, 0),
        (msr::SYSENTER_EIP, 0),
        (msr::STAR, 0),
        (msr::LSTAR, 0),
        (msr::CSTAR, 0),
        (msr::SYSCALL_MASK, 0),
        (msr::KERNEL_GS_BASE, 0),
        (msr::TSC, 0),
        (msr::MISC_ENABLE, 1),
        (msr::MTRR_DEF_TYPE, (1 << 11) | 6),
    ];
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).expect("a handful of MSRs fits");
    let kvm = |source| RegsError::Kvm {
        what: "MSRs",
        vcpu: index,
        source,
    };
    let written = vcpu.set_msrs(&msrs).map_err(kvm)?;
    match entries.get(written) {
        Some(refused) => Err(RegsError::MsrRefused {
            msr: refused.index,
            vcpu: index,
        }),
        None => Ok(()),
    }
}

/// LAPIC local interrupt pins as a PC wires them: LINT0 takes the 8259's
/// ExtINT, LINT1 takes NMI.
pub fn setup_lapic(vcpu: &VcpuFd, index: u8) -> Result<(), RegsError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 7 << 8;
    const DELIVERY_NMI: u32 = 4 << 8;
    let kvm = |source| RegsError::Kvm {
        what: "LAPIC",
        vcpu: index,
        source,
    };
    let mut lapic = vcpu.get_lapic().map_err(kvm)?;
    for (offset, mode) in [(LVT_LINT0, DELIVERY_EXTINT), (LVT_LINT1, DELIVERY_NMI)] {
        let bytes: &mut [u8] =
            // SAFETY: `regs` is a plain array of c_char; viewing it as bytes changes no layout or validity.
            unsafe { std::slice::from_raw_parts_mut(lapic.regs.as_mut_ptr().cast::<u8>(), lapic.regs.len()) };
        let reg = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap());
        let value = (reg & !0x700) | mode;
        bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    vcpu.set_lapic(&lapic).map_err(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip_to_segments() {
        let cs = segment(GDT_CODE64, 1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.present, cs.s),
            (8, 0xb, 1, 0, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment(GDT_CODE32, 1);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let ds = segment(GDT_DATA, 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.g), (16, 3, 1, 1));
        assert_eq!(GDT_CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!(GDT_DATA, 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = crate::vm::memory::allocate(16 << 20).unwrap();
        write_page_tables(&mem).unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(layout::PML4)).unwrap(),
            layout::PDPT | 3
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(layout::PD + 8 * 511)).unwrap(),
            (511 << 21) | 0x83
        );
    }
}
