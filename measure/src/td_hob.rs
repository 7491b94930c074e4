//! The TD HOB: the list of hand-off blocks the VMM gives a TD's firmware
//! (TDVF design guide, "TD Hand-Off Block"), in the UEFI PI HOB layout
//! (PI specification vol. 3, "HOB Code Definitions"), little-endian:
//!
//! ```text
//! PHIT (EFI_HOB_HANDOFF_INFO_TABLE), 56 bytes:
//!   0  u16 HobType 0x0001   2 u16 HobLength 56   4 u32 Reserved 0
//!   8  u32 Version 9        12 u32 BootMode 0
//!   16 u64 EfiMemoryTop, 24 EfiMemoryBottom, 32 EfiFreeMemoryTop,
//!   40 EfiFreeMemoryBottom (all 0: TDVF ignores them)
//!   48 u64 EfiEndOfHobList: the address just past the end-of-list HOB
//! Resource descriptor (EFI_HOB_RESOURCE_DESCRIPTOR), 48 bytes, per RAM range:
//!   0  u16 HobType 0x0003   2 u16 HobLength 48   4 u32 Reserved 0
//!   8  EFI_GUID Owner (zero)
//!   24 u32 ResourceType: SYSTEM_MEMORY 0 (pages the VMM added) or
//!      MEMORY_UNACCEPTED 7 (pages the TD must accept)
//!   28 u32 ResourceAttribute: PRESENT | INITIALIZED | TESTED (7)
//!   32 u64 PhysicalStart    40 u64 ResourceLength
//! End of HOB list (EFI_HOB_GENERIC_HEADER), 8 bytes:
//!   0  u16 HobType 0xFFFF   2 u16 HobLength 8   4 u32 Reserved 0
//! ```
//!
//! `EfiEndOfHobList` points past the last HOB, as QEMU's TD HOB (the one
//! TDVF is tested with) does. Each HOB starts 8-byte aligned (all sizes
//! here are multiples of 8). The HOB is added to the TD unmeasured
//! ([`crate::mrtd`]): only its address enters MRTD.

use alloc::vec::Vec;

/// `EFI_HOB_TYPE_HANDOFF`.
pub const HOB_TYPE_HANDOFF: u16 = 0x0001;
/// `EFI_HOB_TYPE_RESOURCE_DESCRIPTOR`.
pub const HOB_TYPE_RESOURCE_DESCRIPTOR: u16 = 0x0003;
/// `EFI_HOB_TYPE_END_OF_HOB_LIST`.
pub const HOB_TYPE_END_OF_HOB_LIST: u16 = 0xffff;
/// `EFI_HOB_HANDOFF_TABLE_VERSION`.
pub const HANDOFF_TABLE_VERSION: u32 = 0x0009;
/// `EFI_RESOURCE_SYSTEM_MEMORY`.
pub const RESOURCE_SYSTEM_MEMORY: u32 = 0x0;
/// `EFI_RESOURCE_MEMORY_UNACCEPTED` (PI 1.8).
pub const RESOURCE_MEMORY_UNACCEPTED: u32 = 0x7;
/// `EFI_RESOURCE_ATTRIBUTE_PRESENT | INITIALIZED | TESTED`: TDVF's
/// attributes for private memory, accepted or not.
pub const ATTRIBUTES_TDVF: u32 = 0x1 | 0x2 | 0x4;
/// Bytes of the PHIT.
pub const PHIT_LEN: usize = 56;
/// Bytes of a resource descriptor.
pub const RESOURCE_LEN: usize = 48;
/// Bytes of the end-of-list HOB.
pub const END_LEN: usize = 8;

/// A range of guest RAM as the HOB describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamEntry {
    /// Guest-physical start.
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
    /// Added by the VMM (`KVM_TDX_INIT_MEM_REGION`): accepted already.
    pub added: bool,
}

/// Why a TD HOB cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the TD HOB needs {needed} bytes, its area at {gpa:#x} has {capacity}")]
pub struct HobOverflow {
    /// The HOB area.
    pub gpa: u64,
    /// Bytes needed.
    pub needed: usize,
    /// Bytes there are.
    pub capacity: usize,
}

/// The RAM entries of the guest RAM regions `ram` given the ranges
/// `added` (both as start and bytes; sorted or not, `added` may touch):
/// each region split into added and unaccepted ranges, ascending.
pub fn ram_entries(ram: &[(u64, u64)], added: &[(u64, u64)]) -> Vec<RamEntry> {
    let mut added: Vec<(u64, u64)> = added.iter().map(|&(gpa, len)| (gpa, gpa + len)).collect();
    added.sort_unstable();
    let mut entries: Vec<RamEntry> = Vec::new();
    let mut push = |gpa: u64, end: u64, is_added: bool| {
        if end <= gpa {
            return;
        }
        match entries.last_mut() {
            Some(last) if last.added == is_added && last.gpa + last.size == gpa => last.size += end - gpa,
            _ => entries.push(RamEntry {
                gpa,
                size: end - gpa,
                added: is_added,
            }),
        }
    };
    let mut regions = ram.to_vec();
    regions.sort_unstable();
    for &(gpa, size) in &regions {
        let (start, end) = (gpa, gpa + size);
        let mut at = start;
        for &(a, b) in &added {
            let (a, b) = (a.max(start), b.min(end));
            if a >= b || b <= at {
                continue;
            }
            push(at, a.max(at), false);
            push(a.max(at), b, true);
            at = b;
        }
        push(at, end, false);
    }
    entries
}

