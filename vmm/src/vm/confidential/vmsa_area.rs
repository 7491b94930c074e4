//! The emulated platform's VMSA area: where the "hardware" (covm's
//! platform layer, standing in for SEV-SNP's VMSA pages or TDX's module)
//! puts the paused workload vCPUs' states for the agent to seal, and where
//! the destination's agent leaves the states it opened for the platform to
//! load. The migration engine and the session driver never see them.

use crate::state::vcpu::VcpuState;
use crate::vm::memory::GuestMemory;
use covm_guest_abi::mailbox::{AGENT_VCPU_STATES, MAX_VCPU_STATE, MAX_WORKLOAD_VCPUS, VCPU_STATE_SLOT};
use vm_memory::{Bytes, GuestAddress};

/// Errors moving states through the VMSA area.
#[derive(Debug, thiserror::Error)]
pub enum VmsaAreaError {
    /// More vCPUs than slots.
    #[error("vCPU {0} has no slot in the agent's VMSA area (at most {MAX_WORKLOAD_VCPUS})")]
    NoSlot(usize),
    /// A state that does not fit its slot.
    #[error("vCPU {index}'s state is {len} bytes, a slot holds {MAX_VCPU_STATE}")]
    TooLarge {
        /// Which vCPU.
        index: usize,
        /// Its encoded size.
        len: usize,
    },
    /// A slot the agent did not fill, or filled with something else.
    #[error("vCPU {index}'s slot holds no valid state: {why}")]
    Invalid {
        /// Which vCPU.
        index: usize,
        /// Why.
        why: String,
    },
    /// Guest memory.
    #[error("cannot access the VMSA area: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn slot(index: usize) -> Result<GuestAddress, VmsaAreaError> {
    if index as u64 >= MAX_WORKLOAD_VCPUS {
        return Err(VmsaAreaError::NoSlot(index));
    }
    Ok(GuestAddress(AGENT_VCPU_STATES + index as u64 * VCPU_STATE_SLOT))
}

/// Writes vCPU `index`'s state into its slot.
pub fn put(memory: &GuestMemory, index: usize, state: &VcpuState) -> Result<(), VmsaAreaError> {
    let at = slot(index)?;
    let bytes = postcard::to_allocvec(state).expect("encoding plain data into a Vec cannot fail");
    if bytes.len() as u64 > MAX_VCPU_STATE {
        return Err(VmsaAreaError::TooLarge {
            index,
            len: bytes.len(),
        });
    }
    memory.write_obj(bytes.len() as u32, at)?;
    memory.write_slice(&bytes, GuestAddress(at.0 + 4))?;
    Ok(())
}

/// Reads vCPU `index`'s state from its slot.
pub fn take(memory: &GuestMemory, index: usize) -> Result<VcpuState, VmsaAreaError> {
    let at = slot(index)?;
    let len: u32 = memory.read_obj(at)?;
    if len == 0 || u64::from(len) > MAX_VCPU_STATE {
        return Err(VmsaAreaError::Invalid {
            index,
            why: format!("length {len}"),
        });
    }
    let mut bytes = vec![0u8; len as usize];
    memory.read_slice(&mut bytes, GuestAddress(at.0 + 4))?;
    postcard::from_bytes(&bytes).map_err(|e| VmsaAreaError::Invalid {
        index,
        why: e.to_string(),
    })
}
