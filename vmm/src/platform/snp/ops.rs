//! Every KVM call an SEV-SNP launch makes, as one trait: [`super::kvm`]
//! makes them on a real VM, the tests' fake records them.

use crate::platform::hardware::create::CreateOps;
use crate::platform::hardware::error::CallError;
use crate::platform::hardware::private_memory::PrivateMemoryOps;
use kvm_bindings::{kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update};

/// The calls of an SEV-SNP launch, in the order [`super::launch::prepare`] and [`super::launch::finish`]
/// makes them (`KVM_CREATE_VM` and `KVM_CREATE_VCPU` come from
/// [`CreateOps`], the private-memory calls from [`PrivateMemoryOps`]).
pub trait SnpLaunchOps: CreateOps + PrivateMemoryOps {
    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_INIT2)`: the VM's SEV context
    /// (VMSA features, GHCB version), before any vCPU.
    fn sev_init2(&mut self, init: &kvm_sev_init) -> Result<(), CallError>;

    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_START)`: the guest
    /// context, with the guest policy.
    fn snp_launch_start(&mut self, start: &kvm_sev_snp_launch_start) -> Result<(), CallError>;

    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_UPDATE)` for one range:
    /// copies it from `uaddr` into private memory and measures it as its
    /// page type. KVM may take part of the range per call; the
    /// implementation calls again until all of it is taken.
    fn snp_launch_update(&mut self, update: &kvm_sev_snp_launch_update) -> Result<(), CallError>;

    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_FINISH)`: HOST_DATA, the
    /// optional ID and authentication blocks; the VMSAs; the guest may run.
    fn snp_launch_finish(&mut self, finish: &kvm_sev_snp_launch_finish) -> Result<(), CallError>;
}
