//! The firmware's launch metadata (`covm_guest_abi::metadata`), read from
//! the ELF covm boots.
//!
//! The table sits in a non-allocated ELF section named
//! [`SECTION_NAME`]; an ELF without that section has no metadata and
//! launches as before. A table that is there is checked strictly: its own
//! format ([`Metadata::parse`]: signature, version, length, kinds,
//! alignment, no overlap), then against the VM: every section in guest RAM
//! and none over a page the ELF's PT_LOAD segments cover (their memory
//! size: the `.bss` too), and a KERNEL_HASHES section at
//! [`KERNEL_HASHES_GPA`], where covm writes the SEV kernel hashes table.

use crate::vm::memory::GuestMemory;
use covm_guest_abi::layout::PAGE_SIZE as PAGE;
use covm_guest_abi::metadata::{Metadata, SectionKind, KERNEL_HASHES_GPA, SECTION_NAME};
use vm_memory::{GuestAddress, GuestMemoryBackend};

/// One section of the firmware's metadata, checked: the launch
/// description's (`covm_measure::FirmwareSection`).
pub use covm_measure::FirmwareSection;

/// `SHF_ALLOC`: the section occupies memory at run time.
const SHF_ALLOC: u64 = 2;
/// `PT_LOAD`.
const PT_LOAD: u32 = 1;

fn le(bytes: &[u8], at: usize, len: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(len)?)?;
    Some(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// The bytes of the section named `name`, and its flags; `Ok(None)` when
/// the ELF has no such section (or no section table).
fn find_section<'a>(elf: &'a [u8], name: &str) -> Result<Option<(&'a [u8], u64)>, String> {
    let field = |at, len| le(elf, at, len).ok_or_else(|| "the ELF header is truncated".to_string());
    let shoff = field(0x28, 8)? as usize;
    let shentsize = field(0x3a, 2)? as usize;
    let shnum = field(0x3c, 2)? as usize;
    let shstrndx = field(0x3e, 2)? as usize;
    if shoff == 0 || shnum == 0 {
        return Ok(None);
    }
    if shentsize < 0x40 {
        return Err(format!("its section headers are {shentsize} bytes, less than 64"));
    }
    let header = |index: usize| -> Result<(u64, u64, u64, u64), String> {
        let at = shoff + index * shentsize;
        let get =
            |off, len| le(elf, at + off, len).ok_or_else(|| format!("section header {index} lies outside the file"));
        // sh_name, sh_flags, sh_offset, sh_size.
        Ok((get(0, 4)?, get(8, 8)?, get(0x18, 8)?, get(0x20, 8)?))
    };
    let bytes_of = |offset: u64, size: u64, what: &str| -> Result<&'a [u8], String> {
        let start = usize::try_from(offset).map_err(|_| format!("{what} lies outside the file"))?;
        let end = usize::try_from(offset.saturating_add(size)).map_err(|_| format!("{what} lies outside the file"))?;
        elf.get(start..end)
            .ok_or_else(|| format!("{what} lies outside the file"))
    };
    if shstrndx >= shnum {
        return Err(format!("its section name table index {shstrndx} is not below {shnum}"));
    }
    let (_, _, str_off, str_size) = header(shstrndx)?;
    let names = bytes_of(str_off, str_size, "the section name table")?;
    for index in 0..shnum {
        let (name_off, flags, offset, size) = header(index)?;
        let Some(rest) = names.get(name_off as usize..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return Ok(Some((bytes_of(offset, size, name)?, flags)));
        }
    }
    Ok(None)
}

/// The page ranges `[start, end)` the ELF's PT_LOAD segments cover.
fn loaded_ranges(elf: &[u8]) -> Vec<(u64, u64)> {
    let (Some(phoff), Some(phentsize), Some(phnum)) = (le(elf, 0x20, 8), le(elf, 0x36, 2), le(elf, 0x38, 2)) else {
        return Vec::new();
    };
    (0..phnum as usize)
        .filter_map(|i| {
            let at = phoff as usize + i * phentsize as usize;
            (le(elf, at, 4)? == u64::from(PT_LOAD)).then_some(())?;
            let paddr = le(elf, at + 0x18, 8)?;
            let memsz = le(elf, at + 0x28, 8)?;
            let end = paddr.checked_add(memsz)?.checked_add(PAGE - 1)? & !(PAGE - 1);
            Some((paddr & !(PAGE - 1), end))
        })
        .collect()
}

