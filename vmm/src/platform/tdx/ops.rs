//! Every KVM call a TDX launch makes, as one trait: `KvmLaunch<TdxState>`
//! makes them on a real VM, the tests' fake records them.

use super::bindings::{TdxCapabilities, TdxInitMemRegion, TdxInitVm};
use crate::platform::hardware::create::CreateOps;
use crate::platform::hardware::error::CallError;
use crate::platform::hardware::private_memory::PrivateMemoryOps;

/// The calls of a TDX launch, in the order [`super::launch::prepare`] and [`super::launch::finish`] makes
/// them (`KVM_CREATE_VM` and `KVM_CREATE_VCPU` come from [`CreateOps`],
/// the private-memory calls from [`PrivateMemoryOps`]). The `KVM_TDX_*`
/// calls go through `KVM_MEMORY_ENCRYPT_OP` with a `struct kvm_tdx_cmd`,
/// on the VM fd or a vCPU fd as noted.
pub trait TdxLaunchOps: CreateOps + PrivateMemoryOps {
    /// `KVM_TDX_CAPABILITIES` (VM): the attributes, XFAM and CPUID bits a
    /// TD may configure on this host.
    fn tdx_capabilities(&mut self) -> Result<TdxCapabilities, CallError>;

    /// `KVM_CHECK_EXTENSION(KVM_CAP_MAX_VCPUS)` on the VM: the TD's vCPU limit.
    fn max_vcpus(&mut self) -> Result<usize, CallError>;

    /// `KVM_TDX_INIT_VM` (VM): attributes, XFAM, MRCONFIGID, MROWNER,
    /// MROWNERCONFIG and the CPUID configuration; before any vCPU.
    fn tdx_init_vm(&mut self, init: &TdxInitVm) -> Result<(), CallError>;

    /// `KVM_TDX_INIT_VCPU` (vCPU `vcpu`): `TDH.VP.INIT` with the vCPU's
    /// initial RCX (the TD HOB's address).
    fn tdx_init_vcpu(&mut self, vcpu: usize, rcx: u64) -> Result<(), CallError>;

    /// `KVM_TDX_INIT_MEM_REGION` (vCPU `vcpu`): adds the pages, copying
    /// them from `region.source_addr`; `flags` has
    /// `KVM_TDX_MEASURE_MEMORY_REGION` to extend MRTD with their contents.
    /// KVM may take part of the range per call; the implementation calls
    /// again until all of it is taken.
    fn tdx_init_mem_region(&mut self, vcpu: usize, region: &TdxInitMemRegion, flags: u32) -> Result<(), CallError>;

    /// `KVM_TDX_FINALIZE_VM` (VM): MRTD is final; the TD may run.
    fn tdx_finalize_vm(&mut self) -> Result<(), CallError>;
}
