//! The exits of a vCPU of a VM with private memory (SEV-SNP, TDX): the
//! guest's TDVMCALLs and its `KVM_HC_MAP_GPA_RANGE` hypercalls.

use crate::platform::hardware::map_gpa::{handle_map_gpa_range, Conversion};
use crate::platform::hardware::private_memory::{PrivateMemoryOps, RamRegion};
use crate::platform::tdx::exit::{handle_tdx_exit, leaf_name, TdvmcallAnswer, TdxExit, TDX_EXIT_LEN};
use kvm_bindings::kvm_run;
use std::sync::{Arc, Mutex};

/// Answers the TDVMCALL of a `KVM_EXIT_TDX` in `run` (what covm does not
/// implement gets `TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED`,
/// `platform::tdx::exit`), logs it, and returns the answer.
pub(super) fn answer_tdvmcall(vcpu: u8, run: &mut kvm_run) -> TdvmcallAnswer {
    // SAFETY: on KVM_EXIT_TDX KVM filled the exit union's `tdx` member, its
    // first 64 bytes; `padding` spans the whole union as plain bytes, which
    // any value is valid for.
    let padding = unsafe { &mut run.__bindgen_anon_1.padding };
    let mut bytes = [0u8; TDX_EXIT_LEN];
    for (byte, raw) in bytes.iter_mut().zip(padding.iter()) {
        *byte = *raw as u8;
    }
    let mut exit = TdxExit::read(&bytes);
    let nr = exit.nr;
    let answer = handle_tdx_exit(&mut exit);
    exit.write(&mut bytes);
    for (raw, byte) in padding.iter_mut().zip(bytes) {
        *raw = byte as std::os::raw::c_char;
    }
    match &answer {
        TdvmcallAnswer::Answered(what) => tracing::debug!("vCPU {vcpu}: TDVMCALL {}: {what}", leaf_name(nr)),
        TdvmcallAnswer::Unsupported(why) => {
            tracing::warn!("vCPU {vcpu}: TDVMCALL answered TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED: {why}")
        }
    }
    answer
}

/// Where a vCPU of a VM with private memory (SEV-SNP, TDX) sends the guest's
/// `KVM_HC_MAP_GPA_RANGE` exits: the checks and the attribute change of
/// `platform::snp::hypercall`, on the VM's RAM.
pub struct PrivateMemoryExits {
    ops: Mutex<Box<dyn PrivateMemoryOps + Send>>,
    ram: Vec<RamRegion>,
    /// The VM's shared window, when it has devices: conversions of its
    /// pages are recorded there, and refused while its devices run.
    window: std::sync::OnceLock<Arc<crate::vm::confidential::shared_window::SharedWindow>>,
}

impl PrivateMemoryExits {
    /// Conversions through `ops` (the VM's `KVM_SET_MEMORY_ATTRIBUTES`)
    /// within `ram`.
    pub fn new(ops: Box<dyn PrivateMemoryOps + Send>, ram: Vec<RamRegion>) -> Self {
        PrivateMemoryExits {
            ops: Mutex::new(ops),
            ram,
            window: std::sync::OnceLock::new(),
        }
    }

    /// Records conversions of `window`'s pages there (a VM with devices).
    pub fn set_shared_window(&self, window: Arc<crate::vm::confidential::shared_window::SharedWindow>) {
        let _ = self.window.set(window);
    }

    /// Handles hypercall `nr` with `args`: the value the guest gets back
    /// (0 done, `-EINVAL` refused), or why the VM must stop.
    pub fn handle(&self, vcpu: u8, nr: u64, args: &[u64; 6]) -> Result<u64, String> {
        match self.window.get() {
            Some(window) if nr == crate::platform::hardware::map_gpa::KVM_HC_MAP_GPA_RANGE => {
                let to_private = args[2] & crate::platform::hardware::map_gpa::MAP_GPA_RANGE_ENCRYPTED != 0;
                window.hardware_convert(args[0], args[1], to_private, || self.convert(vcpu, nr, args))
            }
            _ => self.convert(vcpu, nr, args),
        }
    }

    fn convert(&self, vcpu: u8, nr: u64, args: &[u64; 6]) -> Result<u64, String> {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        match handle_map_gpa_range(&mut **ops, &self.ram, nr, args) {
            Ok(done) => {
                let to = match done.to {
                    Conversion::ToPrivate => "private",
                    Conversion::ToShared => "shared",
                };
                tracing::trace!("vCPU {vcpu}: {:#x}+{:#x} made {to}", done.gpa, done.size);
                Ok(0)
            }
            Err(e) => match e.guest_return() {
                Some(ret) => {
                    tracing::debug!("vCPU {vcpu}: refused: {e}");
                    Ok(ret)
                }
                None => Err(e.to_string()),
            },
        }
    }
}
