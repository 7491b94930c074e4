//! Intel TDX on KVM: the launch sequence, its KVM calls, the TD HOB, and
//! the probe that says what a host lacks.
//!
//! The launch follows current upstream Linux (6.16+,
//! `Documentation/virt/kvm/x86/intel-tdx.rst`): `KVM_CREATE_VM` of type
//! `KVM_X86_TDX_VM`; `KVM_TDX_CAPABILITIES`; `KVM_TDX_INIT_VM` with the
//! TD's attributes, XFAM, MRCONFIGID (HOST_DATA, the migration policy's
//! hash) and CPUID configuration; private memory as for SEV-SNP
//! (guest_memfd, `KVM_SET_USER_MEMORY_REGION2`, PRIVATE attributes,
//! `KVM_HC_MAP_GPA_RANGE` exits: `platform::snp::private`); the vCPUs,
//! each `KVM_TDX_INIT_VCPU` with the TD HOB's address; every image page
//! with `KVM_TDX_INIT_MEM_REGION` (measured pages with
//! `KVM_TDX_MEASURE_MEMORY_REGION`), then the TD HOB; `KVM_TDX_FINALIZE_VM`.
//! The `KVM_TDX_*` calls are `KVM_MEMORY_ENCRYPT_OP` with a
//! `struct kvm_tdx_cmd` on the VM fd or a vCPU fd.
//!
//! Files: [`bindings`] (the uapi kvm-bindings lacks), [`ops`] (the
//! [`TdxLaunchOps`] trait), [`plan`], [`hob`], [`launch`], [`kvm`],
//! [`probe`]. The errors, the private-memory calls and the real
//! `KvmLaunch` are SEV-SNP's ([`crate::platform::snp`]), shared.

pub mod bindings;
#[cfg(test)]
pub(crate) mod fake;
pub mod hob;
pub mod kvm;
pub mod launch;
pub mod ops;
pub mod plan;
pub mod probe;

pub use launch::launch_tdx;
pub use ops::TdxLaunchOps;
pub use plan::{TdxOptions, TdxPlan};
pub use probe::probe_tdx;

/// What stands between a host that passes [`probe_tdx`] and a running TD:
/// said when `--platform tdx=on` is refused on such a host.
pub const NOT_WIRED: &str = "covm's VM construction (vm.rs) does not call the TDX launch yet (it creates a default \
VM with plain memory slots and sets the vCPUs' registers, which a TD ignores); the built-in firmware has no TDX \
reset vector at 0xFFFFFFF0 and reads no TD HOB; the vCPU loop does not route KVM_HC_MAP_GPA_RANGE or TDVMCALL \
exits; no MRTD is computed for `covm measure`; and no TDX Platform (TD quote evidence) exists";
