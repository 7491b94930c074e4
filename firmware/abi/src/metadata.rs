//! The firmware's launch metadata: the pages a confidential launch must add
//! for it, besides the ones covm loads.
//!
//! Modelled on OVMF's SEV metadata (edk2 `OvmfPkg/ResetVector`, "SEV
//! metadata": signature `ASEV`, a version and `{base, size, type}`
//! sections), but carried in a non-loaded ELF section of its own,
//! [`SECTION_NAME`], that covm reads from the ELF (an ELF without it
//! launches without any of these pages). All fields little-endian:
//!
//! ```text
//! header, 16 bytes:
//!   0x00  4  signature  b"CVMD"
//!   0x04  4  length     bytes of the header and every section (16 + 16 × count)
//!   0x08  4  version    1
//!   0x0c  4  count      sections, at most MAX_SECTIONS
//! section, 16 bytes each, in the order the launch adds them:
//!   0x00  8  gpa        page-aligned guest-physical address
//!   0x08  4  size       bytes, a non-zero multiple of 4096
//!   0x0c  4  kind       SectionKind (OVMF's numbers)
//! ```
//!
//! Sections may not overlap. SEV-SNP adds them after the loaded pages, in
//! this order: [`SectionKind::SnpSecMem`] as ZERO pages,
//! [`SectionKind::SnpSecrets`] as the SECRETS page,
//! [`SectionKind::Cpuid`] as the CPUID page (covm's CPUID table),
//! [`SectionKind::KernelHashes`] as the SEV kernel hashes table (NORMAL)
//! or, without one, a ZERO page. Other platforms ignore them.

use crate::layout::PAGE_SIZE;

/// The ELF section covm looks for.
pub const SECTION_NAME: &str = ".covm_metadata";
/// The header's signature.
pub const SIGNATURE: [u8; 4] = *b"CVMD";
/// The one version defined.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 16;
/// Bytes of one section.
pub const SECTION_LEN: usize = 16;
/// The most sections a table may list.
pub const MAX_SECTIONS: usize = 64;

/// Where covm's firmware wants its SEV-SNP secrets page.
pub const SNP_SECRETS_GPA: u64 = 0x2000;
/// Where covm's firmware wants its SEV-SNP CPUID page.
pub const SNP_CPUID_GPA: u64 = 0x3000;
/// Where the SEV kernel hashes table goes (QEMU's page, covm's
/// `covm_measure::kernel_hashes::SEV_HASHES_GPA`).
pub const KERNEL_HASHES_GPA: u64 = 0x5000;
/// The AP trampoline's page, which the firmware writes before it could
/// validate memory itself: pre-validated zero memory on SEV-SNP.
pub const AP_TRAMPOLINE_GPA: u64 = 0x8000;

/// What a section is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SectionKind {
    /// Memory the firmware uses before it can validate any: added as
    /// zero pages, so it starts validated (OVMF's `SNP_SEC_MEM`).
    SnpSecMem = 1,
    /// The SEV-SNP secrets page (one page).
    SnpSecrets = 2,
    /// The SEV-SNP CPUID page (one page).
    Cpuid = 3,
    /// The SEV kernel hashes table (one page).
    KernelHashes = 0x10,
}

impl SectionKind {
    /// The kind numbered `value`.
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => SectionKind::SnpSecMem,
            2 => SectionKind::SnpSecrets,
            3 => SectionKind::Cpuid,
            0x10 => SectionKind::KernelHashes,
            _ => return None,
        })
    }

    /// Its name, as OVMF's metadata names it.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::SnpSecMem => "SNP_SEC_MEM",
            SectionKind::SnpSecrets => "SNP_SECRETS",
            SectionKind::Cpuid => "CPUID",
            SectionKind::KernelHashes => "KERNEL_HASHES",
        }
    }

    /// Whether the kind is exactly one page.
    pub fn one_page(self) -> bool {
        !matches!(self, SectionKind::SnpSecMem)
    }
}

/// The header, as the firmware image holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Header {
    /// [`SIGNATURE`].
    pub signature: [u8; 4],
    /// Bytes of the header and the sections.
    pub length: u32,
    /// [`VERSION`].
    pub version: u32,
    /// Sections that follow.
    pub count: u32,
}

impl Header {
    /// Its encoding.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.signature);
        b[4..8].copy_from_slice(&self.length.to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.count.to_le_bytes());
        b
    }
}

