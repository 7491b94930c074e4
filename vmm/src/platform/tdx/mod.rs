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
/// said when `--platform tdx=on` is refused on such a host. (What exists:
/// the launch over [`TdxLaunchOps`], real on `KvmLaunch<TdxState>`, with
/// the TD HOB at `mrtd::TD_HOB_GPA`; MRTD, which `covm measure` prints;
/// `platform::Td`, the TD's platform object.)
pub const NOT_WIRED: &str = "covm's VM construction (vm.rs) does not call the TDX launch yet: its vCPU setup \
(KVM_SET_CPUID2, MSRs, FPU, LAPIC and boot registers) does not apply to a TD, whose register state KVM keeps from \
the host and whose CPUID comes from KVM_TDX_INIT_VM, and it creates a full in-kernel irqchip and PIT where KVM \
creates a TD's vCPUs only with a split irqchip; the built-in firmware has no TDX reset vector at 0xFFFFFFF0, \
reads no TD HOB, accepts no memory (TDG.MEM.PAGE.ACCEPT) and makes no TDVMCALL for its port I/O; the vCPU loop \
does not route KVM_EXIT_TDX (TDVMCALL GetQuote); and a TD's evidence (a quote of TDG.MR.REPORT) needs the guest";
