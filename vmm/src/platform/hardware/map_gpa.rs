//! `KVM_HC_MAP_GPA_RANGE`: the guest converts a range of its memory
//! between private and shared.
//!
//! KVM forwards it as `KVM_EXIT_HYPERCALL` (once
//! `KVM_CAP_EXIT_HYPERCALL` enables it, [`super::private_memory::register_private`]):
//! an SNP guest's page-state changes (GHCB) and a TDX guest's `MapGPA`
//! arrive in this form. The arguments (`include/uapi/linux/kvm_para.h`,
//! `Documentation/virt/kvm/x86/hypercalls.rst`): `args[0]` the range's
//! guest-physical address, `args[1]` its length in 4 KiB pages, `args[2]`
//! attributes: bit 4 set for private (encrypted), clear for shared; bits
//! 1:0 the page size the guest used (a hint). covm checks them and sets
//! the range's memory attributes; the hypercall returns 0, or `-EINVAL`
//! for arguments covm refuses. A KVM failure is not the guest's: the VM
//! must stop.

use super::error::CallError;
use super::private_memory::{PrivateMemoryOps, RamRegion};
use kvm_bindings::{kvm_memory_attributes, KVM_MEMORY_ATTRIBUTE_PRIVATE};

/// The hypercall by which a guest converts memory private <-> shared; KVM
/// also forwards SNP page-state changes and TDX `MapGPA` calls as it.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;
/// `KVM_CAP_EXIT_HYPERCALL`'s bit for [`KVM_HC_MAP_GPA_RANGE`].
pub const EXIT_MAP_GPA_RANGE: u64 = 1 << KVM_HC_MAP_GPA_RANGE;
/// Attribute bits 1:0 are the page size the guest used (a hint: 0 is
/// 4 KiB, 1 is 2 MiB); this is the largest, 1 GiB.
pub const MAP_GPA_RANGE_PAGE_SZ_1G: u64 = 2;
/// The page size hint's bits.
pub const MAP_GPA_RANGE_PAGE_SZ_MASK: u64 = 0x3;
/// Attribute bit 4: the range becomes private (encrypted); clear: shared.
pub const MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
/// `KVM_EINVAL`, negated in a hypercall's return value.
pub const KVM_EINVAL: u64 = 22;

use covm_guest_abi::layout::PAGE_SIZE as PAGE;

/// Which way a range converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Shared to private.
    ToPrivate,
    /// Private to shared.
    ToShared,
}

/// A conversion done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Converted {
    /// The range's guest-physical address.
    pub gpa: u64,
    /// Its bytes.
    pub size: u64,
    /// Which way.
    pub to: Conversion,
}

/// Why a `KVM_HC_MAP_GPA_RANGE` was not done.
#[derive(Debug, thiserror::Error)]
pub enum MapGpaError {
    /// Another hypercall.
    #[error("hypercall {0} is not KVM_HC_MAP_GPA_RANGE ({KVM_HC_MAP_GPA_RANGE})")]
    NotMapGpaRange(u64),
    /// The address is not page-aligned.
    #[error("KVM_HC_MAP_GPA_RANGE: GPA {0:#x} is not 4 KiB aligned")]
    Unaligned(u64),
    /// No pages.
    #[error("KVM_HC_MAP_GPA_RANGE: 0 pages at GPA {0:#x}")]
    NoPages(u64),
    /// The range wraps around the address space.
    #[error("KVM_HC_MAP_GPA_RANGE: {pages} pages at GPA {gpa:#x} overflow the address space")]
    Overflow {
        /// Start.
        gpa: u64,
        /// Pages.
        pages: u64,
    },
    /// Attribute bits covm does not know.
    #[error("KVM_HC_MAP_GPA_RANGE: unknown attribute bits {0:#x} (known: bit 4 private, bits 1:0 page size)")]
    Attributes(u64),
    /// Page size hint 3.
    #[error("KVM_HC_MAP_GPA_RANGE: page size hint {0} is not 4K (0), 2M (1) or 1G (2)")]
    PageSize(u64),
    /// The range is not (all) guest RAM.
    #[error("KVM_HC_MAP_GPA_RANGE: {gpa:#x}..{end:#x} is not guest RAM")]
    NotRam {
        /// Start.
        gpa: u64,
        /// End (exclusive).
        end: u64,
    },
    /// KVM refused to change the attributes.
    #[error("KVM_HC_MAP_GPA_RANGE: KVM_SET_MEMORY_ATTRIBUTES over {gpa:#x}..{end:#x} failed: {source}")]
    Kvm {
        /// Start.
        gpa: u64,
        /// End (exclusive).
        end: u64,
        /// Why.
        source: CallError,
    },
}

impl MapGpaError {
    /// The hypercall's return value for the guest (`-EINVAL` for refused
    /// arguments), or `None` when the VM must stop (KVM failed).
    pub fn guest_return(&self) -> Option<u64> {
        match self {
            MapGpaError::Kvm { .. } | MapGpaError::NotMapGpaRange(_) => None,
            _ => Some(KVM_EINVAL.wrapping_neg()),
        }
    }
}

