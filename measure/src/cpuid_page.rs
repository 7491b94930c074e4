//! The SEV-SNP CPUID page: the CPUID a VMM configures for the VM, in the
//! layout the SNP firmware checks and the guest reads (SEV-SNP firmware ABI
//! `SNP_LAUNCH_UPDATE` CPUID page; Linux `struct snp_cpuid_table`), all
//! little-endian and packed:
//!
//! ```text
//! 0x00  4  count (at most 64)
//! 0x04  4  reserved
//! 0x08  8  reserved
//! 0x10     64 entries of 48 bytes, the first `count` used:
//!   0x00  4  eax_in    leaf
//!   0x04  4  ecx_in    subleaf (0 for a leaf without subleaves)
//!   0x08  8  xcr0_in   XCR0 the values are for (1, x87, for leaf 0xd
//!                      subleaves 0 and 1, whose sizes depend on it; else 0)
//!   0x10  8  xss_in    IA32_XSS the values are for (0)
//!   0x18  4  eax
//!   0x1c  4  ebx
//!   0x20  4  ecx
//!   0x24  4  edx
//!   0x28  8  reserved
//! ```
//! The rest of the page is zero. The page's contents are not measured (the
//! SNP firmware checks them against the host's capabilities instead).

use crate::launch::PAGE_SIZE;
use alloc::boxed::Box;
use alloc::vec::Vec;

/// Entries a table holds at most.
pub const COUNT_MAX: usize = 64;
/// Bytes of the table's header.
pub const HEADER_LEN: usize = 16;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 48;

/// One CPUID leaf (and subleaf) as the VM sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidEntry {
    /// The leaf (EAX in).
    pub function: u32,
    /// The subleaf (ECX in); 0 for a leaf without subleaves (KVM: an entry
    /// without `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`).
    pub index: u32,
    /// EAX out.
    pub eax: u32,
    /// EBX out.
    pub ebx: u32,
    /// ECX out.
    pub ecx: u32,
    /// EDX out.
    pub edx: u32,
}

/// A CPUID that does not fit the page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the VM's CPUID has {count} non-zero entries, more than the {COUNT_MAX} an SEV-SNP CPUID page holds")]
pub struct TooManyEntries {
    /// Its non-zero entries.
    pub count: usize,
}

/// The CPUID page for `entries` (the CPUID the VM's vCPU 0 has), in their
/// order; refused when they do not fit the table.
///
/// Entries whose four outputs are all zero are left out: a guest reads a
/// leaf (in range) the table lacks as all zeros, so the table means the
/// same with fewer entries (an Intel host's KVM lists more than 64 leaves
/// and subleaves, many of them zero).
pub fn cpuid_page(entries: &[CpuidEntry]) -> Result<Box<[u8; PAGE_SIZE]>, TooManyEntries> {
    let entries: Vec<&CpuidEntry> = entries
        .iter()
        .filter(|e| (e.eax, e.ebx, e.ecx, e.edx) != (0, 0, 0, 0))
        .collect();
    if entries.len() > COUNT_MAX {
        return Err(TooManyEntries { count: entries.len() });
    }
    let mut page = Box::new([0u8; PAGE_SIZE]);
    page[0..4].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let b = &mut page[at..at + ENTRY_LEN];
        let xcr0: u64 = if e.function == 0xd && e.index <= 1 { 1 } else { 0 };
        b[0x00..0x04].copy_from_slice(&e.function.to_le_bytes());
        b[0x04..0x08].copy_from_slice(&e.index.to_le_bytes());
        b[0x08..0x10].copy_from_slice(&xcr0.to_le_bytes());
        b[0x18..0x1c].copy_from_slice(&e.eax.to_le_bytes());
        b[0x1c..0x20].copy_from_slice(&e.ebx.to_le_bytes());
        b[0x20..0x24].copy_from_slice(&e.ecx.to_le_bytes());
        b[0x24..0x28].copy_from_slice(&e.edx.to_le_bytes());
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn u32_at(p: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(p[at..at + 4].try_into().unwrap())
    }

    fn u64_at(p: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(p[at..at + 8].try_into().unwrap())
    }

    fn entry(function: u32, index: u32, [eax, ebx, ecx, edx]: [u32; 4]) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
        }
    }

    #[test]
    fn layout_fits_a_page() {
        assert_eq!(HEADER_LEN + COUNT_MAX * ENTRY_LEN, 3088);
        const { assert!(HEADER_LEN + COUNT_MAX * ENTRY_LEN <= PAGE_SIZE) };
    }

    /// Every field of an entry at its offset; XCR0 = x87 for leaf 0xd
    /// subleaves 0 and 1 only; zero entries left out.
    #[test]
    fn entries_at_their_offsets() {
        let entries = [
            entry(0, 0, [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(7, 0, [0; 4]),
            entry(0xb, 1, [1, 3, 0x201, 7]),
            entry(0xd, 0, [7, 0x340, 0x340, 0]),
            entry(0xd, 1, [0xf, 0x240, 0, 0]),
            entry(0xd, 2, [0x100, 0x240, 0, 0]),
        ];
        let page = cpuid_page(&entries).unwrap();
        assert_eq!(u32_at(&page[..], 0), 5, "the zero leaf 7 left out");
        assert_eq!(&page[4..16], &[0; 12], "reserved");
        let at = |i: usize| &page[HEADER_LEN + i * ENTRY_LEN..HEADER_LEN + (i + 1) * ENTRY_LEN];
        let listed: Vec<(u32, u32, u64, [u32; 4])> = (0..5)
            .map(|i| {
                let b = at(i);
                assert_eq!((u64_at(b, 0x10), u64_at(b, 0x28)), (0, 0), "xss_in, reserved");
                let outs = [u32_at(b, 0x18), u32_at(b, 0x1c), u32_at(b, 0x20), u32_at(b, 0x24)];
                (u32_at(b, 0), u32_at(b, 4), u64_at(b, 8), outs)
            })
            .collect();
        assert_eq!(
            listed,
            [
                (0, 0, 0, [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
                (0xb, 1, 0, [1, 3, 0x201, 7]),
                (0xd, 0, 1, [7, 0x340, 0x340, 0]),
                (0xd, 1, 1, [0xf, 0x240, 0, 0]),
                (0xd, 2, 0, [0x100, 0x240, 0, 0]),
            ]
        );
        assert!(page[HEADER_LEN + 5 * ENTRY_LEN..].iter().all(|&b| b == 0));
    }

    #[test]
    fn too_many_entries_are_refused() {
        let one = entry(0, 0, [1, 0, 0, 0]);
        let mut entries = vec![one; COUNT_MAX + 1];
        assert_eq!(
            cpuid_page(&entries).unwrap_err().to_string(),
            "the VM's CPUID has 65 non-zero entries, more than the 64 an SEV-SNP CPUID page holds"
        );
        // All-zero entries are left out.
        entries[3] = CpuidEntry::default();
        let page = cpuid_page(&entries).unwrap();
        assert_eq!(page[0], COUNT_MAX as u8);
    }
}
