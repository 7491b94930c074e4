//! Intel TDX's build-time measurement register, MRTD, of a [`Launch`].
//!
//! The TDX module keeps one running SHA-384 over the TD's build
//! (TDH.MNG.INIT starts it, TDH.MR.FINALIZE ends it and MRTD is the
//! digest); two SEAMCALLs feed it, each with 128-byte extension buffers
//! (Intel TDX Module ABI Reference, "TDH.MEM.PAGE.ADD Leaf" and
//! "TDH.MR.EXTEND Leaf"; the TDX module's source, `tdh_mr_extend.c` and
//! `sha384_128B_block_t` in `crypto/sha384.h`, lays the buffer out as a
//! 16-byte API name, the GPA, then zeros):
//!
//! ```text
//! TDH.MEM.PAGE.ADD (a 4 KiB page):   one buffer
//!   0..12   "MEM.PAGE.ADD" (ASCII)   12..16  0
//!   16..24  GPA of the page, little-endian
//!   24..128 0
//! TDH.MR.EXTEND (a 256-byte chunk):  three buffers
//!   0..9    "MR.EXTEND" (ASCII)      9..16   0
//!   16..24  GPA of the chunk, little-endian
//!   24..128 0
//!   then the chunk's 256 bytes (the second and third buffers)
//! ```
//!
//! KVM (`KVM_TDX_INIT_MEM_REGION`, Linux 6.16 `tdx_vcpu_init_mem_region`)
//! adds a region page by page, and for a region with
//! `KVM_TDX_MEASURE_MEMORY_REGION` extends each page's 16 chunks, in
//! ascending address, right after adding it.
//!
//! covm's TD ([`launch_mrtd`], as covm's `platform::tdx::plan` launches
//! it): every page of the [`Launch`] in its order, NORMAL pages
//! added and extended (contents measured, as SEV-SNP measures them),
//! UNMEASURED and ZERO pages added only (their address enters MRTD, not
//! their contents; the migration policy page is one); then the TD HOB,
//! added only, at [`TD_HOB_GPA`] ([`TD_HOB_PAGES`] page). vCPU state is not
//! measured (the TDX module sets it), so the vCPU count does not enter
//! MRTD. SECRETS, CPUID and VMSA pages have no TDX counterpart and are
//! refused.
//!
//! Where the TD HOB goes is covm's choice: the page at 0x4000, free in
//! every layout covm loads (below the hashes page at 0x5000 an SEV-SNP
//! launch may use and the migration policy at 0x6000; see covm's
//! `boot::layout`). The TDX launch must pass the same address
//! (`TdxOptions::hob_gpa`) for its MRTD to equal `covm measure`'s. The
//! HOB's contents ([`crate::td_hob`]) are not measured.

use crate::launch::{Launch, PageType, PAGE_SIZE};
use alloc::vec::Vec;
use sha2::{Digest, Sha384};

/// Bytes of MRTD (SHA-384).
pub const MRTD_LEN: usize = 48;
/// Bytes of an extension buffer (one SHA-384 block).
pub const EXTENSION_LEN: usize = 128;
/// Bytes one TDH.MR.EXTEND measures.
pub const CHUNK_LEN: usize = 256;
/// Where covm's TDX launch adds the TD HOB.
pub const TD_HOB_GPA: u64 = 0x4000;
/// Pages of the TD HOB.
pub const TD_HOB_PAGES: u64 = 1;

/// The 128-byte buffer of `op` at `gpa`: the name, zeros to 16, the GPA.
fn extension(op: &[u8], gpa: u64) -> [u8; EXTENSION_LEN] {
    let mut buf = [0u8; EXTENSION_LEN];
    buf[..op.len()].copy_from_slice(op);
    buf[16..24].copy_from_slice(&gpa.to_le_bytes());
    buf
}

/// MRTD being built.
#[derive(Debug, Clone, Default)]
pub struct Mrtd {
    sha: Sha384,
}

impl Mrtd {
    /// MRTD as TDH.MNG.INIT leaves it.
    pub fn new() -> Self {
        Self::default()
    }

    /// TDH.MEM.PAGE.ADD of the page at `gpa`.
    pub fn mem_page_add(&mut self, gpa: u64) {
        self.sha.update(extension(b"MEM.PAGE.ADD", gpa));
    }

    /// TDH.MR.EXTEND of the 256-byte `chunk` at `gpa`.
    pub fn mr_extend(&mut self, gpa: u64, chunk: &[u8; CHUNK_LEN]) {
        self.sha.update(extension(b"MR.EXTEND", gpa));
        self.sha.update(chunk);
    }

