//! The SEV-SNP launch digest of a [`Launch`].
//!
//! The primitive is AMD's (SEV Secure Nested Paging Firmware ABI
//! specification, `SNP_LAUNCH_UPDATE`, section "Launch Digest Calculation"
//! and Table "Layout of the PAGE_INFO Structure"): the digest starts as 48
//! zero bytes and every page added to the guest extends it,
//!
//! ```text
//! digest = SHA-384(PAGE_INFO)
//! PAGE_INFO (0x70 bytes, little-endian):
//!   0x00  48  DIGEST_CUR   the digest so far
//!   0x30  48  CONTENTS     SHA-384 of the page for NORMAL and VMSA pages, zero otherwise
//!   0x60   2  LENGTH       0x70
//!   0x62   1  PAGE_TYPE    NORMAL 1, VMSA 2, ZERO 3, UNMEASURED 4, SECRETS 5, CPUID 6
//!   0x63   1  IMI_PAGE     bit 0: part of an initial migration image (covm: 0)
//!   0x64   1  VMPL3_PERMS  (covm: 0)
//!   0x65   1  VMPL2_PERMS  (covm: 0)
//!   0x66   1  VMPL1_PERMS  (covm: 0)
//!   0x67   1  reserved, 0
//!   0x68   8  GPA          the page's guest-physical address
//! ```
//!
//! [`launch_digest`] applies it to a [`Launch`]: its pages in order, then
//! one VMSA entry per vCPU ([`crate::vmsa`]). covm's emulated platform
//! measures its launch this way. docs/platforms.md lists the sequence for
//! covm's built-in firmware.
//!
//! [`SnpLaunch`] is what only a real SEV-SNP launch adds: the vCPU type,
//! whose CPUID signature the hypervisor puts in every vCPU's RDX (so in
//! every VMSA; without a type RDX stays 0, as on the emulated platform),
//! the pages the payload's launch metadata asks for, and the SEV kernel
//! hashes table ([`crate::kernel_hashes`]). [`SnpLaunch::apply`] turns a
//! launch into the one an SEV-SNP launch measures, and
//! [`snp_launch_digest`] measures that; [`crate::mrtd`] is TDX's
//! counterpart.

use crate::kernel_hashes::{KernelHashes, SEV_HASHES_GPA};
use crate::launch::{Launch, Page, PageType, PAGE_SIZE};
use crate::vmsa::VMSA_GPA;
use alloc::boxed::Box;
use alloc::vec::Vec;
use covm_guest_abi::metadata::SectionKind;
use sha2::{Digest, Sha384};

/// Bytes of a launch digest (SHA-384).
pub const DIGEST_LEN: usize = 48;
/// Bytes of a PAGE_INFO structure.
pub const PAGE_INFO_LEN: usize = 0x70;

/// One `PAGE_INFO` but for its first field (the current digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    /// The page type.
    pub page_type: PageType,
    /// `CONTENTS`: SHA-384 of the page (NORMAL, VMSA) or zeros.
    pub contents: [u8; DIGEST_LEN],
    /// The page's guest-physical address.
    pub gpa: u64,
    /// `IMI_PAGE`.
    pub imi: bool,
    /// VMPL3, VMPL2 and VMPL1 permissions.
    pub vmpl_perms: [u8; 3],
}

impl PageInfo {
    /// The entry for a page of `page_type` at `gpa` holding `page` (read
    /// only for the types whose contents are measured).
    pub fn for_page(page_type: PageType, gpa: u64, page: &[u8]) -> Self {
        let contents = if page_type.measures_contents() {
            Sha384::digest(page).into()
        } else {
            [0; DIGEST_LEN]
        };
        PageInfo {
            page_type,
            contents,
            gpa,
            imi: false,
            vmpl_perms: [0; 3],
        }
    }

    /// The whole structure after `current`.
    pub fn to_bytes(&self, current: &[u8; DIGEST_LEN]) -> [u8; PAGE_INFO_LEN] {
        let mut b = [0u8; PAGE_INFO_LEN];
        b[0x00..0x30].copy_from_slice(current);
        b[0x30..0x60].copy_from_slice(&self.contents);
        b[0x60..0x62].copy_from_slice(&(PAGE_INFO_LEN as u16).to_le_bytes());
        b[0x62] = self.page_type as u8;
        b[0x63] = u8::from(self.imi);
        b[0x64..0x67].copy_from_slice(&self.vmpl_perms);
        b[0x68..0x70].copy_from_slice(&self.gpa.to_le_bytes());
        b
    }
}

