//! Telling boot image formats apart by their headers.

/// Formats covm boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// An ELF executable.
    Elf,
    /// A Linux bzImage.
    BzImage,
}

/// Offset of the bzImage setup header's "HdrS" magic.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// Offset of the boot sector's 0xAA55 flag.
const BOOT_FLAG_OFFSET: usize = 0x1fe;
/// Bytes needed to tell the formats apart.
pub const PROBE_LEN: usize = BZIMAGE_MAGIC_OFFSET + 4;

/// The format of an image whose first bytes are `head`, if covm boots it.
pub fn detect(head: &[u8]) -> Option<ImageKind> {
    if head.starts_with(b"\x7fELF") {
        return Some(ImageKind::Elf);
    }
    let magic = head.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4)?;
    let flag = head.get(BOOT_FLAG_OFFSET..BOOT_FLAG_OFFSET + 2)?;
    (magic == b"HdrS" && flag == [0x55, 0xaa]).then_some(ImageKind::BzImage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_elf_bzimage_and_neither() {
        assert_eq!(detect(b"\x7fELF\x02\x01"), Some(ImageKind::Elf));
        let mut bz = vec![0u8; PROBE_LEN];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz), Some(ImageKind::BzImage));
        bz[0x1fe] = 0;
        assert_eq!(detect(&bz), None);
        assert_eq!(detect(b"#!/bin/sh\n"), None);
        assert_eq!(detect(&[]), None);
    }
}