    /// A page added and measured as KVM does it: TDH.MEM.PAGE.ADD, then
    /// TDH.MR.EXTEND of its 16 chunks in ascending address.
    pub fn add_measured_page(&mut self, gpa: u64, page: &[u8; PAGE_SIZE]) {
        self.mem_page_add(gpa);
        for (i, chunk) in page.chunks_exact(CHUNK_LEN).enumerate() {
            self.mr_extend(gpa + (i * CHUNK_LEN) as u64, chunk.try_into().expect("256-byte chunk"));
        }
    }

    /// MRTD as TDH.MR.FINALIZE leaves it.
    pub fn finish(self) -> [u8; MRTD_LEN] {
        self.sha.finalize().into()
    }
}

/// One page of a TD's build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdPage {
    /// Its guest-physical address.
    pub gpa: u64,
    /// Whether its contents were extended into MRTD (else only added).
    pub extended: bool,
    /// What covm put there.
    pub what: &'static str,
}

/// A TD's MRTD and the pages it was computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdMeasurement {
    /// MRTD.
    pub mrtd: [u8; MRTD_LEN],
    /// The pages, in the order they were added.
    pub pages: Vec<TdPage>,
}

/// Errors measuring a TD.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MrtdError {
    /// A page whose contents are measured but not given.
    #[error("the {what} page at {gpa:#x} is measured, but the launch description has no contents for it")]
    NoContents {
        /// The page.
        gpa: u64,
        /// What it is.
        what: &'static str,
    },
    /// A page type TDX has no counterpart for.
    #[error("the {what} page at {gpa:#x} is of type {page_type}, which Intel TDX cannot launch")]
    PageType {
        /// The page.
        gpa: u64,
        /// What it is.
        what: &'static str,
        /// Its type's name.
        page_type: &'static str,
    },
    /// The TD HOB over a page of the image.
    #[error("the TD HOB at {hob:#x} overlaps the {what} page at {gpa:#x}")]
    HobOverlap {
        /// The HOB's address.
        hob: u64,
        /// The image's page.
        gpa: u64,
        /// What it is.
        what: &'static str,
    },
}