/// A launch digest being extended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDigest {
    current: [u8; DIGEST_LEN],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl LaunchDigest {
    /// The digest before any page: 48 zero bytes.
    pub fn new() -> Self {
        LaunchDigest {
            current: [0; DIGEST_LEN],
        }
    }

    /// Extends the digest with one entry.
    pub fn update(&mut self, info: &PageInfo) {
        self.current = Sha384::digest(info.to_bytes(&self.current)).into();
    }

    /// Extends the digest with a page of `page_type` at `gpa`.
    pub fn update_page(&mut self, page_type: PageType, gpa: u64, page: &[u8]) {
        self.update(&PageInfo::for_page(page_type, gpa, page));
    }

    /// The digest so far.
    pub fn value(&self) -> [u8; DIGEST_LEN] {
        self.current
    }
}

/// One entry of a measurement, for listings (`covm measure --pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredPage {
    /// Its guest-physical address.
    pub gpa: u64,
    /// Its page type.
    pub page_type: PageType,
    /// What the VMM put there.
    pub what: &'static str,
}

/// A launch measurement and the entries it was computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// The final digest: what an SNP report's MEASUREMENT carries.
    pub digest: [u8; DIGEST_LEN],
    /// The entries, in order.
    pub pages: Vec<MeasuredPage>,
}

/// Errors measuring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    /// A page whose contents are measured but not given.
    #[error("the {what} page at {gpa:#x} is measured, but the launch description has no contents for it")]
    NoContents {
        /// The page.
        gpa: u64,
        /// What it is.
        what: &'static str,
    },
    /// A page the platform adds where the launch already has one.
    #[error("cannot place the {what} at {gpa:#x}: the image already loads that page")]
    Occupied {
        /// The page.
        gpa: u64,
        /// What the platform adds there.
        what: &'static str,
    },
    /// Kernel hashes for a payload whose metadata has no place for them.
    #[error(
        "the payload's launch metadata has no KERNEL_HASHES section: it has no place for the SEV kernel hashes table"
    )]
    NoHashesSection,
}

/// What an SEV-SNP launch adds to a [`Launch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnpLaunch {
    /// The vCPU type's CPUID signature, in every VMSA's RDX (0: no type;
    /// [`crate::vmsa::vcpu_type_signature`]).
    pub vcpu_signature: u32,
    /// The SEV kernel hashes table, measured in the payload's
    /// KERNEL_HASHES section, or at [`SEV_HASHES_GPA`] without metadata.
    pub kernel_hashes: Option<KernelHashes>,
    /// The CPUID page's contents ([`crate::cpuid_page`]) where the
    /// firmware's metadata asks for one; None: an empty table (count 0).
    /// The contents are not measured, so a measurement needs none.
    pub cpuid_page: Option<Box<[u8; PAGE_SIZE]>>,
}

/// What the launch puts in each kind of metadata section, for listings.
pub const SEC_MEM_WHAT: &str = "pre-validated firmware memory (SNP_SEC_MEM)";
/// The secrets page's listing.
pub const SECRETS_WHAT: &str = "SEV-SNP secrets page";
/// The CPUID page's listing.
pub const CPUID_WHAT: &str = "SEV-SNP CPUID page";
/// The kernel hashes table's listing.
pub const HASHES_WHAT: &str = "SEV kernel hashes table";
/// The kernel hashes page's listing without a table.
pub const NO_HASHES_WHAT: &str = "SEV kernel hashes page (no hashes: zero)";