/// The checked metadata of `elf`, to be booted in `memory`: empty when the
/// ELF carries none; the reason when it is malformed or does not fit.
pub fn read(elf: &[u8], memory: &GuestMemory) -> Result<Vec<FirmwareSection>, String> {
    let Some((bytes, flags)) = find_section(elf, SECTION_NAME)? else {
        return Ok(Vec::new());
    };
    if flags & SHF_ALLOC != 0 {
        return Err(format!(
            "{SECTION_NAME} is an allocated section: it must not be loaded into guest memory"
        ));
    }
    let table = Metadata::parse(bytes).map_err(|e| e.to_string())?;
    let loaded = loaded_ranges(elf);
    let mut sections = Vec::with_capacity(table.len());
    for (index, (section, kind)) in table.iter().enumerate() {
        let (gpa, end) = (section.gpa, section.end());
        let name = kind.name();
        let pages = (end - gpa) / PAGE;
        if let Some(page) = (0..pages)
            .map(|i| gpa + i * PAGE)
            .find(|&p| !memory.address_in_range(GuestAddress(p)))
        {
            return Err(format!(
                "section {index} ({name}, {gpa:#x}-{end:#x}) is outside guest RAM (page {page:#x})"
            ));
        }
        if let Some(&(start, stop)) = loaded.iter().find(|&&(start, stop)| gpa < stop && start < end) {
            return Err(format!(
                "section {index} ({name}, {gpa:#x}-{end:#x}) overlaps the loaded segment {start:#x}-{stop:#x}"
            ));
        }
        if kind == SectionKind::KernelHashes && gpa != KERNEL_HASHES_GPA {
            return Err(format!(
                "section {index} (KERNEL_HASHES) is at {gpa:#x}: covm places the SEV kernel hashes table at \
                 {KERNEL_HASHES_GPA:#x} only"
            ));
        }
        sections.push(FirmwareSection { gpa, pages, kind });
    }
    Ok(sections)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use covm_guest_abi::metadata::{Header, Section, COVM_FIRMWARE, HEADER_LEN, SECTION_LEN, SIGNATURE, VERSION};

    /// `elf` (with no section table) with a section table of a null
    /// section, `.shstrtab` and the section `name` holding `payload`, of
    /// flags `flags`.
    pub(crate) fn with_section(elf: &[u8], name: &str, payload: &[u8], flags: u64) -> Vec<u8> {
        let mut out = elf.to_vec();
        let mut strtab = vec![0u8];
        strtab.extend_from_slice(b".shstrtab\0");
        let name_at = strtab.len();
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
        let str_off = out.len();
        out.extend_from_slice(&strtab);
        let data_off = out.len();
        out.extend_from_slice(payload);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len();
        let mut sh = |name: usize, kind: u32, flags: u64, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&(name as u32).to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&flags.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            out.extend_from_slice(&h);
        };
        sh(0, 0, 0, 0, 0);
        sh(1, 3, 0, str_off, strtab.len());
        sh(name_at, 1, flags, data_off, payload.len());
        out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        out
    }

    /// A table of `sections` ({gpa, size, kind number}).
    pub(crate) fn table(sections: &[(u64, u32, u32)]) -> Vec<u8> {
        let mut b = Header {
            signature: SIGNATURE,
            length: (HEADER_LEN + sections.len() * SECTION_LEN) as u32,
            version: VERSION,
            count: sections.len() as u32,
        }
        .to_bytes()
        .to_vec();
        for &(gpa, size, kind) in sections {
            b.extend_from_slice(&Section { gpa, size, kind }.to_bytes());
        }
        b
    }

    #[test]
    fn builtin_firmware_carries_covm_firmware_table() {
        let mem = crate::vm::memory::allocate(64 << 20).unwrap();
        let sections = read(crate::boot::firmware::ELF, &mem).unwrap();
        let expected: Vec<FirmwareSection> = COVM_FIRMWARE
            .sections
            .iter()
            .map(|s| FirmwareSection {
                gpa: s.gpa,
                pages: u64::from(s.size) / PAGE,
                kind: SectionKind::from_u32(s.kind).unwrap(),
            })
            .collect();
        assert_eq!(sections, expected);
        assert_eq!(
            sections.iter().map(|s| (s.gpa, s.kind)).collect::<Vec<_>>(),
            [
                (0x8000, SectionKind::SnpSecMem),
                (0x2000, SectionKind::SnpSecrets),
                (0x3000, SectionKind::Cpuid),
                (0x5000, SectionKind::KernelHashes)
            ]
        );
    }

    #[test]
    fn an_elf_without_metadata_has_none() {
        let mem = crate::vm::memory::allocate(64 << 20).unwrap();
        let elf = crate::platform::measure::tiny_elf();
        assert_eq!(read(&elf, &mem).unwrap(), []);
        let other = with_section(&elf, ".comment", b"hello", 0);
        assert_eq!(read(&other, &mem).unwrap(), []);
    }

    #[test]
    fn synthetic_metadata_round_trips() {
        let mem = crate::vm::memory::allocate(64 << 20).unwrap();
        let elf = crate::platform::measure::tiny_elf();
        let t = table(&[(0x1000, 0x2000, 1), (0x3000, 4096, 3), (0x4000, 4096, 2)]);
        let sections = read(&with_section(&elf, SECTION_NAME, &t, 0), &mem).unwrap();
        assert_eq!(
            sections,
            [
                FirmwareSection {
                    gpa: 0x1000,
                    pages: 2,
                    kind: SectionKind::SnpSecMem
                },
                FirmwareSection {
                    gpa: 0x3000,
                    pages: 1,
                    kind: SectionKind::Cpuid
                },
                FirmwareSection {
                    gpa: 0x4000,
                    pages: 1,
                    kind: SectionKind::SnpSecrets
                },
            ]
        );
    }

    #[test]
    fn refusals() {
        let mem = crate::vm::memory::allocate(64 << 20).unwrap();
        let elf = crate::platform::measure::tiny_elf();
        let refused =
            |payload: &[u8], flags| read(&with_section(&elf, SECTION_NAME, payload, flags), &mem).unwrap_err();
        let good = table(&[(0x2000, 4096, 2)]);
        assert_eq!(
            refused(&good, SHF_ALLOC),
            ".covm_metadata is an allocated section: it must not be loaded into guest memory"
        );
        let mut bad = good.clone();
        bad[0] = b'A';
        assert!(refused(&bad, 0).starts_with("bad signature"));
        let mut bad = good.clone();
        bad[8] = 9;
        assert_eq!(refused(&bad, 0), "version 9 is not supported (covm reads version 1)");
        assert_eq!(
            refused(&table(&[(0x2800, 4096, 2)]), 0),
            "section 0 (0x2800, 0x1000 bytes) is not whole, page-aligned pages"
        );
        assert_eq!(
            refused(&table(&[(0x2000, 0x2000, 1), (0x3000, 4096, 3)]), 0),
            "sections 0 and 1 overlap"
        );
        assert_eq!(
            refused(&table(&[(0x2000, 4096, 9)]), 0),
            "section 0 has unknown kind 0x9"
        );
        // Outside the VM's 64 MiB of RAM.
        assert_eq!(
            refused(&table(&[(0x3ff_f000, 0x2000, 1)]), 0),
            "section 0 (SNP_SEC_MEM, 0x3fff000-0x4001000) is outside guest RAM (page 0x4000000)"
        );
        // Over the ELF's PT_LOAD (1 MiB, 5000 bytes of file, 8 KiB more of .bss).
        assert_eq!(
            refused(&table(&[(0x10_2000, 4096, 2)]), 0),
            "section 0 (SNP_SECRETS, 0x102000-0x103000) overlaps the loaded segment 0x100000-0x104000"
        );
        assert_eq!(
            refused(&table(&[(0x6000, 4096, 0x10)]), 0),
            "section 0 (KERNEL_HASHES) is at 0x6000: covm places the SEV kernel hashes table at 0x5000 only"
        );
        // A section table that points outside the file.
        let mut broken = with_section(&elf, SECTION_NAME, &good, 0);
        let len = broken.len() as u64;
        broken[0x28..0x30].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            read(&broken, &mem).unwrap_err(),
            "section header 1 lies outside the file"
        );
    }
}
