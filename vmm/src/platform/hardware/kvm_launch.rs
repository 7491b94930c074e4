//! The launch calls made on real KVM, shared by both hardware platforms:
//! [`KvmLaunch`] owns the VM it creates, its guest_memfds and vCPUs, and
//! makes the VM and vCPU creation and the private-memory calls; each
//! platform's state `P` adds its own commands (`platform::snp::kvm`,
//! `platform::tdx::kvm`).

use super::create::CreateOps;
use super::error::CallError;
use super::private_memory::{ram_regions, PrivateMemoryOps};
use crate::vm::memory::GuestMemory;
use kvm_bindings::{
    kvm_create_guest_memfd, kvm_enable_cap, kvm_memory_attributes, kvm_userspace_memory_region2,
    KVM_CAP_EXIT_HYPERCALL, KVM_MEM_GUEST_MEMFD,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Sets up vCPU `index` (its CPUID, MSRs and boot registers) right after
/// `KVM_CREATE_VCPU`: covm's VM construction supplies it.
pub type VcpuSetup<'a> = Box<dyn FnMut(&VcpuFd, usize) -> Result<(), String> + 'a>;

/// A confidential launch on real KVM, with platform state `P`.
///
/// Fields drop in order: the vCPUs and the VM before the guest memory
/// its slots map.
pub struct KvmLaunch<'a, P> {
    kvm: &'a Kvm,
    pub(crate) vcpus: Vec<VcpuFd>,
    pub(crate) vm: Option<VmFd>,
    pub(crate) memfds: Vec<OwnedFd>,
    vcpu_setup: Option<VcpuSetup<'a>>,
    pub(crate) platform: P,
    memory: GuestMemory,
}

impl<P> std::fmt::Debug for KvmLaunch<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmLaunch")
            .field("vm", &self.vm.is_some())
            .field("guest_memfds", &self.memfds.len())
            .field("vcpus", &self.vcpus.len())
            .finish()
    }
}

/// What a launch leaves: the VM, its vCPUs, the guest_memfds backing its
/// private memory and the guest memory its slots map. The fields drop in
/// that order; whoever takes them apart must keep `memory` mapped until
/// the others are gone.
#[derive(Debug)]
pub struct Launched {
    /// Its vCPUs, vCPU 0 first.
    pub vcpus: Vec<VcpuFd>,
    /// The VM.
    pub vm: VmFd,
    /// The guest_memfds, one per RAM region.
    pub guest_memfds: Vec<OwnedFd>,
    /// covm's (shared) mapping of guest memory.
    pub memory: GuestMemory,
}

impl<'a, P> KvmLaunch<'a, P> {
    /// A launch on `kvm` of a VM whose RAM is `memory` (loaded already:
    /// the launch copies from it).
    pub fn new(kvm: &'a Kvm, memory: GuestMemory, platform: P) -> Self {
        KvmLaunch {
            kvm,
            vm: None,
            memory,
            memfds: Vec::new(),
            vcpus: Vec::new(),
            vcpu_setup: None,
            platform,
        }
    }

    /// Sets each vCPU up with `setup` as it is created.
    pub fn with_vcpu_setup(mut self, setup: VcpuSetup<'a>) -> Self {
        self.vcpu_setup = Some(setup);
        self
    }

    /// The VM, once created.
    pub(crate) fn vm(&self) -> Result<&VmFd, CallError> {
        self.vm
            .as_ref()
            .ok_or_else(|| CallError::Refused("no VM yet: KVM_CREATE_VM comes first".into()))
    }
}

/// A launch's backend once the launch is done: it hands over the KVM
/// objects its calls made (real KVM's [`KvmLaunch`], or a test's).
pub trait IntoLaunched {
    /// The VM, vCPUs and guest_memfds, once launched.
    fn into_launched(self) -> Result<Launched, CallError>;
}

