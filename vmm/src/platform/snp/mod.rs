//! AMD SEV-SNP on KVM: the launch sequence, its KVM calls, and the probe
//! that says what a host lacks.
//!
//! The launch is the one current upstream Linux and QEMU use (Linux 6.11+,
//! `Documentation/virt/kvm/x86/amd-memory-encryption.rst`):
//!
//! 1. `KVM_CREATE_VM` of type `KVM_X86_SNP_VM`;
//! 2. `KVM_SEV_INIT2` (`struct kvm_sev_init`), through `KVM_MEMORY_ENCRYPT_OP`;
//! 3. per RAM region: `KVM_CREATE_GUEST_MEMFD`, `KVM_SET_USER_MEMORY_REGION2`
//!    with that guest_memfd, `KVM_SET_MEMORY_ATTRIBUTES` (PRIVATE); and
//!    `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)` so the guest's page-state
//!    changes reach covm as `KVM_HC_MAP_GPA_RANGE` exits ([`crate::platform::hardware::map_gpa`]);
//! 4. `KVM_SEV_SNP_LAUNCH_START` with the guest policy;
//! 5. the vCPUs, with their boot state (KVM turns each into its VMSA);
//! 6. `KVM_SEV_SNP_LAUNCH_UPDATE` for every page of the launch image, by
//!    page type, in the image's order;
//! 7. `KVM_SEV_SNP_LAUNCH_FINISH` with HOST_DATA (the migration policy's
//!    SHA-256) and, optionally, an ID block and its authentication block;
//!    KVM then encrypts and measures every vCPU's VMSA.
//!
//! So the PSP measures exactly the entries `covm_measure::snp::launch_digest`
//! computes over the same image ([`super::measure::snp_launch`]), which is
//! what `covm measure` prints.
//!
//! Files, one job each: [`ops`] names every call (the [`ops::SnpLaunchOps`]
//! trait), [`plan`] turns a launch image (a `covm_measure::Launch`) into
//! the calls' arguments, [`launch`] drives the sequence, [`kvm`] makes
//! the calls on a real VM fd, [`probe`] checks the host first,
//! [`construct`] is covm's VM construction around the launch. What TDX
//! shares (VM and vCPU creation, private memory, the guest's page
//! conversions, errors, the host probe's plumbing, the recording fake) is
//! in `platform::hardware`.

pub mod bindings;
pub mod construct;
#[cfg(test)]
pub(crate) mod fake;
pub mod kvm;
pub mod launch;
pub mod ops;
pub mod plan;
pub mod probe;

pub use probe::probe_snp;

/// What still stands between covm's SEV-SNP launch and a guest that runs
/// on SEV-SNP hardware: logged when such a VM is launched, and in its
/// `vm.info`.
pub const GUEST_NOT_READY: &str = "covm's built-in firmware is not SEV-SNP-enlightened yet: it has no #VC \
handler or GHCB protocol for its port I/O and MSR accesses, does not PVALIDATE its memory, and has no CPUID or \
secrets page in the launch; on SEV-SNP hardware it stops at its first intercepted instruction";
