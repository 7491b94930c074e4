//! A vCPU's complete architectural state, saved and restored through KVM.
//!
//! Restore order follows what KVM needs: CPUID is set when the vCPU is
//! configured, then MP state, registers, special registers, XSAVE (FPU and
//! vector state), XCRs, debug registers, LAPIC, MSRs (the TSC and
//! TSC-deadline among them), and pending events last so nothing above
//! clobbers them.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Everything KVM holds for one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segments, control registers, descriptor tables, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87, SSE, AVX... (the legacy 4 KiB XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The in-kernel local APIC.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM lets covm read, with its value.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
}

/// Errors saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM call failed.
    #[error("cannot {what} of vCPU {index}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// Which vCPU.
        index: u8,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// KVM refused an MSR value.
    #[error("KVM refused MSR {msr:#x} of vCPU {index}")]
    MsrRefused {
        /// The MSR.
        msr: u32,
        /// Which vCPU.
        index: u8,
    },
}

/// Reads the MSRs in `indices` that KVM will give, dropping the ones it
/// refuses (KVM's list names MSRs a given CPU may not have).
fn read_msrs(fd: &VcpuFd, index: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut wanted: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&i| kvm_msr_entry {
            index: i,
            ..Default::default()
        })
        .collect();
    let mut read = Vec::with_capacity(wanted.len());
    while !wanted.is_empty() {
        let mut msrs = Msrs::from_entries(&wanted).expect("MSR batches stay within KVM's limit");
        let got = fd.get_msrs(&mut msrs).map_err(|source| VcpuStateError::Kvm {
            what: "read the MSRs",
            index,
            source,
        })?;
        read.extend_from_slice(&msrs.as_slice()[..got]);
        // KVM stops at the first MSR it cannot read: skip it, go on.
        wanted.drain(..(got + 1).min(wanted.len()));
    }
    Ok(read)
}

/// Saves the state of vCPU `index`; it must not be running.
pub fn save(fd: &VcpuFd, index: u8, msr_indices: &[u32]) -> Result<VcpuState, VcpuStateError> {
    let kvm = |what| move |source| VcpuStateError::Kvm { what, index, source };
    Ok(VcpuState {
        mp_state: fd.get_mp_state().map_err(kvm("read the MP state"))?,
        regs: fd.get_regs().map_err(kvm("read the registers"))?,
        sregs: fd.get_sregs().map_err(kvm("read the special registers"))?,
        xsave: fd.get_xsave().map_err(kvm("read the XSAVE area"))?,
        xcrs: fd.get_xcrs().map_err(kvm("read the XCRs"))?,
        debugregs: fd.get_debug_regs().map_err(kvm("read the debug registers"))?,
        lapic: fd.get_lapic().map_err(kvm("read the LAPIC"))?,
        msrs: read_msrs(fd, index, msr_indices)?,
        events: fd.get_vcpu_events().map_err(kvm("read the pending events"))?,
    })
}

/// Loads `state` into vCPU `index`, whose CPUID is already set.
pub fn restore(fd: &VcpuFd, index: u8, state: &VcpuState) -> Result<(), VcpuStateError> {
    let kvm = |what| move |source| VcpuStateError::Kvm { what, index, source };
    fd.set_mp_state(state.mp_state).map_err(kvm("set the MP state"))?;
    fd.set_regs(&state.regs).map_err(kvm("set the registers"))?;
    fd.set_sregs(&state.sregs).map_err(kvm("set the special registers"))?;
    // SAFETY: the XSAVE area came from KVM_GET_XSAVE of a vCPU with the same
    // CPUID, so its size and layout match what KVM_SET_XSAVE expects.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm("set the XSAVE area"))?;
    fd.set_xcrs(&state.xcrs).map_err(kvm("set the XCRs"))?;
    fd.set_debug_regs(&state.debugregs)
        .map_err(kvm("set the debug registers"))?;
    fd.set_lapic(&state.lapic).map_err(kvm("set the LAPIC"))?;
    for chunk in state.msrs.chunks(64) {
        let msrs = Msrs::from_entries(chunk).expect("64 MSRs fit a batch");
        let written = fd.set_msrs(&msrs).map_err(kvm("set the MSRs"))?;
        if let Some(refused) = chunk.get(written) {
            return Err(VcpuStateError::MsrRefused {
                msr: refused.index,
                index,
            });
        }
    }
    fd.set_vcpu_events(&state.events).map_err(kvm("set the pending events"))
}
