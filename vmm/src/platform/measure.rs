//! The SEV-SNP launch digest, and the measurement of what covm loads.
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
//! [`launch_digest`] applies it to a [`LaunchImage`]: the pages covm
//! wrote, in the order the image lists them, then one VMSA entry per vCPU.
//! docs/platforms.md lists the sequence for the built-in firmware.

use super::image::LaunchImage;
use super::vmsa::VMSA_GPA;
use crate::memory::GuestMemory;
use sha2::{Digest, Sha384};
use vm_memory::{Bytes, GuestAddress};

/// Bytes of a launch digest (SHA-384).
pub const DIGEST_LEN: usize = 48;
/// Bytes of a PAGE_INFO structure.
pub const PAGE_INFO_LEN: usize = 0x70;
/// Bytes of a guest page.
pub const PAGE_SIZE: usize = 4096;

/// SNP page types (`PAGE_TYPE` of `SNP_LAUNCH_UPDATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// Contents measured and encrypted.
    Normal = 1,
    /// A vCPU's save area.
    Vmsa = 2,
    /// A page of zeros (measured as its type and address).
    Zero = 3,
    /// Encrypted but not measured (only its type and address are).
    Unmeasured = 4,
    /// The platform's secrets page.
    Secrets = 5,
    /// The CPUID page (checked by the firmware, not measured).
    Cpuid = 6,
}

impl PageType {
    /// The name docs and `covm measure --pages` use.
    pub fn name(self) -> &'static str {
        match self {
            PageType::Normal => "normal",
            PageType::Vmsa => "vmsa",
            PageType::Zero => "zero",
            PageType::Unmeasured => "unmeasured",
            PageType::Secrets => "secrets",
            PageType::Cpuid => "cpuid",
        }
    }

    /// Whether the page's contents enter the digest.
    pub fn measures_contents(self) -> bool {
        matches!(self, PageType::Normal | PageType::Vmsa)
    }
}

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

/// One entry of a measurement, for `covm measure --pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredPage {
    /// Its guest-physical address.
    pub gpa: u64,
    /// Its page type.
    pub page_type: PageType,
    /// What covm put there.
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
#[derive(Debug, thiserror::Error)]
#[error("cannot read guest page {gpa:#x} to measure it: {reason}")]
pub struct MeasureError {
    gpa: u64,
    reason: String,
}

