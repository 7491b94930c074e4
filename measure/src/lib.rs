//! covm's launch measurements, as pure functions over a launch description.
//!
//! A confidential VM's launch measurement is a function of what the VMM
//! puts in the VM before it runs: these functions compute it from a
//! [`Launch`] (the pages in launch order with their types and contents,
//! each vCPU's initial state, the payload's launch metadata), with no VMM,
//! KVM or guest memory, so a guest owner's tooling can compute the value
//! its VM's attestation must report. covm computes its own measurements
//! (`covm measure`, and every confidential launch) with this crate.
//!
//! - [`snp`]: the AMD SEV-SNP launch digest (`PAGE_INFO` chain), and
//!   [`snp::SnpLaunch`], what an SEV-SNP launch adds (metadata pages,
//!   kernel hashes, the vCPU type in every VMSA);
//! - [`vmsa`]: a vCPU's initial state encoded as a VMSA, and the vCPU
//!   types' CPUID signatures;
//! - [`kernel_hashes`]: the SEV kernel hashes table (QEMU's layout);
//! - [`cpuid_page`]: the SEV-SNP CPUID page;
//! - [`mrtd`]: Intel TDX's MRTD; [`td_hob`]: the TD-HOB a TD's firmware
//!   reads (not measured);
//! - [`launch`]: the description itself.
//!
//! IBM's `sev-snp-measure` is the external reference: the tests check the
//! digest, the VMSA layout, the hashes table and the vCPU types against it
//! (`testing`, feature `test-support`; they report a skip without it). MRTD
//! has no such reference small enough to run here: it is checked against
//! fixed vectors and an independent Python computation.
//!
//! `no_std` with `alloc` without the default `std` feature (which only
//! adds [`kernel_hashes::KernelHashes::from_files`]).
//!
//! # Example: the measurement a guest owner expects
//!
//! ```
//! use covm_measure::mrtd::{launch_mrtd, TD_HOB_GPA, TD_HOB_PAGES};
//! use covm_measure::snp::{launch_digest, SnpLaunch};
//! use covm_measure::vmsa::{vcpu_type_signature, VcpuState};
//! use covm_measure::{hex, Launch, Page, PageType};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // What the VMM loads, in its order (`covm measure --pages` lists
//! // covm's entries): here a firmware image at 1 MiB, then the migration
//! // policy page, whose contents are bound by HOST_DATA instead.
//! let firmware: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
//! let mut launch = Launch::default();
//! launch.add_normal(0x10_0000, &firmware, "payload image");
//! launch.pages.push(Page::new(0x6000, PageType::Unmeasured, "migration policy"));
//! // Two vCPUs: the bootstrap one at the firmware's entry, the other in
//! // its INIT state.
//! launch.vcpus = vec![
//!     VcpuState { rip: 0x10_0000, ..VcpuState::reset() },
//!     VcpuState::reset(),
//! ];
//!
//! // SEV-SNP with EPYC-Milan vCPUs: the report's MEASUREMENT.
//! let snp = SnpLaunch {
//!     vcpu_signature: vcpu_type_signature("EPYC-Milan")?,
//!     ..Default::default()
//! };
//! let expected = launch_digest(&snp.apply(launch.clone())?)?;
//! assert_eq!(expected.pages.len(), 3 + 1 + 2, "3 firmware pages, the policy, 2 VMSAs");
//! println!("SEV-SNP MEASUREMENT {}", hex(&expected.digest));
//!
//! // Intel TDX: MRTD, with the TD-HOB where covm puts it.
//! let td = launch_mrtd(&launch, TD_HOB_GPA, TD_HOB_PAGES)?;
//! println!("TDX MRTD {}", hex(&td.mrtd));
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod cpuid_page;
pub mod kernel_hashes;
pub mod launch;
pub mod mrtd;
pub mod snp;
pub mod td_hob;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod vmsa;

pub use launch::{FirmwareSection, Launch, Page, PageType, PAGE_SIZE};

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> alloc::string::String {
    use core::fmt::Write;
    bytes
        .iter()
        .fold(alloc::string::String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex() {
        assert_eq!(super::hex(&[0x00, 0xab, 0x10]), "00ab10");
        assert_eq!(super::hex(&[]), "");
    }
}
