//! Intel TDX on KVM: the launch sequence, its KVM calls, and the probe
//! that says what a host lacks.
//!
//! The launch follows current upstream Linux (6.16+,
//! `Documentation/virt/kvm/x86/intel-tdx.rst`): `KVM_CREATE_VM` of type
//! `KVM_X86_TDX_VM`; `KVM_TDX_CAPABILITIES`; `KVM_TDX_INIT_VM` with the
//! TD's attributes, XFAM, MRCONFIGID (HOST_DATA, the migration policy's
//! hash) and CPUID configuration; private memory as for SEV-SNP
//! (guest_memfd, `KVM_SET_USER_MEMORY_REGION2`, PRIVATE attributes,
//! `KVM_HC_MAP_GPA_RANGE` exits: `platform::hardware::private_memory`); the vCPUs,
//! each `KVM_TDX_INIT_VCPU` with the TD HOB's address; every image page
//! with `KVM_TDX_INIT_MEM_REGION` (measured pages with
//! `KVM_TDX_MEASURE_MEMORY_REGION`), then the TD HOB; `KVM_TDX_FINALIZE_VM`.
//! The `KVM_TDX_*` calls are `KVM_MEMORY_ENCRYPT_OP` with a
//! `struct kvm_tdx_cmd` on the VM fd or a vCPU fd.
//!
//! Files: [`bindings`] (the uapi kvm-bindings lacks), [`ops`] (the
//! [`ops::TdxLaunchOps`] trait), [`plan`] (with the TD HOB,
//! `covm_measure::td_hob`), [`launch`], [`kvm`],
//! [`probe`], [`construct`] (covm's VM construction around the launch, over the
//! [`construct::TdxVmOps`] seam; `vm/tdx.rs` assembles the `Vm`), [`exit`] (the
//! TDVMCALLs KVM forwards as `KVM_EXIT_TDX`). The errors, the VM and
//! vCPU creation, the private-memory calls and exits and the real
//! `KvmLaunch` are shared with SEV-SNP ([`crate::platform::hardware`]).

pub mod bindings;
pub mod construct;
pub mod exit;
#[cfg(test)]
pub(crate) mod fake;
pub mod kvm;
pub mod launch;
pub mod ops;
pub mod plan;
pub mod probe;

pub use probe::probe_tdx;

/// What keeps covm's built-in firmware from running as a TD, on TDX
/// hardware: logged when a TD is launched, and in its `vm.info`.
pub const GUEST_NOT_READY: &str = "covm's built-in firmware cannot run as a TD yet: it has no TDX reset vector at \
0xFFFFFFF0 (the TDX module starts a TD's vCPUs in 32-bit protected mode there, RCX the TD HOB), reads no TD HOB, \
accepts no memory (TDG.MEM.PAGE.ACCEPT) and makes no TDVMCALL for its port I/O; on TDX hardware it stops at its \
first instruction that needs one";

/// What a TD's devices lack, said when one is launched and in its
/// `vm.info`: a TD has a split irqchip (KVM refuses it the in-kernel PIC,
/// IOAPIC and PIT) and covm has no userspace IOAPIC.
pub const TD_DEVICES: &str = "a TD has no in-kernel PIC, IOAPIC or PIT (KVM gives it a split irqchip only) and \
covm has no userspace IOAPIC: there is no PIT timer, and COM1's IRQ 4 is not wired (its output works, polled)";
