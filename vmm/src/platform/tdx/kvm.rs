//! The TDX launch calls on real KVM: [`KvmLaunch`] (shared with SEV-SNP,
//! which makes the VM, private-memory and vCPU calls) with [`TdxState`]
//! for the `KVM_TDX_*` sub-commands of `KVM_MEMORY_ENCRYPT_OP`.

use super::bindings::ioctls::KVM_MEMORY_ENCRYPT_OP;
use super::bindings::{cmd, TdxCapabilities, TdxCmd, TdxInitMemRegion, TdxInitVm};
use super::ops::TdxLaunchOps;
use crate::platform::hardware::error::CallError;
use crate::platform::hardware::kvm_launch::{until_done, KvmLaunch};
use kvm_bindings::KVM_CAP_MAX_VCPUS;
use std::os::fd::AsRawFd;
use vmm_sys_util::ioctl::ioctl_with_mut_ref;

/// TDX's part of a launch (nothing beyond the VM).
#[derive(Debug, Default)]
pub struct TdxState;

/// Room for CPUID entries in the first `KVM_TDX_CAPABILITIES` call.
const FIRST_NENT: u32 = 256;
/// Most CPUID entries covm makes room for.
const MAX_NENT: u32 = 4096;

/// `KVM_MEMORY_ENCRYPT_OP` with TDX sub-command `id` on `fd` (the VM's or
/// a vCPU's).
///
/// # Safety
///
/// `fd` is a KVM VM or vCPU fd, and `data` is what sub-command `id` takes:
/// an immediate, or the address of a live structure of the sub-command's
/// type and size that KVM may write back, exclusively borrowed for the call.
unsafe fn tdx_command(fd: &impl AsRawFd, id: u32, flags: u32, data: u64) -> Result<(), CallError> {
    let mut command = TdxCmd {
        id,
        flags,
        data,
        hw_error: 0,
    };
    // SAFETY: `command` is a live `struct kvm_tdx_cmd` KVM reads and writes
    // back; the caller vouches for `fd` and `data`.
    let ret = unsafe { ioctl_with_mut_ref(fd, KVM_MEMORY_ENCRYPT_OP(), &mut command) };
    if ret >= 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    Err(match command.hw_error {
        0 => CallError::Os(source),
        code => CallError::TdxModule { source, code },
    })
}

impl KvmLaunch<'_, TdxState> {
    fn vcpu_fd(&self, vcpu: usize) -> Result<&kvm_ioctls::VcpuFd, CallError> {
        self.vcpus
            .get(vcpu)
            .ok_or_else(|| CallError::Refused(format!("no vCPU {vcpu}: KVM_CREATE_VCPU comes first")))
    }
}

impl TdxLaunchOps for KvmLaunch<'_, TdxState> {
    fn tdx_capabilities(&mut self) -> Result<TdxCapabilities, CallError> {
        let vm = self.vm()?;
        let mut nent = FIRST_NENT;
        loop {
            let mut buffer = TdxCapabilities::buffer(nent);
            // SAFETY: `buffer` is a `struct kvm_tdx_capabilities` whose
            // `cpuid.nent` says how many entries it has room for.
            let result = unsafe { tdx_command(vm, cmd::CAPABILITIES, 0, buffer.as_mut_ptr() as u64) };
            match result {
                Ok(()) => return TdxCapabilities::parse(&buffer).map_err(CallError::Refused),
                Err(CallError::Os(e)) if e.raw_os_error() == Some(libc::E2BIG) && nent < MAX_NENT => nent *= 2,
                Err(e) => return Err(e),
            }
        }
    }

    fn max_vcpus(&mut self) -> Result<usize, CallError> {
        let max = self.vm()?.check_extension_raw(libc::c_ulong::from(KVM_CAP_MAX_VCPUS));
        usize::try_from(max).map_err(|_| CallError::Refused(format!("KVM_CAP_MAX_VCPUS answered {max}")))
    }

    fn tdx_init_vm(&mut self, init: &TdxInitVm) -> Result<(), CallError> {
        let vm = self.vm()?;
        let mut bytes = init.to_bytes();
        // SAFETY: `bytes` is a whole `struct kvm_tdx_init_vm` with its
        // `cpuid.nent` entries.
        unsafe { tdx_command(vm, cmd::INIT_VM, 0, bytes.as_mut_ptr() as u64) }
    }

    fn tdx_init_vcpu(&mut self, vcpu: usize, rcx: u64) -> Result<(), CallError> {
        let fd = self.vcpu_fd(vcpu)?;
        // SAFETY: INIT_VCPU's data is an immediate (the initial RCX).
        unsafe { tdx_command(fd, cmd::INIT_VCPU, 0, rcx) }
    }

    fn tdx_init_mem_region(&mut self, vcpu: usize, region: &TdxInitMemRegion, flags: u32) -> Result<(), CallError> {
        // KVM advances the structure (source_addr, gpa, nr_pages) as it
        // adds pages and may stop early.
        let fd = self.vcpu_fd(vcpu)?;
        let mut region = *region;
        until_done(
            &mut region,
            |r| r.nr_pages,
            "pages",
            // SAFETY: `r` is a live `struct kvm_tdx_init_mem_region`; KVM
            // reads the pages at its `source_addr` and writes `r` back.
            |r| unsafe { tdx_command(fd, cmd::INIT_MEM_REGION, flags, r as *mut TdxInitMemRegion as u64) },
        )
    }

    fn tdx_finalize_vm(&mut self) -> Result<(), CallError> {
        let vm = self.vm()?;
        // SAFETY: FINALIZE_VM takes no data.
        unsafe { tdx_command(vm, cmd::FINALIZE_VM, 0, 0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::hardware::create::CreateOps;
    use crate::platform::hardware::hybrid::kvm_or_skip;
    use kvm_bindings::KVM_X86_DEFAULT_VM;

    /// The real calls on this machine's KVM, which has no TDX: a TD cannot
    /// be created, and a TDX sub-command on a default VM is refused.
    #[test]
    fn real_calls_reach_kvm() {
        let Some(kvm) = kvm_or_skip() else { return };
        let memory = crate::vm::memory::allocate(4 << 20).unwrap();
        let mut launch = KvmLaunch::new(&kvm, memory, TdxState);
        assert!(
            matches!(launch.tdx_finalize_vm(), Err(CallError::Refused(_))),
            "no VM yet"
        );
        if super::super::probe::probe_tdx().is_ok() {
            return eprintln!("this host offers TDX: the refusals below do not apply");
        }
        let err = launch.create_vm(super::super::bindings::TDX_VM_TYPE).unwrap_err();
        assert!(
            matches!(&err, CallError::Os(e) if e.raw_os_error() == Some(libc::EINVAL)),
            "{err}"
        );
        launch.create_vm(u64::from(KVM_X86_DEFAULT_VM)).unwrap();
        let err = launch.tdx_capabilities().unwrap_err();
        assert!(
            matches!(&err, CallError::Os(e) if e.raw_os_error() == Some(libc::ENOTTY)),
            "{err}"
        );
        assert!(launch.max_vcpus().unwrap() >= 1);
        launch.create_vcpus(1).unwrap();
        let err = launch.tdx_init_vcpu(0, 0x80_0000).unwrap_err();
        assert!(matches!(err, CallError::Os(_)), "{err}");
        let err = launch.tdx_init_vcpu(1, 0).unwrap_err();
        assert_eq!(err.to_string(), "no vCPU 1: KVM_CREATE_VCPU comes first");
    }
}
