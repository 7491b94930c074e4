//! The launch description every measurement here is computed over: the
//! pages a VMM puts in a new confidential VM, in launch order, with their
//! page types and (for the measured ones) their contents; each vCPU's
//! initial state; and the payload's launch metadata, the pages only an
//! SEV-SNP launch adds ([`crate::snp::SnpLaunch::apply`]).
//!
//! covm builds one from what it loaded (`vmm/src/platform/image.rs`); a
//! guest owner builds the same from the firmware image and covm's layout
//! (`covm measure --pages` lists the entries covm measures).

use crate::vmsa::VcpuState;
use alloc::boxed::Box;
use alloc::vec::Vec;
use covm_guest_abi::metadata::SectionKind;

/// Bytes of a guest page: the guest ABI's page, as a length.
pub const PAGE_SIZE: usize = covm_guest_abi::layout::PAGE_SIZE as usize;

/// SNP page types (`PAGE_TYPE` of `SNP_LAUNCH_UPDATE`); TDX launches the
/// NORMAL, UNMEASURED and ZERO ones too ([`crate::mrtd`]).
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

/// One page of a launch.
#[derive(Clone, PartialEq, Eq)]
pub struct Page {
    /// Guest-physical address (page aligned).
    pub gpa: u64,
    /// How the platform takes it in.
    pub page_type: PageType,
    /// What the VMM put there (for listings and errors).
    pub what: &'static str,
    /// The page's bytes: needed for the types whose contents are measured
    /// ([`PageType::measures_contents`]); for the others, what the launch
    /// writes there (if anything), never measured.
    pub contents: Option<Box<[u8; PAGE_SIZE]>>,
}

impl core::fmt::Debug for Page {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Page")
            .field("gpa", &format_args!("{:#x}", self.gpa))
            .field("page_type", &self.page_type)
            .field("what", &self.what)
            .field("contents", &self.contents.as_ref().map(|_| "[4096 bytes]"))
            .finish()
    }
}

impl Page {
    /// A page without contents (a VMM's record of what it loaded, whose
    /// bytes are still in guest memory; or a page whose contents are not
    /// measured).
    pub fn new(gpa: u64, page_type: PageType, what: &'static str) -> Self {
        Page {
            gpa,
            page_type,
            what,
            contents: None,
        }
    }

    /// A page holding `bytes` (at most a page; the rest of the page zero).
    ///
    /// # Panics
    /// If `bytes` is longer than a page.
    pub fn with_contents(gpa: u64, page_type: PageType, what: &'static str, bytes: &[u8]) -> Self {
        let mut page = Box::new([0u8; PAGE_SIZE]);
        page[..bytes.len()].copy_from_slice(bytes);
        Page {
            contents: Some(page),
            ..Page::new(gpa, page_type, what)
        }
    }
}

/// One section of the payload's launch metadata
/// (`covm_guest_abi::metadata`), checked by the VMM that read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareSection {
    /// Page-aligned guest-physical address.
    pub gpa: u64,
    /// Pages.
    pub pages: u64,
    /// What the launch adds there.
    pub kind: SectionKind,
}

/// A launch: every page the VMM put in guest memory, in launch order, and
/// each vCPU's initial state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// Pages in launch order (covm: its writes as NORMAL pages in
    /// ascending address, then the platform's own pages in the order it
    /// lists them).
    pub pages: Vec<Page>,
    /// Each vCPU's initial state, vCPU 0 (the bootstrap vCPU) first: one
    /// VMSA each on SEV-SNP, not measured on TDX.
    pub vcpus: Vec<VcpuState>,
    /// The payload's launch metadata, in its order: pages only an SEV-SNP
    /// launch adds ([`crate::snp::SnpLaunch::apply`]); empty without
    /// metadata.
    pub metadata: Vec<FirmwareSection>,
}

impl Launch {
    /// Appends `bytes` loaded at `gpa` (page aligned) as NORMAL pages, the
    /// last one zero-padded: how a firmware or kernel image enters a launch.
    pub fn add_normal(&mut self, gpa: u64, bytes: &[u8], what: &'static str) {
        for (i, chunk) in bytes.chunks(PAGE_SIZE).enumerate() {
            let at = gpa + (i * PAGE_SIZE) as u64;
            self.pages.push(Page::with_contents(at, PageType::Normal, what, chunk));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_bytes() {
        let mut launch = Launch::default();
        launch.add_normal(0x10_0000, &[7; PAGE_SIZE + 10], "image");
        assert_eq!(launch.pages.len(), 2);
        let second = &launch.pages[1];
        assert_eq!(
            (second.gpa, second.page_type, second.what),
            (0x10_1000, PageType::Normal, "image")
        );
        let contents = second.contents.as_ref().unwrap();
        assert_eq!(&contents[..10], &[7; 10]);
        assert!(contents[10..].iter().all(|&b| b == 0));
        assert_eq!(
            alloc::format!("{second:?}"),
            "Page { gpa: 0x101000, page_type: Normal, what: \"image\", contents: Some(\"[4096 bytes]\") }"
        );
    }
}
