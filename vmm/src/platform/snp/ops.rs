//! Every KVM call an SEV-SNP launch makes, as one trait: [`super::kvm`]
//! makes them on a real VM, the tests' fake records them.

use super::error::CallError;
use super::private::PrivateMemoryOps;
use kvm_bindings::{kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update};

/// The calls of an SEV-SNP launch, in the order [`super::launch_snp`]
/// makes them (the private-memory calls come from [`PrivateMemoryOps`]).
pub trait SnpLaunchOps: PrivateMemoryOps {
    /// `KVM_CREATE_VM` of `vm_type` (`KVM_X86_SNP_VM`).
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CallError>;

    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_INIT2)`: the VM's SEV context
    /// (VMSA features, GHCB version), before any vCPU.
    fn sev_init2(&mut self, init: &kvm_sev_init) -> Result<(), CallError>;

    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_START)`: the guest
    /// context, with the guest policy.
    fn snp_launch_start(&mut self, start: &kvm_sev_snp_launch_start) -> Result<(), CallError>;

    /// `KVM_CREATE_VCPU` for vCPUs `0..count`, each with its boot state set:
    /// at `KVM_SEV_SNP_LAUNCH_FINISH` KVM encrypts and measures each vCPU's
    /// state as its VMSA.
    fn create_vcpus(&mut self, count: usize) -> Result<(), CallError>;

    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_UPDATE)` for one range:
    /// copies it from `uaddr` into private memory and measures it as its
    /// page type. KVM may take part of the range per call; the
    /// implementation calls again until all of it is taken.
    fn snp_launch_update(&mut self, update: &kvm_sev_snp_launch_update) -> Result<(), CallError>;

    /// `KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_FINISH)`: HOST_DATA, the
    /// optional ID and authentication blocks; the VMSAs; the guest may run.
    fn snp_launch_finish(&mut self, finish: &kvm_sev_snp_launch_finish) -> Result<(), CallError>;
}
