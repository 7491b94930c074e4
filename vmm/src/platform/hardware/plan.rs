//! Why a launch image cannot be launched on a hardware platform: a page
//! outside RAM or unaligned, a VMSA among its pages, no vCPU, or a page
//! type the platform cannot take.

/// Why an image cannot be launched on SEV-SNP or TDX.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An image page not in guest RAM.
    #[error("the {what} page at {gpa:#x} is not in guest RAM")]
    NotRam {
        /// The page.
        gpa: u64,
        /// What it is.
        what: &'static str,
    },
    /// An image page not page-aligned.
    #[error("the {what} page at {gpa:#x} is not page-aligned")]
    Unaligned {
        /// The page.
        gpa: u64,
        /// What it is.
        what: &'static str,
    },
    /// A VMSA among the pages: on SNP VMSAs come from the vCPUs.
    #[error("the image lists a VMSA page at {0:#x}: SNP VMSAs come from the vCPUs' registers, not launch updates")]
    VmsaPage(u64),
    /// No vCPU.
    #[error("the image has no vCPU")]
    NoVcpu,
    /// A page type this launch cannot take.
    #[error("the {what} page at {gpa:#x} is of type {page_type}, which {platform} cannot launch")]
    PageType {
        /// The page.
        gpa: u64,
        /// What it is.
        what: &'static str,
        /// Its type's name.
        page_type: &'static str,
        /// The platform.
        platform: &'static str,
    },
}