impl<P> IntoLaunched for KvmLaunch<'_, P> {
    fn into_launched(self) -> Result<Launched, CallError> {
        let vm = self.vm.ok_or_else(|| CallError::Refused("no VM was created".into()))?;
        Ok(Launched {
            vm,
            vcpus: self.vcpus,
            guest_memfds: self.memfds,
            memory: self.memory,
        })
    }
}

impl<P> CreateOps for KvmLaunch<'_, P> {
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CallError> {
        if self.vm.is_some() {
            return Err(CallError::Refused("the VM exists already".into()));
        }
        self.vm = Some(self.kvm.create_vm_with_type(vm_type)?);
        Ok(())
    }

    /// Sets each vCPU up as it comes.
    fn create_vcpus(&mut self, count: usize) -> Result<(), CallError> {
        for index in self.vcpus.len()..count {
            let vcpu = self.vm()?.create_vcpu(index as u64)?;
            if let Some(setup) = &mut self.vcpu_setup {
                setup(&vcpu, index).map_err(|e| CallError::Refused(format!("setting up vCPU {index}: {e}")))?;
            }
            self.vcpus.push(vcpu);
        }
        Ok(())
    }
}

impl<P> PrivateMemoryOps for KvmLaunch<'_, P> {
    fn create_guest_memfd(&mut self, gmem: &kvm_create_guest_memfd) -> Result<u32, CallError> {
        let fd = self.vm()?.create_guest_memfd(*gmem)?;
        // SAFETY: KVM_CREATE_GUEST_MEMFD just returned this new descriptor,
        // which nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        self.memfds.push(owned);
        Ok(fd as u32)
    }

    fn set_user_memory_region2(&mut self, region: &kvm_userspace_memory_region2) -> Result<(), CallError> {
        // The mapping KVM is given must be one of guest memory's, whole:
        // `self.memory` keeps it mapped while this launch lives, and
        // `Launched` carries it on with the VM.
        let mapped = ram_regions(&self.memory)
            .iter()
            .any(|r| r.uaddr == region.userspace_addr && r.size == region.memory_size);
        if !mapped {
            return Err(CallError::Refused(format!(
                "{:#x} ({:#x} bytes) is not a guest memory mapping",
                region.userspace_addr, region.memory_size
            )));
        }
        let ours = self.memfds.iter().any(|fd| fd.as_raw_fd() as u32 == region.guest_memfd);
        if region.flags & KVM_MEM_GUEST_MEMFD != 0 && !ours {
            return Err(CallError::Refused(format!(
                "guest_memfd {} was not created by this launch",
                region.guest_memfd
            )));
        }
        let vm = self.vm()?;
        // SAFETY: the slot maps a whole region of `self.memory`, checked just
        // above, which stays mapped while the VM exists (the fields drop the
        // VM first); covm's slots do not overlap (one per RAM region).
        unsafe { vm.set_user_memory_region2(*region) }?;
        Ok(())
    }

    fn set_memory_attributes(&mut self, attributes: &kvm_memory_attributes) -> Result<(), CallError> {
        Ok(self.vm()?.set_memory_attributes(*attributes)?)
    }

    fn enable_exit_hypercall(&mut self, hypercalls: u64) -> Result<(), CallError> {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_EXIT_HYPERCALL,
            ..Default::default()
        };
        cap.args[0] = hypercalls;
        Ok(self.vm()?.enable_cap(&cap)?)
    }
}

/// Calls `call` on `arg` until `left(arg)` (in `unit`) is 0: KVM may take
/// part of a range per call and leave `arg` describing the rest. EAGAIN
/// and EINTR are retried; a call that takes nothing is an error.
pub(crate) fn until_done<T>(
    arg: &mut T,
    left: impl Fn(&T) -> u64,
    unit: &str,
    mut call: impl FnMut(&mut T) -> Result<(), CallError>,
) -> Result<(), CallError> {
    while left(arg) > 0 {
        let before = left(arg);
        match call(arg) {
            Ok(()) if left(arg) >= before => {
                return Err(CallError::Refused(format!(
                    "KVM made no progress: {before} {unit} left"
                )))
            }
            Ok(()) => {}
            Err(CallError::Os(e)) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