/// One section, as the firmware image holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Section {
    /// Page-aligned guest-physical address.
    pub gpa: u64,
    /// Bytes, a multiple of [`PAGE_SIZE`].
    pub size: u32,
    /// A [`SectionKind`] number.
    pub kind: u32,
}

impl Section {
    /// A section of `kind`.
    pub const fn new(gpa: u64, size: u32, kind: SectionKind) -> Self {
        Section {
            gpa,
            size,
            kind: kind as u32,
        }
    }

    /// Its encoding.
    pub fn to_bytes(&self) -> [u8; SECTION_LEN] {
        let mut b = [0u8; SECTION_LEN];
        b[0..8].copy_from_slice(&self.gpa.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..16].copy_from_slice(&self.kind.to_le_bytes());
        b
    }

    /// The end of its range (exclusive).
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(u64::from(self.size))
    }
}

/// A whole table of `N` sections, laid out as the format says (the
/// firmware places one in [`SECTION_NAME`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Table<const N: usize> {
    /// The header.
    pub header: Header,
    /// The sections.
    pub sections: [Section; N],
}

impl<const N: usize> Table<N> {
    /// The table of `sections`, header filled in.
    pub const fn new(sections: [Section; N]) -> Self {
        Table {
            header: Header {
                signature: SIGNATURE,
                length: (HEADER_LEN + N * SECTION_LEN) as u32,
                version: VERSION,
                count: N as u32,
            },
            sections,
        }
    }
}

/// Why a metadata table is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataError {
    /// Fewer bytes than a header.
    Short(usize),
    /// Not [`SIGNATURE`].
    Signature([u8; 4]),
    /// Not [`VERSION`].
    Version(u32),
    /// More than [`MAX_SECTIONS`].
    TooMany(u32),
    /// `length` does not match the count, or the bytes given.
    Length {
        /// The header's length.
        length: u32,
        /// What the count implies.
        expected: usize,
        /// Bytes available.
        available: usize,
    },
    /// A kind number not defined.
    UnknownKind {
        /// The section's index.
        index: usize,
        /// Its kind number.
        kind: u32,
    },
    /// A section not page-aligned or not whole pages, or empty.
    Unaligned {
        /// The section's index.
        index: usize,
        /// Its address.
        gpa: u64,
        /// Its size.
        size: u32,
    },
    /// A one-page kind of another size.
    NotOnePage {
        /// The section's index.
        index: usize,
        /// Its kind.
        kind: SectionKind,
        /// Its size.
        size: u32,
    },
    /// A section that wraps the address space.
    Overflow {
        /// The section's index.
        index: usize,
    },
    /// Two sections over a common page.
    Overlap {
        /// The earlier section.
        first: usize,
        /// The later one.
        second: usize,
    },
    /// A one-page kind given twice.
    Duplicate {
        /// The later section.
        index: usize,
        /// Its kind.
        kind: SectionKind,
    },
}

impl core::fmt::Display for MetadataError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            MetadataError::Short(n) => write!(f, "{n} bytes, shorter than its {HEADER_LEN}-byte header"),
            MetadataError::Signature(s) => write!(f, "bad signature {s:02x?} (expected \"CVMD\")"),
            MetadataError::Version(v) => write!(f, "version {v} is not supported (covm reads version {VERSION})"),
            MetadataError::TooMany(n) => write!(f, "{n} sections, at most {MAX_SECTIONS}"),
            MetadataError::Length {
                length,
                expected,
                available,
            } => write!(
                f,
                "length {length} does not match its sections ({expected} bytes) or the {available} bytes present"
            ),
            MetadataError::UnknownKind { index, kind } => write!(f, "section {index} has unknown kind {kind:#x}"),
            MetadataError::Unaligned { index, gpa, size } => write!(
                f,
                "section {index} ({gpa:#x}, {size:#x} bytes) is not whole, page-aligned pages"
            ),
            MetadataError::NotOnePage { index, kind, size } => {
                write!(f, "section {index} ({}) is {size:#x} bytes, not one page", kind.name())
            }
            MetadataError::Overflow { index } => write!(f, "section {index} runs past the end of the address space"),
            MetadataError::Overlap { first, second } => write!(f, "sections {first} and {second} overlap"),
            MetadataError::Duplicate { index, kind } => {
                write!(f, "section {index} is a second {} section", kind.name())
            }
        }
    }
}

