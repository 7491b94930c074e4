//! The SEV-SNP CPUID page: the CPUID covm configures for the VM, in the
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

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Entries a table holds at most.
pub const COUNT_MAX: usize = 64;
/// Bytes of the table's header.
pub const HEADER_LEN: usize = 16;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 48;
/// Bytes of the page.
pub const PAGE_LEN: usize = 4096;

/// The CPUID page for `entries` (the CPUID covm sets on the VM's vCPU 0),
/// in their order; refused when they do not fit the table.
///
/// Entries whose four outputs are all zero are left out: a guest reads a
/// leaf (in range) the table lacks as all zeros, so the table means the
/// same with fewer entries (an Intel host's KVM lists more than 64 leaves
/// and subleaves, many of them zero).
pub fn cpuid_page(entries: &[kvm_cpuid_entry2]) -> Result<Box<[u8; PAGE_LEN]>, String> {
    let entries: Vec<&kvm_cpuid_entry2> = entries
        .iter()
        .filter(|e| (e.eax, e.ebx, e.ecx, e.edx) != (0, 0, 0, 0))
        .collect();
    if entries.len() > COUNT_MAX {
        return Err(format!(
            "the VM's CPUID has {} non-zero entries, more than the {COUNT_MAX} an SEV-SNP CPUID page holds",
            entries.len()
        ));
    }
    let mut page = Box::new([0u8; PAGE_LEN]);
    page[0..4].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let b = &mut page[at..at + ENTRY_LEN];
        let subleaf = if e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0 {
            e.index
        } else {
            0
        };
        let xcr0: u64 = if e.function == 0xd && subleaf <= 1 { 1 } else { 0 };
        b[0x00..0x04].copy_from_slice(&e.function.to_le_bytes());
        b[0x04..0x08].copy_from_slice(&subleaf.to_le_bytes());
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
    use crate::arch::cpuid::{for_vcpu, test_entry, Topology, LEAF_TIMING};
    use kvm_bindings::CpuId;

    fn u32_at(p: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(p[at..at + 4].try_into().unwrap())
    }

    fn u64_at(p: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(p[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn layout_fits_a_page() {
        assert_eq!(HEADER_LEN + COUNT_MAX * ENTRY_LEN, 3088);
        const { assert!(HEADER_LEN + COUNT_MAX * ENTRY_LEN <= PAGE_LEN) };
    }

    /// The table of the CPUID covm configures (leaf 1 with the vCPU count,
    /// the extended topology subleaves, the timing leaf), entry by entry.
    #[test]
    fn table_of_covms_cpuid() {
        let supported = CpuId::from_entries(&[
            test_entry(0, 0, [0xd, 0x6874_7541, 0, 0]),
            test_entry(1, 0, [0xa00f11, 0, 0, 0]),
            test_entry(0xb, 1, [0; 4]),
            kvm_cpuid_entry2 {
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..test_entry(0xd, 1, [0xf, 0x240, 0, 0])
            },
        ])
        .unwrap();
        let topo = Topology {
            vcpus: 3,
            tsc_khz: 2_000_000,
            tsc_deadline: true,
        };
        let cpuid = for_vcpu(&supported, topo, 0);
        let entries = cpuid.as_slice();
        let page = cpuid_page(entries).unwrap();
        assert_eq!(u32_at(&page[..], 0) as usize, entries.len());
        assert_eq!(entries.len(), 5, "the four leaves and the timing leaf");
        assert_eq!(&page[4..16], &[0; 12], "reserved");
        let entry = |i: usize| &page[HEADER_LEN + i * ENTRY_LEN..HEADER_LEN + (i + 1) * ENTRY_LEN];
        for (i, e) in entries.iter().enumerate() {
            let b = entry(i);
            assert_eq!(u32_at(b, 0), e.function);
            assert_eq!(
                (u32_at(b, 0x18), u32_at(b, 0x1c), u32_at(b, 0x20), u32_at(b, 0x24)),
                (e.eax, e.ebx, e.ecx, e.edx)
            );
            assert_eq!((u64_at(b, 0x10), u64_at(b, 0x28)), (0, 0), "xss_in, reserved");
        }
        // Leaf 1: three logical processors, APIC ID 0, hypervisor bit.
        let leaf1 = entry(1);
        assert_eq!((u32_at(leaf1, 0), u32_at(leaf1, 4)), (1, 0));
        assert_eq!((u32_at(leaf1, 0x1c) >> 16) & 0xff, 3);
        assert_ne!(u32_at(leaf1, 0x20) & (1 << 31), 0);
        // Leaf 0xb subleaf 1 (a significant index): three cores.
        let topo_leaf = entry(2);
        assert_eq!((u32_at(topo_leaf, 0), u32_at(topo_leaf, 4)), (0xb, 1));
        assert_eq!(u32_at(topo_leaf, 0x1c), 3);
        // Leaf 0xd subleaf 1: for XCR0 = x87.
        let xsave = entry(3);
        assert_eq!((u32_at(xsave, 0), u32_at(xsave, 4), u64_at(xsave, 8)), (0xd, 1, 1));
        // The timing leaf: the TSC frequency, in kHz.
        let timing = entry(4);
        assert_eq!((u32_at(timing, 0), u32_at(timing, 0x18)), (LEAF_TIMING, 2_000_000));
        assert!(page[HEADER_LEN + 5 * ENTRY_LEN..].iter().all(|&b| b == 0));
    }

    #[test]
    fn too_many_entries_are_refused() {
        let one = test_entry(0, 0, [1, 0, 0, 0]);
        let mut entries = vec![one; COUNT_MAX + 1];
        assert_eq!(
            cpuid_page(&entries).unwrap_err(),
            "the VM's CPUID has 65 non-zero entries, more than the 64 an SEV-SNP CPUID page holds"
        );
        // All-zero entries are left out.
        entries[3] = kvm_cpuid_entry2::default();
        let page = cpuid_page(&entries).unwrap();
        assert_eq!(page[0], COUNT_MAX as u8);
    }
}
