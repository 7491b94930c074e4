//! The launch calls made on real KVM: [`KvmLaunch`] owns the VM it creates,
//! its guest_memfds and vCPUs. The VM and vCPU creation and the
//! private-memory calls are shared by every platform; [`SnpState`] adds the SEV device for the
//! SEV-SNP commands (TDX's are in `platform::tdx::kvm`).

use super::bindings::firmware_status_name;
use super::bindings::{SEV_DEVICE, SEV_INIT2, SNP_LAUNCH_FINISH, SNP_LAUNCH_START, SNP_LAUNCH_UPDATE};
use super::create::CreateOps;
use super::error::CallError;
use super::ops::SnpLaunchOps;
use super::private::{ram_regions, PrivateMemoryOps};
use crate::vm::memory::GuestMemory;
use kvm_bindings::{
    kvm_create_guest_memfd, kvm_enable_cap, kvm_memory_attributes, kvm_sev_cmd, kvm_sev_init,
    kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update, kvm_userspace_memory_region2,
    KVM_CAP_EXIT_HYPERCALL, KVM_MEM_GUEST_MEMFD,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

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
    memfds: Vec<OwnedFd>,
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

/// SEV-SNP's part of a launch: the SEV device every SEV command names.
#[derive(Debug, Default)]
pub struct SnpState {
    sev: Option<File>,
}

impl SnpState {
    /// Opens `/dev/sev`.
    pub fn open() -> Result<Self, CallError> {
        Self::open_device(Path::new(SEV_DEVICE))
    }

    /// Opens `path` as the SEV device.
    pub fn open_device(path: &Path) -> Result<Self, CallError> {
        let sev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| CallError::Refused(format!("cannot open {}: {e}", path.display())))?;
        Ok(SnpState { sev: Some(sev) })
    }

    /// No SEV device yet: [`SnpState::ensure_open`] opens it (after the
    /// probe, so that a host without one hears what it lacks first).
    pub fn unopened() -> Self {
        SnpState { sev: None }
    }

    /// Opens `/dev/sev` unless open.
    pub fn ensure_open(&mut self) -> Result<(), CallError> {
        if self.sev.is_none() {
            *self = Self::open()?;
        }
        Ok(())
    }
}

impl KvmLaunch<'_, SnpState> {
    /// `KVM_MEMORY_ENCRYPT_OP` with SEV command `id` over `data`.
    ///
    /// # Safety
    ///
    /// `T` is the structure command `id` takes (KVM reads and may write
    /// back that many bytes at `data`).
    unsafe fn sev_command<T>(&self, id: u32, data: &mut T) -> Result<(), CallError> {
        let vm = self.vm()?;
        let sev = self
            .platform
            .sev
            .as_ref()
            .ok_or_else(|| CallError::Refused(format!("{SEV_DEVICE} is not open")))?;
        let mut cmd = kvm_sev_cmd {
            id,
            data: data as *mut T as u64,
            sev_fd: sev.as_raw_fd() as u32,
            ..Default::default()
        };
        vm.encrypt_op_sev(&mut cmd).map_err(|e| {
            let source = std::io::Error::from_raw_os_error(e.errno());
            match cmd.error {
                0 => CallError::Os(source),
                code => CallError::Firmware {
                    source,
                    code,
                    name: firmware_status_name(code),
                },
            }
        })
    }
}

