//! SEV-SNP's commands on real KVM: [`SnpState`] adds the SEV device to
//! the shared [`KvmLaunch`], which then makes every [`SnpLaunchOps`] call.

use super::bindings::firmware_status_name;
use super::bindings::{SEV_DEVICE, SEV_INIT2, SNP_LAUNCH_FINISH, SNP_LAUNCH_START, SNP_LAUNCH_UPDATE};
use super::ops::SnpLaunchOps;
use crate::platform::hardware::error::CallError;
use crate::platform::hardware::kvm_launch::{until_done, KvmLaunch};
use kvm_bindings::{
    kvm_sev_cmd, kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update,
};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

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
    use super::*;
    use crate::platform::hardware::create::CreateOps;
    use crate::platform::hardware::hybrid::kvm_or_skip;
    use crate::platform::hardware::kvm_launch::IntoLaunched;
    use crate::platform::hardware::private_memory::PrivateMemoryOps;
    use crate::platform::hardware::private_memory::{ram_regions, register_private};
    use kvm_bindings::{kvm_userspace_memory_region2, KVM_CAP_GUEST_MEMFD, KVM_MEM_GUEST_MEMFD, KVM_X86_DEFAULT_VM};

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