/// A validated table: its sections, in order.
#[derive(Debug, Clone, Copy)]
pub struct Metadata<'a> {
    bytes: &'a [u8],
    count: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn section_at(b: &[u8], index: usize) -> Section {
    let at = HEADER_LEN + index * SECTION_LEN;
    let mut gpa = [0u8; 8];
    gpa.copy_from_slice(&b[at..at + 8]);
    Section {
        gpa: u64::from_le_bytes(gpa),
        size: u32_at(b, at + 8),
        kind: u32_at(b, at + 12),
    }
}

impl<'a> Metadata<'a> {
    /// Reads and checks a table: signature, version, length, kinds,
    /// alignment, sizes, no overlap, one-page kinds at most once. Bytes
    /// after `length` (section padding) are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, MetadataError> {
        if bytes.len() < HEADER_LEN {
            return Err(MetadataError::Short(bytes.len()));
        }
        let signature = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if signature != SIGNATURE {
            return Err(MetadataError::Signature(signature));
        }
        let length = u32_at(bytes, 4);
        let version = u32_at(bytes, 8);
        if version != VERSION {
            return Err(MetadataError::Version(version));
        }
        let count = u32_at(bytes, 12);
        if count as usize > MAX_SECTIONS {
            return Err(MetadataError::TooMany(count));
        }
        let expected = HEADER_LEN + count as usize * SECTION_LEN;
        if length as usize != expected || bytes.len() < expected {
            return Err(MetadataError::Length {
                length,
                expected,
                available: bytes.len(),
            });
        }
        let table = Metadata {
            bytes: &bytes[..expected],
            count: count as usize,
        };
        for index in 0..table.count {
            let s = section_at(bytes, index);
            let kind = SectionKind::from_u32(s.kind).ok_or(MetadataError::UnknownKind { index, kind: s.kind })?;
            if s.size == 0 || !s.gpa.is_multiple_of(PAGE_SIZE) || !u64::from(s.size).is_multiple_of(PAGE_SIZE) {
                return Err(MetadataError::Unaligned {
                    index,
                    gpa: s.gpa,
                    size: s.size,
                });
            }
            if kind.one_page() && u64::from(s.size) != PAGE_SIZE {
                return Err(MetadataError::NotOnePage {
                    index,
                    kind,
                    size: s.size,
                });
            }
            if s.gpa.checked_add(u64::from(s.size)).is_none() {
                return Err(MetadataError::Overflow { index });
            }
            for first in 0..index {
                let other = section_at(bytes, first);
                if s.gpa < other.end() && other.gpa < s.end() {
                    return Err(MetadataError::Overlap { first, second: index });
                }
                if kind.one_page() && other.kind == s.kind {
                    return Err(MetadataError::Duplicate { index, kind });
                }
            }
        }
        Ok(table)
    }

    /// Sections in the table.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Section `index` and its (checked) kind.
    pub fn get(&self, index: usize) -> Option<(Section, SectionKind)> {
        if index >= self.count {
            return None;
        }
        let s = section_at(self.bytes, index);
        SectionKind::from_u32(s.kind).map(|k| (s, k))
    }

    /// The sections in order, with their kinds.
    pub fn iter(&self) -> impl Iterator<Item = (Section, SectionKind)> + '_ {
        (0..self.count).filter_map(|i| self.get(i))
    }
}

/// The table covm's built-in firmware carries: the AP trampoline's page
/// as pre-validated memory, then the secrets, CPUID and kernel hashes pages.
pub const COVM_FIRMWARE: Table<4> = Table::new([
    Section::new(AP_TRAMPOLINE_GPA, PAGE_SIZE as u32, SectionKind::SnpSecMem),
    Section::new(SNP_SECRETS_GPA, PAGE_SIZE as u32, SectionKind::SnpSecrets),
    Section::new(SNP_CPUID_GPA, PAGE_SIZE as u32, SectionKind::Cpuid),
    Section::new(KERNEL_HASHES_GPA, PAGE_SIZE as u32, SectionKind::KernelHashes),
]);

