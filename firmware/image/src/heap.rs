//! The migration agent's heap: only its SEV-SNP evidence check allocates
//! (RSA and X.509 in `covm-snp-verify`), and only while it runs.
//!
//! The memory is `AGENT_HEAP` in the agent's private window, and the
//! allocator's own state sits in the image's agent-private page
//! (`link.ld`), so neither is ever overwritten by an imported page: at the
//! destination the agent's heap stays valid while the guest's memory,
//! the firmware's `.data` and `.bss` included, is replaced under it.

use covm_guest_abi::mailbox::{AGENT_HEAP, AGENT_HEAP_SIZE};
use linked_list_allocator::LockedHeap;

#[global_allocator]
#[link_section = ".data.agent_private.heap"]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands `AGENT_HEAP` to the allocator. Called once, by the agent's CPU,
/// before anything allocates; nothing else ever allocates.
pub fn init() {
    // SAFETY: AGENT_HEAP..+AGENT_HEAP_SIZE is identity-mapped RAM in the
    // agent's private window (the caller checked the window is RAM), used
    // for nothing else, and this is the only call: the allocator owns it
    // from here on.
    unsafe { HEAP.lock().init(AGENT_HEAP as *mut u8, AGENT_HEAP_SIZE as usize) }
}