/// The TD HOB at `gpa` (an area of `capacity` bytes) describing `entries`.
pub fn build(gpa: u64, capacity: usize, entries: &[RamEntry]) -> Result<Vec<u8>, HobOverflow> {
    let needed = PHIT_LEN + entries.len() * RESOURCE_LEN + END_LEN;
    if needed > capacity {
        return Err(HobOverflow { gpa, needed, capacity });
    }
    let mut b = Vec::with_capacity(needed);
    let header = |b: &mut Vec<u8>, hob_type: u16, len: usize| {
        b.extend_from_slice(&hob_type.to_le_bytes());
        b.extend_from_slice(&(len as u16).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
    };
    header(&mut b, HOB_TYPE_HANDOFF, PHIT_LEN);
    b.extend_from_slice(&HANDOFF_TABLE_VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // BootMode: BOOT_WITH_FULL_CONFIGURATION
    b.extend_from_slice(&[0; 32]); // EfiMemoryTop/Bottom, EfiFreeMemoryTop/Bottom
    b.extend_from_slice(&(gpa + needed as u64).to_le_bytes());
    for e in entries {
        header(&mut b, HOB_TYPE_RESOURCE_DESCRIPTOR, RESOURCE_LEN);
        b.extend_from_slice(&[0; 16]); // Owner: the zero GUID
        let resource_type = if e.added {
            RESOURCE_SYSTEM_MEMORY
        } else {
            RESOURCE_MEMORY_UNACCEPTED
        };
        b.extend_from_slice(&resource_type.to_le_bytes());
        b.extend_from_slice(&ATTRIBUTES_TDVF.to_le_bytes());
        b.extend_from_slice(&e.gpa.to_le_bytes());
        b.extend_from_slice(&e.size.to_le_bytes());
    }
    header(&mut b, HOB_TYPE_END_OF_HOB_LIST, END_LEN);
    debug_assert_eq!(b.len(), needed);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    /// RAM as covm lays out 4 GiB: 3 GiB low, the MMIO hole, 1 GiB high.
    fn ram() -> Vec<(u64, u64)> {
        vec![(0, 0xc000_0000), (1 << 32, 1 << 30)]
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn entries_split_ram_into_added_and_unaccepted() {
        let added = [(0x10_0000, 0x1_1000), (0x7000, 0x1000), (0x0, 0x1000), (0x6000, 0x1000)];
        let entries = ram_entries(&ram(), &added);
        let e = |gpa, size, added| RamEntry { gpa, size, added };
        assert_eq!(
            entries,
            vec![
                e(0, 0x1000, true),
                e(0x1000, 0x5000, false),
                e(0x6000, 0x2000, true),
                e(0x8000, 0x10_0000 - 0x8000, false),
                e(0x10_0000, 0x1_1000, true),
                e(0x11_1000, 0xc000_0000 - 0x11_1000, false),
                e(1 << 32, 1 << 30, false),
            ]
        );
        let total: u64 = entries.iter().map(|e| e.size).sum();
        assert_eq!(total, 0xc000_0000 + (1 << 30), "all RAM, once");
    }

    #[test]
    fn hob_layout() {
        let entries = ram_entries(&ram()[..1], &[(0x1000, 0x1000)]);
        assert_eq!(entries.len(), 3);
        let gpa = 0x80_0000;
        let b = build(gpa, 4096, &entries).unwrap();
        assert_eq!(b.len(), 56 + 3 * 48 + 8);
        // PHIT.
        assert_eq!((u16_at(&b, 0), u16_at(&b, 2), u32_at(&b, 4)), (0x0001, 56, 0));
        assert_eq!((u32_at(&b, 8), u32_at(&b, 12)), (9, 0));
        assert_eq!(&b[16..48], &[0; 32]);
        assert_eq!(
            u64_at(&b, 48),
            gpa + b.len() as u64,
            "EfiEndOfHobList: past the end HOB"
        );
        // Resource descriptors.
        for (i, entry) in entries.iter().enumerate() {
            let r = 56 + i * 48;
            assert_eq!((u16_at(&b, r), u16_at(&b, r + 2), u32_at(&b, r + 4)), (0x0003, 48, 0));
            assert_eq!(&b[r + 8..r + 24], &[0; 16], "owner GUID");
            let resource_type = if entry.added { 0 } else { 7 };
            assert_eq!((u32_at(&b, r + 24), u32_at(&b, r + 28)), (resource_type, 7));
            assert_eq!((u64_at(&b, r + 32), u64_at(&b, r + 40)), (entry.gpa, entry.size));
        }
        assert_eq!(u32_at(&b, 56 + 24), 7, "0..0x1000 unaccepted");
        assert_eq!(u32_at(&b, 56 + 48 + 24), 0, "0x1000..0x2000 added");
        // End of list.
        let end = 56 + 3 * 48;
        assert_eq!(
            (u16_at(&b, end), u16_at(&b, end + 2), u32_at(&b, end + 4)),
            (0xffff, 8, 0)
        );
        assert_eq!(
            build(gpa, 200, &entries).unwrap_err().to_string(),
            "the TD HOB needs 208 bytes, its area at 0x800000 has 200"
        );
    }
}
