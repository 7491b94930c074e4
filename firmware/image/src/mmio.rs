//! Device registers, read and written with plain `mov` instructions.
//!
//! Why not `read_volatile`: the image is compiled for AVX2
//! (.cargo/config.toml), and the compiler may fold a volatile load into a
//! VEX instruction (it did: a `vpbroadcastd` straight from PCI
//! configuration space). An access to an emulated device's registers is
//! carried out by KVM's instruction emulator, which does not decode VEX:
//! the vCPU stops with an emulation failure. Inline assembly pins the
//! instruction. Every register access goes through here: the firmware's
//! own (PCI configuration, MSI-X table, virtio common configuration) and
//! virtio-drivers', which reaches its registers through safe-mmio, whose
//! `custom-mmio` backend is this module ([`Mov`]).
//!
//! Guest RAM shared with the host (virtqueues, the mailbox) is ordinary
//! memory to KVM and needs none of this.

use core::arch::asm;

/// Reads a byte register.
///
/// # Safety
/// `src` is a mapped device register (or memory) of this width.
pub unsafe fn read_u8(src: *const u8) -> u8 {
    let value: u8;
    // SAFETY: the caller's contract; one load, no stack, flags kept.
    unsafe {
        asm!("mov {v}, byte ptr [{p}]", p = in(reg) src, v = out(reg_byte) value, options(nostack, preserves_flags))
    };
    value
}

/// Reads a 16-bit register.
///
/// # Safety
/// `src` is a mapped, aligned device register (or memory) of this width.
pub unsafe fn read_u16(src: *const u16) -> u16 {
    let value: u16;
    // SAFETY: as in read_u8.
    unsafe {
        asm!("mov {v:x}, word ptr [{p}]", p = in(reg) src, v = out(reg) value, options(nostack, preserves_flags))
    };
    value
}

/// Reads a 32-bit register.
///
/// # Safety
/// `src` is a mapped, aligned device register (or memory) of this width.
pub unsafe fn read_u32(src: *const u32) -> u32 {
    let value: u32;
    // SAFETY: as in read_u8.
    unsafe {
        asm!("mov {v:e}, dword ptr [{p}]", p = in(reg) src, v = out(reg) value, options(nostack, preserves_flags))
    };
    value
}

/// Reads a 64-bit register.
///
/// # Safety
/// `src` is a mapped, aligned device register (or memory) of this width.
pub unsafe fn read_u64(src: *const u64) -> u64 {
    let value: u64;
    // SAFETY: as in read_u8.
    unsafe {
        asm!("mov {v:r}, qword ptr [{p}]", p = in(reg) src, v = out(reg) value, options(nostack, preserves_flags))
    };
    value
}

/// Writes a byte register.
///
/// # Safety
/// `dst` is a mapped device register (or memory) of this width.
pub unsafe fn write_u8(dst: *mut u8, value: u8) {
    // SAFETY: the caller's contract; one store, no stack, flags kept.
    unsafe {
        asm!("mov byte ptr [{p}], {v}", p = in(reg) dst, v = in(reg_byte) value, options(nostack, preserves_flags))
    };
}

/// Writes a 16-bit register.
///
/// # Safety
/// `dst` is a mapped, aligned device register (or memory) of this width.
pub unsafe fn write_u16(dst: *mut u16, value: u16) {
    // SAFETY: as in write_u8.
    unsafe { asm!("mov word ptr [{p}], {v:x}", p = in(reg) dst, v = in(reg) value, options(nostack, preserves_flags)) };
}

/// Writes a 32-bit register.
///
/// # Safety
/// `dst` is a mapped, aligned device register (or memory) of this width.
pub unsafe fn write_u32(dst: *mut u32, value: u32) {
    // SAFETY: as in write_u8.
    unsafe {
        asm!("mov dword ptr [{p}], {v:e}", p = in(reg) dst, v = in(reg) value, options(nostack, preserves_flags))
    };
}

/// Writes a 64-bit register.
///
/// # Safety
/// `dst` is a mapped, aligned device register (or memory) of this width.
pub unsafe fn write_u64(dst: *mut u64, value: u64) {
    // SAFETY: as in write_u8.
    unsafe {
        asm!("mov qword ptr [{p}], {v:r}", p = in(reg) dst, v = in(reg) value, options(nostack, preserves_flags))
    };
}

/// safe-mmio's backend (feature `custom-mmio`), for virtio-drivers.
pub struct Mov;

impl safe_mmio::MmioOps for Mov {
    unsafe fn read_u8(src: *const u8) -> u8 {
        // SAFETY: safe-mmio's caller guarantees a valid, aligned register.
        unsafe { read_u8(src) }
    }
    unsafe fn read_u16(src: *const u16) -> u16 {
        // SAFETY: as above.
        unsafe { read_u16(src) }
    }
    unsafe fn read_u32(src: *const u32) -> u32 {
        // SAFETY: as above.
        unsafe { read_u32(src) }
    }
    unsafe fn read_u64(src: *const u64) -> u64 {
        // SAFETY: as above.
        unsafe { read_u64(src) }
    }
    unsafe fn write_u8(dst: *mut u8, value: u8) {
        // SAFETY: as above.
        unsafe { write_u8(dst, value) }
    }
    unsafe fn write_u16(dst: *mut u16, value: u16) {
        // SAFETY: as above.
        unsafe { write_u16(dst, value) }
    }
    unsafe fn write_u32(dst: *mut u32, value: u32) {
        // SAFETY: as above.
        unsafe { write_u32(dst, value) }
    }
    unsafe fn write_u64(dst: *mut u64, value: u64) {
        // SAFETY: as above.
        unsafe { write_u64(dst, value) }
    }
}

safe_mmio::set_mmio_ops!(Mov);