/// Handles one `KVM_EXIT_HYPERCALL` (`nr`, `args`) on a VM whose RAM is
/// `ram`: checks the arguments and sets the range's attributes.
pub fn handle_map_gpa_range(
    ops: &mut (impl PrivateMemoryOps + ?Sized),
    ram: &[RamRegion],
    nr: u64,
    args: &[u64; 6],
) -> Result<Converted, MapGpaError> {
    if nr != KVM_HC_MAP_GPA_RANGE {
        return Err(MapGpaError::NotMapGpaRange(nr));
    }
    let (gpa, pages, attributes) = (args[0], args[1], args[2]);
    if gpa % PAGE != 0 {
        return Err(MapGpaError::Unaligned(gpa));
    }
    if pages == 0 {
        return Err(MapGpaError::NoPages(gpa));
    }
    let size = pages
        .checked_mul(PAGE)
        .filter(|size| gpa.checked_add(*size).is_some())
        .ok_or(MapGpaError::Overflow { gpa, pages })?;
    let unknown = attributes & !(MAP_GPA_RANGE_ENCRYPTED | MAP_GPA_RANGE_PAGE_SZ_MASK);
    if unknown != 0 {
        return Err(MapGpaError::Attributes(unknown));
    }
    let page_size = attributes & MAP_GPA_RANGE_PAGE_SZ_MASK;
    if page_size > MAP_GPA_RANGE_PAGE_SZ_1G {
        return Err(MapGpaError::PageSize(page_size));
    }
    let end = gpa + size;
    if !ram.iter().any(|r| r.contains(gpa, size)) {
        return Err(MapGpaError::NotRam { gpa, end });
    }
    let to = if attributes & MAP_GPA_RANGE_ENCRYPTED != 0 {
        Conversion::ToPrivate
    } else {
        Conversion::ToShared
    };
    let attributes = kvm_memory_attributes {
        address: gpa,
        size,
        attributes: match to {
            Conversion::ToPrivate => u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE),
            Conversion::ToShared => 0,
        },
        flags: 0,
    };
    ops.set_memory_attributes(&attributes)
        .map_err(|source| MapGpaError::Kvm { gpa, end, source })?;
    Ok(Converted { gpa, size, to })
}

#[cfg(test)]
mod tests {
    use super::super::fake::split_ram;
    use super::*;
    use crate::platform::snp::fake::{SnpCall, SnpFake as Fake};

    fn ram() -> Vec<RamRegion> {
        split_ram()
    }

    fn call(fake: &mut Fake, args: [u64; 3]) -> Result<Converted, MapGpaError> {
        handle_map_gpa_range(fake, &ram(), 12, &[args[0], args[1], args[2], 0, 0, 0])
    }

    #[test]
    fn converts_both_ways() {
        let mut fake = Fake::default();
        let shared = call(&mut fake, [0x10_0000, 16, 0]).unwrap();
        assert_eq!(
            shared,
            Converted {
                gpa: 0x10_0000,
                size: 0x1_0000,
                to: Conversion::ToShared
            }
        );
        let private = call(&mut fake, [1 << 32, 512, 0x10 | 1]).unwrap();
        assert_eq!(
            (private.gpa, private.size, private.to),
            (1 << 32, 0x20_0000, Conversion::ToPrivate)
        );
        let attrs: Vec<(u64, u64, u64, u64)> = fake
            .calls
            .iter()
            .map(|c| match c {
                SnpCall::SetMemoryAttributes(a) => (a.address, a.size, a.attributes, a.flags),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(attrs, vec![(0x10_0000, 0x1_0000, 0, 0), (1 << 32, 0x20_0000, 8, 0)]);
    }

    #[test]
    fn refuses_bad_arguments_with_einval() {
        let mut fake = Fake::default();
        let einval = 22u64.wrapping_neg();
        for (args, message) in [
            ([0x1234, 1, 0], "GPA 0x1234 is not 4 KiB aligned"),
            ([0x1000, 0, 0], "0 pages at GPA 0x1000"),
            ([0xffff_ffff_ffff_f000, 2, 0], "overflow the address space"),
            ([0x1000, u64::MAX, 0], "overflow the address space"),
            ([0x1000, 1, 0x20], "unknown attribute bits 0x20"),
            ([0x1000, 1, 3], "page size hint 3"),
            ([0xbfff_f000, 2, 0x10], "0xbffff000..0xc0001000 is not guest RAM"),
            ([0xd000_0000, 1, 0], "is not guest RAM"),
        ] {
            let err = call(&mut fake, args).unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
            assert_eq!(err.guest_return(), Some(einval), "{err}");
        }
        assert!(fake.calls.is_empty(), "nothing converted");
        let err = handle_map_gpa_range(&mut fake, &ram(), 11, &[0; 6]).unwrap_err();
        assert_eq!(err.to_string(), "hypercall 11 is not KVM_HC_MAP_GPA_RANGE (12)");
        assert_eq!(err.guest_return(), None);
    }

    #[test]
    fn a_kvm_failure_stops_the_vm() {
        let mut fake = Fake::failing("KVM_SET_MEMORY_ATTRIBUTES", 0);
        let err = call(&mut fake, [0x2000, 1, 0x10]).unwrap_err();
        assert!(
            matches!(
                err,
                MapGpaError::Kvm {
                    gpa: 0x2000,
                    end: 0x3000,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.guest_return(), None);
    }
}