/// The encoding of `table` (the bytes its `repr(C)` layout has in memory).
#[cfg(test)]
pub fn encode<const N: usize>(table: &Table<N>) -> std::vec::Vec<u8> {
    let mut b = table.header.to_bytes().to_vec();
    for s in &table.sections {
        b.extend_from_slice(&s.to_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn raw(sections: &[(u64, u32, u32)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&SIGNATURE);
        b.extend_from_slice(&((HEADER_LEN + sections.len() * SECTION_LEN) as u32).to_le_bytes());
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for &(gpa, size, kind) in sections {
            b.extend_from_slice(&Section { gpa, size, kind }.to_bytes());
        }
        b
    }

    #[test]
    fn layout_is_the_encoding() {
        assert_eq!(core::mem::size_of::<Header>(), HEADER_LEN);
        assert_eq!(core::mem::size_of::<Section>(), SECTION_LEN);
        assert_eq!(core::mem::size_of::<Table<4>>(), HEADER_LEN + 4 * SECTION_LEN);
        let bytes = encode(&COVM_FIRMWARE);
        // SAFETY: Table is repr(C) of integers with no padding (sizes
        // checked above); reading its bytes is reading initialised memory.
        let mem = unsafe {
            core::slice::from_raw_parts(
                (&COVM_FIRMWARE as *const Table<4>).cast::<u8>(),
                core::mem::size_of::<Table<4>>(),
            )
        };
        assert_eq!(mem, &bytes[..]);
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&COVM_FIRMWARE);
        let table = Metadata::parse(&bytes).unwrap();
        assert_eq!(table.len(), 4);
        let read: Vec<(Section, SectionKind)> = table.iter().collect();
        let kinds: Vec<SectionKind> = read.iter().map(|r| r.1).collect();
        assert_eq!(
            kinds,
            [
                SectionKind::SnpSecMem,
                SectionKind::SnpSecrets,
                SectionKind::Cpuid,
                SectionKind::KernelHashes
            ]
        );
        let sections: Vec<Section> = read.iter().map(|r| r.0).collect();
        assert_eq!(sections, COVM_FIRMWARE.sections);
        // Padding after the table is ignored; an empty table is valid.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 8]);
        assert_eq!(Metadata::parse(&padded).unwrap().len(), 4);
        assert!(Metadata::parse(&raw(&[])).unwrap().is_empty());
        let big = raw(&[(0x10_0000, 0x3000, 1)]);
        let (s, k) = Metadata::parse(&big).unwrap().get(0).unwrap();
        assert_eq!((s.gpa, s.end(), k), (0x10_0000, 0x10_3000, SectionKind::SnpSecMem));
    }

    #[test]
    fn refusals() {
        let err = |b: &[u8]| Metadata::parse(b).unwrap_err();
        let good = raw(&[(0x2000, 4096, 2)]);
        assert_eq!(err(&good[..10]), MetadataError::Short(10));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(err(&b), MetadataError::Signature(*b"XVMD"));
        assert!(err(&b).to_string().starts_with("bad signature"));
        let mut b = good.clone();
        b[8] = 2;
        assert_eq!(err(&b), MetadataError::Version(2));
        assert_eq!(err(&b).to_string(), "version 2 is not supported (covm reads version 1)");
        let mut b = good.clone();
        b[12..16].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(err(&b), MetadataError::TooMany(65));
        let mut b = good.clone();
        b[4] = 48;
        assert!(matches!(
            err(&b),
            MetadataError::Length {
                length: 48,
                expected: 32,
                ..
            }
        ));
        assert!(matches!(err(&good[..20]), MetadataError::Length { available: 20, .. }));
        assert_eq!(
            err(&raw(&[(0x2000, 4096, 7)])),
            MetadataError::UnknownKind { index: 0, kind: 7 }
        );
        for (gpa, size) in [(0x2010, 4096), (0x2000, 100), (0x2000, 0)] {
            assert_eq!(
                err(&raw(&[(gpa, size, 1)])),
                MetadataError::Unaligned { index: 0, gpa, size }
            );
        }
        assert_eq!(
            err(&raw(&[(0x2000, 8192, 3)])).to_string(),
            "section 0 (CPUID) is 0x2000 bytes, not one page"
        );
        assert_eq!(
            err(&raw(&[(u64::MAX - 0xfff, 8192, 1)])),
            MetadataError::Overflow { index: 0 }
        );
        assert_eq!(
            err(&raw(&[(0x1000, 0x3000, 1), (0x3000, 4096, 2)])),
            MetadataError::Overlap { first: 0, second: 1 }
        );
        assert_eq!(
            err(&raw(&[(0x1000, 4096, 2), (0x3000, 4096, 3), (0x2000, 4096, 2)])).to_string(),
            "section 2 is a second SNP_SECRETS section"
        );
        // Adjacent sections are fine, and SEC_MEM may repeat.
        assert!(Metadata::parse(&raw(&[(0x1000, 4096, 1), (0x2000, 4096, 1), (0x3000, 4096, 2)])).is_ok());
    }
}
