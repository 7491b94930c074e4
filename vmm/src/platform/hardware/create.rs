//! The VM and vCPU creation both confidential launches make (SEV-SNP and
//! TDX alike): `KVM_CREATE_VM` of the platform's VM type, and
//! `KVM_CREATE_VCPU` between the launch's two halves.

use super::error::{at, CallError, LaunchError};

/// The calls that create the VM and its vCPUs, shared by
/// [`crate::platform::snp::ops::SnpLaunchOps`] and [`crate::platform::tdx::ops::TdxLaunchOps`].
pub trait CreateOps {
    /// `KVM_CREATE_VM` of `vm_type` (`KVM_X86_SNP_VM`, `KVM_X86_TDX_VM`).
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CallError>;

    /// `KVM_CREATE_VCPU` for vCPUs `0..count`. An SEV-SNP vCPU gets its
    /// boot state set (at `KVM_SEV_SNP_LAUNCH_FINISH` KVM encrypts and
    /// measures each vCPU's state as its VMSA); a TD's state is the TDX
    /// module's.
    fn create_vcpus(&mut self, count: usize) -> Result<(), CallError>;
}

/// `KVM_CREATE_VCPU` for `count` vCPUs as a launch step, its error naming
/// `platform`: what every launch does between [`prepare`] and [`finish`]
/// (SEV-SNP's and TDX's alike).
///
/// [`prepare`]: crate::platform::snp::launch::prepare
/// [`finish`]: crate::platform::snp::launch::finish
pub fn create_vcpus_step(ops: &mut impl CreateOps, count: usize, platform: &'static str) -> Result<(), LaunchError> {
    at(
        platform,
        "KVM_CREATE_VCPU",
        || format!("{count} vCPUs"),
        ops.create_vcpus(count),
    )
}