impl SnpLaunchOps for KvmLaunch<'_, SnpState> {
    fn sev_init2(&mut self, init: &kvm_sev_init) -> Result<(), CallError> {
        let mut init = *init;
        // SAFETY: KVM_SEV_INIT2 takes a `struct kvm_sev_init`.
        unsafe { self.sev_command(SEV_INIT2, &mut init) }
    }

    fn snp_launch_start(&mut self, start: &kvm_sev_snp_launch_start) -> Result<(), CallError> {
        let mut start = *start;
        // SAFETY: KVM_SEV_SNP_LAUNCH_START takes a `struct kvm_sev_snp_launch_start`.
        unsafe { self.sev_command(SNP_LAUNCH_START, &mut start) }
    }

    fn snp_launch_update(&mut self, update: &kvm_sev_snp_launch_update) -> Result<(), CallError> {
        // KVM may take part of the range and leave the rest in the
        // structure (gfn_start, uaddr and len advanced).
        let mut update = *update;
        until_done(
            &mut update,
            |u| u.len,
            "bytes",
            // SAFETY: KVM_SEV_SNP_LAUNCH_UPDATE takes a `struct
            // kvm_sev_snp_launch_update`; KVM reads the pages at its `uaddr`
            // (guest memory) and may write a corrected CPUID page back there.
            |u| unsafe { self.sev_command(SNP_LAUNCH_UPDATE, u) },
        )
    }

    fn snp_launch_finish(&mut self, finish: &kvm_sev_snp_launch_finish) -> Result<(), CallError> {
        let mut finish = *finish;
        // SAFETY: KVM_SEV_SNP_LAUNCH_FINISH takes a `struct
        // kvm_sev_snp_launch_finish`; its ID block pointers, if enabled, are
        // the caller's (the plan's), which KVM only reads.
        unsafe { self.sev_command(SNP_LAUNCH_FINISH, &mut finish) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::hybrid::kvm_or_skip;
    use super::super::private::{ram_regions, register_private};
    use super::*;
    use kvm_bindings::{KVM_CAP_GUEST_MEMFD, KVM_X86_DEFAULT_VM};

    /// The real calls on this machine's KVM, which has no SEV: an SNP VM
    /// cannot be created, SEV commands are refused by KVM, and private
    /// memory gets as far as KVM allows on a default VM.
    #[test]
    fn real_calls_reach_kvm_and_failures_are_named() {
        let Some(kvm) = kvm_or_skip() else { return };
        let memory = crate::vm::memory::allocate(4 << 20).unwrap();
        let state = SnpState::open_device(Path::new("/dev/null")).unwrap();
        let mut launch = KvmLaunch::new(&kvm, memory.clone(), state);
        assert!(matches!(
            launch.sev_init2(&kvm_sev_init::default()),
            Err(CallError::Refused(_))
        ));

        let snp = super::super::probe::probe_snp().is_ok();
        if !snp {
            let err = launch.create_vm(super::super::bindings::SNP_VM_TYPE).unwrap_err();
            assert!(
                matches!(&err, CallError::Os(e) if e.raw_os_error() == Some(libc::EINVAL)),
                "{err}"
            );
        }
        launch.create_vm(u64::from(KVM_X86_DEFAULT_VM)).unwrap();
        if !snp {
            let err = launch.sev_init2(&kvm_sev_init::default()).unwrap_err();
            assert!(
                matches!(&err, CallError::Os(e) if e.raw_os_error() == Some(libc::ENOTTY)),
                "{err}"
            );
        }

        // A slot must map guest memory whole, and its guest_memfd be ours.
        let mut slot = kvm_userspace_memory_region2 {
            userspace_addr: 0x1000,
            memory_size: 4 << 20,
            ..Default::default()
        };
        assert!(matches!(
            launch.set_user_memory_region2(&slot),
            Err(CallError::Refused(_))
        ));
        slot.userspace_addr = ram_regions(&memory)[0].uaddr;
        slot.flags = KVM_MEM_GUEST_MEMFD;
        slot.guest_memfd = 9999;
        let err = launch.set_user_memory_region2(&slot).unwrap_err();
        assert!(
            err.to_string()
                .contains("guest_memfd 9999 was not created by this launch"),
            "{err}"
        );

        if kvm.check_extension_raw(u64::from(KVM_CAP_GUEST_MEMFD)) <= 0 {
            covm_test_support::skip("this host's KVM has no guest_memfd");
            return;
        }
        match register_private(&mut launch, &ram_regions(&memory), "test") {
            Ok(()) => eprintln!("private memory registered on a default VM"),
            Err(e) => {
                // This project's machine: guest_memfd works, but a default
                // VM has no private memory attributes.
                assert!(
                    ["KVM_SET_USER_MEMORY_REGION2", "KVM_SET_MEMORY_ATTRIBUTES"].contains(&e.step),
                    "{e}"
                );
                eprintln!("private memory stopped as expected here: {e}");
            }
        }
        assert_eq!(launch.memfds.len(), 1, "the guest_memfd is kept");
        let launched = launch.into_launched().unwrap();
        assert_eq!(launched.guest_memfds.len(), 1);
    }

    #[test]
    fn partial_progress_is_called_again() {
        let eagain = || CallError::Os(std::io::Error::from_raw_os_error(libc::EAGAIN));
        let mut left = 10u64;
        let mut answers = vec![Ok(4), Err(eagain()), Ok(6)].into_iter();
        let mut calls = 0;
        until_done(
            &mut left,
            |l| *l,
            "pages",
            |l| {
                calls += 1;
                answers.next().unwrap().map(|taken| *l -= taken)
            },
        )
        .unwrap();
        assert_eq!((left, calls), (0, 3));
        let mut left = 5u64;
        let err = until_done(&mut left, |l| *l, "pages", |_| Ok(())).unwrap_err();
        assert_eq!(err.to_string(), "KVM made no progress: 5 pages left");
        let err = until_done(
            &mut left,
            |l| *l,
            "pages",
            |_| Err(CallError::Os(std::io::Error::from_raw_os_error(libc::EIO))),
        )
        .unwrap_err();
        assert!(matches!(err, CallError::Os(e) if e.raw_os_error() == Some(libc::EIO)));
        let mut none = 0u64;
        until_done(&mut none, |l| *l, "pages", |_| panic!("nothing to do")).unwrap();
    }

    #[test]
    fn the_sev_device_must_open() {
        let err = SnpState::open_device(Path::new("/nonexistent/sev")).unwrap_err();
        assert!(err.to_string().starts_with("cannot open /nonexistent/sev: "), "{err}");
    }
}
