//! The built-in firmware, built from firmware/image by build.rs.

/// The firmware ELF.
pub static ELF: &[u8] = include_bytes!(env!("COVM_FIRMWARE_ELF"));