/// The launch digest of `image`, whose pages are read from `memory`: each
/// page in the image's order, then each vCPU's VMSA in vCPU order.
pub fn launch_digest(memory: &GuestMemory, image: &LaunchImage) -> Result<Measurement, MeasureError> {
    let mut digest = LaunchDigest::new();
    let mut pages = Vec::with_capacity(image.pages.len() + image.vcpus.len());
    let mut buf = [0u8; PAGE_SIZE];
    for page in &image.pages {
        if page.page_type.measures_contents() {
            memory
                .read_slice(&mut buf, GuestAddress(page.gpa))
                .map_err(|e| MeasureError {
                    gpa: page.gpa,
                    reason: e.to_string(),
                })?;
        }
        digest.update_page(page.page_type, page.gpa, &buf);
        pages.push(MeasuredPage {
            gpa: page.gpa,
            page_type: page.page_type,
            what: page.what,
        });
    }
    for vmsa in &image.vcpus {
        digest.update_page(PageType::Vmsa, VMSA_GPA, &vmsa[..]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::hex;
    use crate::platform::vmsa::{Segment, VcpuState};

    /// The pages of the chained vector: (type, gpa, page contents).
    fn chain() -> Vec<(PageType, u64, Vec<u8>)> {
        vec![
            (
                PageType::Normal,
                0x10_0000,
                (0..PAGE_SIZE).map(|i| (i % 251) as u8).collect(),
            ),
            (PageType::Zero, 0x20_0000, vec![]),
            (PageType::Unmeasured, 0x6000, vec![]),
            (PageType::Secrets, 0x7000, vec![]),
            (PageType::Cpuid, 0x8000, vec![]),
            (PageType::Vmsa, VMSA_GPA, vec![0xab; PAGE_SIZE]),
        ]
    }

    #[test]
    fn page_info_layout() {
        let info = PageInfo {
            page_type: PageType::Vmsa,
            contents: [0x11; 48],
            gpa: 0x1122_3344_5566_7000,
            imi: true,
            vmpl_perms: [3, 2, 1],
        };
        let b = info.to_bytes(&[0x22; 48]);
        assert_eq!(&b[..0x30], &[0x22; 48]);
        assert_eq!(&b[0x30..0x60], &[0x11; 48]);
        assert_eq!(
            &b[0x60..],
            &[0x70, 0x00, 0x02, 0x01, 3, 2, 1, 0, 0x00, 0x70, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
    }

    /// Fixed vectors, computed independently from the specification with
    /// Python's hashlib (`struct.pack('<HBBBBBBQ', 0x70, type, 0, 0, 0, 0,
    /// 0, gpa)` after the current digest and the contents hash):
    /// 1. one NORMAL page of zeros at GPA 0 over the zero digest;
    /// 2. the chain of [`chain`]: a NORMAL page of `i % 251` at 1 MiB, ZERO
    ///    at 2 MiB, UNMEASURED at 0x6000, SECRETS at 0x7000, CPUID at
    ///    0x8000, and a VMSA page of 0xab bytes at the VMSA GPA.
    #[test]
    fn fixed_vectors() {
        let mut d = LaunchDigest::new();
        d.update_page(PageType::Normal, 0, &[0; PAGE_SIZE]);
        assert_eq!(
            hex(&d.value()),
            "9d13634b6014bb21cf059b2dc694e7bff01a8a7137041100cd2b695f3d10fb687267b97808b27f8f471d943bc6f53a20"
        );
        let mut d = LaunchDigest::new();
        for (t, gpa, page) in chain() {
            d.update_page(t, gpa, &page);
        }
        assert_eq!(
            hex(&d.value()),
            "2080ba6feeb6c6c354de1da63f8964990a20ffa16db59feab59bfd827095eb0e28e8603124e6402d9b7fc8ab47d62e38"
        );
    }

    /// Runs `script` with `sevsnpmeasure` importable: from
    /// `COVM_SEV_SNP_MEASURE` (a `pip install --target` directory, set by
    /// .ci/run) or the Python path. `None`, with the reason printed, when
    /// it cannot run.
    fn sev_snp_measure(script: &str) -> Option<String> {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg("-c").arg(script);
        if let Some(dir) = std::env::var_os("COVM_SEV_SNP_MEASURE") {
            cmd.env("PYTHONPATH", dir);
        }
        match cmd.output() {
            Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            Ok(out) => {
                eprintln!(
                    "SKIP: sev-snp-measure is not importable (pip install sev-snp-measure, or run .ci/run): {}",
                    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIP: cannot run python3 for the sev-snp-measure cross-check: {e}");
                None
            }
        }
    }

    #[test]
    fn digest_agrees_with_sev_snp_measure() {
        let script = r#"
from sevsnpmeasure.gctx import GCTX
g = GCTX()
g.update_normal_pages(0x100000, bytes(i % 251 for i in range(4096)))
g.update_zero_pages(0x200000, 4096)
g.update_unmeasured_pages(0x6000, 4096)
g.update_secrets_page(0x7000)
g.update_cpuid_page(0x8000)
g.update_vmsa_page(b'\xab' * 4096)
g.update_normal_pages(0x300000, bytes(8192))
print(g.hex_ld())
"#;
        let Some(theirs) = sev_snp_measure(script) else {
            return;
        };
        let mut d = LaunchDigest::new();
        for (t, gpa, page) in chain() {
            d.update_page(t, gpa, &page);
        }
        d.update_page(PageType::Normal, 0x30_0000, &[0; PAGE_SIZE]);
        d.update_page(PageType::Normal, 0x30_1000, &[0; PAGE_SIZE]);
        assert_eq!(hex(&d.value()), theirs);
    }

    /// sev-snp-measure's VMSA for QEMU's reset state, byte for byte: proves
    /// the VMSA offsets covm encodes.
    #[test]
    fn vmsa_layout_agrees_with_sev_snp_measure() {
        let script = r#"
from sevsnpmeasure.vmsa import VMSA
from sevsnpmeasure.vmm_types import VMMType
area = VMSA.build_save_area(0xfffffff0, 0, 0x800f12, VMMType.QEMU)
print(bytes(area).hex())
"#;
        let Some(theirs) = sev_snp_measure(script) else {
            return;
        };
        let state = VcpuState {
            cs: Segment {
                selector: 0xf000,
                attrib: 0x9b,
                limit: 0xffff,
                base: 0xffff_0000,
            },
            efer: 0x1000,
            cr4: 0x40,
            cr0: 0x10,
            rdx: 0x800f12,
            ..VcpuState::reset()
        };
        assert_eq!(hex(&state.to_vmsa()[..]), theirs);
    }
}