/// MRTD of `launch`, with the TD HOB's `hob_pages` pages at `hob_gpa`
/// added last. vCPU state is not measured.
pub fn launch_mrtd(launch: &Launch, hob_gpa: u64, hob_pages: u64) -> Result<TdMeasurement, MrtdError> {
    let hob_end = hob_gpa + hob_pages * PAGE_SIZE as u64;
    let mut mrtd = Mrtd::new();
    let mut pages = Vec::with_capacity(launch.pages.len() + hob_pages as usize);
    for page in &launch.pages {
        let (gpa, what) = (page.gpa, page.what);
        if (hob_gpa..hob_end).contains(&gpa) {
            return Err(MrtdError::HobOverlap {
                hob: hob_gpa,
                gpa,
                what,
            });
        }
        let extended = match page.page_type {
            PageType::Normal => true,
            PageType::Unmeasured | PageType::Zero => false,
            other => {
                return Err(MrtdError::PageType {
                    gpa,
                    what,
                    page_type: other.name(),
                })
            }
        };
        if extended {
            let contents = page.contents.as_deref().ok_or(MrtdError::NoContents { gpa, what })?;
            mrtd.add_measured_page(gpa, contents);
        } else {
            mrtd.mem_page_add(gpa);
        }
        pages.push(TdPage { gpa, extended, what });
    }
    for i in 0..hob_pages {
        let gpa = hob_gpa + i * PAGE_SIZE as u64;
        mrtd.mem_page_add(gpa);
        pages.push(TdPage {
            gpa,
            extended: false,
            what: "TD HOB",
        });
    }
    Ok(TdMeasurement {
        mrtd: mrtd.finish(),
        pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use crate::launch::Page;
    use crate::testing::independent_mrtd;
    use alloc::string::ToString;
    use alloc::{format, vec};

    /// The page of the fixed vectors: byte i is i * 7 + 3 (mod 256).
    fn pattern() -> [u8; PAGE_SIZE] {
        core::array::from_fn(|i| (i * 7 + 3) as u8)
    }

    #[test]
    fn extension_buffers() {
        let add = extension(b"MEM.PAGE.ADD", 0x1122_3344_5566_7000);
        assert_eq!(&add[..16], b"MEM.PAGE.ADD\0\0\0\0");
        assert_eq!(&add[16..24], &[0x00, 0x70, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert!(add[24..].iter().all(|&b| b == 0));
        let ext = extension(b"MR.EXTEND", 0x100);
        assert_eq!(&ext[..16], b"MR.EXTEND\0\0\0\0\0\0\0");
        assert_eq!(&ext[16..24], &0x100u64.to_le_bytes());
    }

    /// Fixed vectors. No published MRTD test vector over a small, known
    /// input was found (td-shim's `td-shim-tee-info-hash`, Project Oak's
    /// `stage0` MRTD test and Edgeless's `tdx-measure` check theirs against
    /// whole firmware images that are not here), so these were computed
    /// independently with Python's hashlib from the ABI text above (one
    /// `hashlib.sha384()` updated with `b'MEM.PAGE.ADD' + bytes(4) +
    /// struct.pack('<Q', gpa) + bytes(104)` per add and `b'MR.EXTEND' +
    /// bytes(7) + struct.pack('<Q', gpa) + bytes(104) + chunk` per
    /// extend); [`mrtd_agrees_with_an_independent_python_computation`]
    /// repeats that computation over a launch (and covm's tests over its
    /// own launches). This is a weaker check than a reference
    /// implementation's vectors would be.
    #[test]
    fn fixed_vectors() {
        // No operation: SHA-384 of nothing.
        assert_eq!(
            hex(&Mrtd::new().finish()),
            "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b"
        );
        // One page added at 0x4000, unmeasured.
        let mut m = Mrtd::new();
        m.mem_page_add(0x4000);
        assert_eq!(
            hex(&m.finish()),
            "d68c9a70a011a3a58755262d2860e3d760cf69b4acd98b9f936c22c0eb55b67f7ec92527761ddd88e9bd55574809a072"
        );
        // The pattern page added and extended at 1 MiB, then a page added
        // at 0xFFFF_F000.
        let mut m = Mrtd::new();
        m.add_measured_page(0x10_0000, &pattern());
        m.mem_page_add(0xffff_f000);
        assert_eq!(
            hex(&m.finish()),
            "04058acd4a6f0bc94642434bd1cc826c608ab4409ab2b365844e47284a189872e2b37972ca90225df5b58a405223e263"
        );
        // The same as a launch: the pattern page, the HOB at 0xFFFF_F000.
        let mut launch = Launch::default();
        launch.add_normal(0x10_0000, &pattern(), "pattern");
        assert_eq!(
            hex(&launch_mrtd(&launch, 0xffff_f000, 1).unwrap().mrtd),
            "04058acd4a6f0bc94642434bd1cc826c608ab4409ab2b365844e47284a189872e2b37972ca90225df5b58a405223e263"
        );
    }

    fn one_page(page_type: PageType) -> Launch {
        Launch {
            pages: vec![Page::new(0x1000, page_type, "x")],
            ..Default::default()
        }
    }

    #[test]
    fn refusals() {
        for t in [PageType::Secrets, PageType::Cpuid, PageType::Vmsa] {
            let err = launch_mrtd(&one_page(t), TD_HOB_GPA, 1).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "the x page at 0x1000 is of type {}, which Intel TDX cannot launch",
                    t.name()
                )
            );
        }
        let err = launch_mrtd(&one_page(PageType::Normal), 0x1000, 1).unwrap_err();
        assert_eq!(err.to_string(), "the TD HOB at 0x1000 overlaps the x page at 0x1000");
        let err = launch_mrtd(&one_page(PageType::Normal), TD_HOB_GPA, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the x page at 0x1000 is measured, but the launch description has no contents for it"
        );
        // ZERO pages are added, not extended.
        let td = launch_mrtd(&one_page(PageType::Zero), TD_HOB_GPA, 2).unwrap();
        let mut m = Mrtd::new();
        for gpa in [0x1000, TD_HOB_GPA, TD_HOB_GPA + 0x1000] {
            m.mem_page_add(gpa);
        }
        assert_eq!(td.mrtd, m.finish());
        let listed: Vec<(u64, bool, &str)> = td.pages.iter().map(|p| (p.gpa, p.extended, p.what)).collect();
        assert_eq!(
            listed,
            [
                (0x1000, false, "x"),
                (TD_HOB_GPA, false, "TD HOB"),
                (TD_HOB_GPA + 0x1000, false, "TD HOB")
            ]
        );
    }

    /// MRTD of a launch of NORMAL, UNMEASURED and ZERO pages (the vCPUs
    /// not measured) equals the independent Python computation over the
    /// same pages; covm's tests repeat it over its own launches.
    #[test]
    fn mrtd_agrees_with_an_independent_python_computation() {
        let mut launch = Launch::default();
        launch.add_normal(0x10_0000, &[0x5a; 3 * PAGE_SIZE - 100], "image");
        launch.pages.push(Page::new(0x6000, PageType::Unmeasured, "policy"));
        launch.pages.push(Page::new(0x8000, PageType::Zero, "zero"));
        launch.add_normal(0x20_0000, &pattern(), "pattern");
        launch.vcpus = vec![crate::vmsa::VcpuState::reset(); 2];
        let td = launch_mrtd(&launch, TD_HOB_GPA, TD_HOB_PAGES).unwrap();
        assert_eq!(td.pages.len(), 7);
        let listing = std::env::temp_dir().join(format!("covm-measure-mrtd-{}.txt", std::process::id()));
        if let Some(theirs) = independent_mrtd(&launch, &td, &listing) {
            assert_eq!(hex(&td.mrtd), theirs);
        }
        let _ = std::fs::remove_file(&listing);
    }
}