impl SnpLaunch {
    /// The launch an SEV-SNP launch of `launch` measures: its pages, then
    /// the pages the payload's launch metadata asks for, in its order
    /// (SNP_SEC_MEM as ZERO pages, the SECRETS page, the CPUID page,
    /// KERNEL_HASHES as the kernel hashes table, NORMAL, or a ZERO page
    /// without one); without metadata, the kernel hashes page (if any) at
    /// [`SEV_HASHES_GPA`] as a NORMAL page. Pages are only appended, and
    /// the added secrets (zero), CPUID and hashes pages carry the contents
    /// the launch must write there. Every vCPU's RDX is set to the vCPU
    /// signature. An SNP launch that updates exactly these pages, with
    /// vCPUs in exactly these states, measures [`launch_digest`] of it.
    pub fn apply(&self, launch: Launch) -> Result<Launch, MeasureError> {
        let mut snp = launch;
        let add = |snp: &mut Launch, gpa: u64, page_type: PageType, what: &'static str, bytes: Option<&[u8]>| {
            if snp.pages.iter().any(|p| p.gpa == gpa) {
                return Err(MeasureError::Occupied { gpa, what });
            }
            snp.pages.push(match bytes {
                Some(bytes) => Page::with_contents(gpa, page_type, what, bytes),
                None => Page::new(gpa, page_type, what),
            });
            Ok(())
        };
        let hashes = self.kernel_hashes.as_ref().map(|h| h.page());
        let mut hashes_placed = false;
        let metadata = snp.metadata.clone();
        for section in &metadata {
            let gpa = section.gpa;
            match section.kind {
                SectionKind::SnpSecMem => {
                    for i in 0..section.pages {
                        add(&mut snp, gpa + i * PAGE_SIZE as u64, PageType::Zero, SEC_MEM_WHAT, None)?;
                    }
                }
                SectionKind::SnpSecrets => add(&mut snp, gpa, PageType::Secrets, SECRETS_WHAT, Some(&[]))?,
                SectionKind::Cpuid => {
                    let empty = [0u8; PAGE_SIZE];
                    let page = self.cpuid_page.as_deref().unwrap_or(&empty);
                    add(&mut snp, gpa, PageType::Cpuid, CPUID_WHAT, Some(&page[..]))?
                }
                SectionKind::KernelHashes => {
                    match &hashes {
                        Some(page) => add(&mut snp, gpa, PageType::Normal, HASHES_WHAT, Some(&page[..]))?,
                        None => add(&mut snp, gpa, PageType::Zero, NO_HASHES_WHAT, None)?,
                    }
                    hashes_placed = true;
                }
            }
        }
        if let Some(page) = &hashes {
            if !hashes_placed {
                if !metadata.is_empty() {
                    return Err(MeasureError::NoHashesSection);
                }
                add(&mut snp, SEV_HASHES_GPA, PageType::Normal, HASHES_WHAT, Some(&page[..]))?;
            }
        }
        for vcpu in &mut snp.vcpus {
            vcpu.rdx = u64::from(self.vcpu_signature);
        }
        Ok(snp)
    }
}

/// The launch digest of `launch`: each page in its order, then each vCPU's
/// VMSA in vCPU order.
pub fn launch_digest(launch: &Launch) -> Result<Measurement, MeasureError> {
    let mut digest = LaunchDigest::new();
    let mut pages = Vec::with_capacity(launch.pages.len() + launch.vcpus.len());
    let unread = [0u8; PAGE_SIZE];
    for page in &launch.pages {
        let contents = if page.page_type.measures_contents() {
            page.contents.as_deref().ok_or(MeasureError::NoContents {
                gpa: page.gpa,
                what: page.what,
            })?
        } else {
            &unread
        };
        digest.update_page(page.page_type, page.gpa, contents);
        pages.push(MeasuredPage {
            gpa: page.gpa,
            page_type: page.page_type,
            what: page.what,
        });
    }
    for vcpu in &launch.vcpus {
        digest.update_page(PageType::Vmsa, VMSA_GPA, &vcpu.to_vmsa()[..]);
        pages.push(MeasuredPage {
            gpa: VMSA_GPA,
            page_type: PageType::Vmsa,
            what: "vCPU initial state (VMSA)",
        });
    }
    Ok(Measurement {
        digest: digest.value(),
        pages,
    })
}

/// The SEV-SNP launch digest of `launch` with `snp`'s additions
/// ([`SnpLaunch::apply`]): the launch's pages, then the metadata's and
/// the kernel hashes page (if any), then the VMSAs with RDX set to the
/// vCPU signature.
pub fn snp_launch_digest(launch: &Launch, snp: &SnpLaunch) -> Result<Measurement, MeasureError> {
    launch_digest(&snp.apply(launch.clone())?)
}

#[cfg(test)]
mod tests;
