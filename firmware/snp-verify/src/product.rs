//! AMD's product lines: the ARK each is anchored in, the CPUID family and
//! models a report names it by, and the byte layout of its TCB_VERSION.

/// Bytes of the pinned roots, from AMD's Key Distribution Service (see
/// `roots/SOURCE.md`).
const MILAN_ARK: &[u8] = include_bytes!("../roots/milan-ark.der");
const GENOA_ARK: &[u8] = include_bytes!("../roots/genoa-ark.der");
const TURIN_ARK: &[u8] = include_bytes!("../roots/turin-ark.der");

/// An AMD EPYC product line with SEV-SNP, as named by its ARK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// 3rd generation EPYC (family 19h): EPYC 7003.
    Milan,
    /// 4th generation EPYC (family 19h): EPYC 9004 and 8004.
    Genoa,
    /// 5th generation EPYC (family 1Ah): another TCB_VERSION layout.
    Turin,
}

impl Product {
    /// Every product with a pinned ARK.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// AMD's root certificate for the product (DER).
    pub fn ark(self) -> &'static [u8] {
        match self {
            Product::Milan => MILAN_ARK,
            Product::Genoa => GENOA_ARK,
            Product::Turin => TURIN_ARK,
        }
    }

    /// The product whose ARK is exactly `der`.
    pub fn pinned(der: &[u8]) -> Option<Product> {
        Product::ALL.into_iter().find(|p| p.ark() == der)
    }

    /// The product a report's CPUID_FAM_ID and CPUID_MOD_ID name (AMD's
    /// processor programming references: family 19h models 00h-0Fh Milan,
    /// 10h-1Fh and A0h-AFh Genoa and its siblings; family 1Ah models
    /// 00h-11h Turin).
    pub fn from_cpuid(family: u8, model: u8) -> Option<Product> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }
}

impl core::fmt::Display for Product {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

/// A TCB_VERSION read with its product's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpTcb {
    /// The FMC's SPL (Turin and later).
    pub fmc: Option<u8>,
    /// The boot loader's SPL.
    pub boot_loader: u8,
    /// The TEE's SPL.
    pub tee: u8,
    /// The SNP firmware's SPL.
    pub snp: u8,
    /// The microcode's SPL.
    pub microcode: u8,
}

impl SnpTcb {
    /// Reads the 8 little-endian bytes of a TCB_VERSION: Milan and Genoa
    /// put boot loader, TEE, 4 reserved, SNP, microcode; Turin FMC, boot
    /// loader, TEE, SNP, 3 reserved, microcode.
    pub fn decode(raw: u64, product: Product) -> SnpTcb {
        let b = raw.to_le_bytes();
        match product {
            Product::Milan | Product::Genoa => SnpTcb {
                fmc: None,
                boot_loader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            },
            Product::Turin => SnpTcb {
                fmc: Some(b[0]),
                boot_loader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pinned_ark_names_its_product() {
        for p in Product::ALL {
            assert_eq!(Product::pinned(p.ark()), Some(p));
        }
        let mut other = Product::Milan.ark().to_vec();
        other[100] ^= 1;
        assert_eq!(Product::pinned(&other), None);
    }

    #[test]
    fn turin_moves_the_tcb_components() {
        let raw = u64::from_le_bytes([1, 2, 3, 4, 0, 0, 0, 9]);
        let turin = SnpTcb::decode(raw, Product::Turin);
        assert_eq!(
            (turin.fmc, turin.boot_loader, turin.tee, turin.snp, turin.microcode),
            (Some(1), 2, 3, 4, 9)
        );
        let genoa = SnpTcb::decode(raw, Product::Genoa);
        assert_eq!(
            (genoa.fmc, genoa.boot_loader, genoa.tee, genoa.snp, genoa.microcode),
            (None, 1, 2, 0, 9)
        );
    }
}
