//! A launch backend that builds a whole `Vm` without the hardware (tests
//! only): the recording [`Fake`] takes every launch call, and this
//! machine's KVM makes the VM (a default one) and its vCPUs real. Both
//! confidential VMs' tests build on it (`vm/snp.rs`, `vm/tdx.rs`), adding
//! their platform's calls.

use super::create::CreateOps;
use super::error::CallError;
use super::fake::{Fake, Recorded};
use super::kvm_launch::{IntoLaunched, KvmLaunch, Launched};
use super::private_memory::PrivateMemoryOps;
use kvm_bindings::{kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2, KVM_X86_DEFAULT_VM};
use kvm_ioctls::Kvm;

/// The recording fake for every call, with real KVM for the VM and vCPUs.
pub(crate) struct Hybrid<'k, 'f, C> {
    /// Records every launch call, in order.
    pub fake: &'f mut Fake<C>,
    /// Makes the VM and its vCPUs (set up as a real launch sets them up).
    pub real: KvmLaunch<'k, ()>,
}

impl<C: Recorded> CreateOps for Hybrid<'_, '_, C> {
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CallError> {
        self.fake.create_vm(vm_type)?;
        // Not `vm_type`: this machine need not offer it.
        self.real.create_vm(u64::from(KVM_X86_DEFAULT_VM))
    }

    fn create_vcpus(&mut self, count: usize) -> Result<(), CallError> {
        self.fake.create_vcpus(count)?;
        self.real.create_vcpus(count)
    }
}

/// Private memory is the fake's only: a default VM has none.
impl<C: Recorded> PrivateMemoryOps for Hybrid<'_, '_, C> {
    fn create_guest_memfd(&mut self, gmem: &kvm_create_guest_memfd) -> Result<u32, CallError> {
        self.fake.create_guest_memfd(gmem)
    }

    fn set_user_memory_region2(&mut self, region: &kvm_userspace_memory_region2) -> Result<(), CallError> {
        self.fake.set_user_memory_region2(region)
    }

    fn set_memory_attributes(&mut self, attributes: &kvm_memory_attributes) -> Result<(), CallError> {
        self.fake.set_memory_attributes(attributes)
    }

    fn enable_exit_hypercall(&mut self, hypercalls: u64) -> Result<(), CallError> {
        self.fake.enable_exit_hypercall(hypercalls)
    }
}

impl<C> IntoLaunched for Hybrid<'_, '_, C> {
    fn into_launched(self) -> Result<Launched, CallError> {
        self.real.into_launched()
    }
}

/// This machine's KVM, or None (said, as a SKIP) where there is none.
pub(crate) fn kvm_or_skip() -> Option<Kvm> {
    match crate::vm::kvm::open() {
        Ok(kvm) => Some(kvm),
        Err(e) => {
            covm_test_support::skip_without_kvm(e);
            None
        }
    }
}
