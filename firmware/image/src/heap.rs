//! The firmware's two heaps behind one global allocator.
//!
//! - The migration agent's: only its SEV-SNP evidence check allocates
//!   (RSA and X.509 in `covm-snp-verify`), and only while it runs. The
//!   memory is `AGENT_HEAP` in the agent's private window, and the
//!   allocator's own state sits in the image's agent-private page
//!   (`link.ld`), so neither is ever overwritten by an imported page: at
//!   the destination the agent's heap stays valid while the guest's memory,
//!   the firmware's `.data` and `.bss` included, is replaced under it.
//! - The virtio drivers': virtio-drivers allocates a little (indirect
//!   descriptor lists, the console's receive buffer) on the workload CPU
//!   that drives the devices. Its memory is `layout::VIRTIO_HEAP`, its state
//!   ordinary `.data`: guest state that migrates like the rest of the
//!   workload, and must never come from (or land in) the agent's heap.
//!
//! Which heap an allocation comes from is told by the stack it is made on:
//! the agent runs on its private stack in the agent window from before it
//! first allocates, every other CPU on its stack in the image. A free goes
//! back to the heap that holds the pointer.

use core::alloc::{GlobalAlloc, Layout};
use covm_guest_abi::layout::{VIRTIO_HEAP, VIRTIO_HEAP_SIZE};
use covm_guest_abi::mailbox::{AGENT_HEAP, AGENT_HEAP_SIZE, AGENT_WINDOW_END, AGENT_WINDOW_START};
use linked_list_allocator::LockedHeap;

#[link_section = ".data.agent_private.heap"]
static AGENT: LockedHeap = LockedHeap::empty();

static VIRTIO: LockedHeap = LockedHeap::empty();

/// The global allocator: picks one of the two heaps. It has no state of
/// its own, so the agent touches nothing of the image's data through it.
struct Heaps;

#[global_allocator]
static HEAPS: Heaps = Heaps;

fn on_agent_stack() -> bool {
    let rsp: u64;
    // SAFETY: reads the stack pointer, nothing else.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    (AGENT_WINDOW_START..AGENT_WINDOW_END).contains(&rsp)
}

// SAFETY: both heaps are LockedHeaps over memory used for nothing else;
// a block is freed by the heap whose memory holds it, which allocated it.
unsafe impl GlobalAlloc for Heaps {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if on_agent_stack() {
                AGENT.alloc(layout)
            } else {
                VIRTIO.alloc(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let agent = (AGENT_HEAP..AGENT_HEAP + AGENT_HEAP_SIZE).contains(&(ptr as u64));
        // SAFETY: forwarded with the caller's guarantees, to the heap that
        // allocated `ptr`.
        unsafe {
            if agent {
                AGENT.dealloc(ptr, layout)
            } else {
                VIRTIO.dealloc(ptr, layout)
            }
        }
    }
}

/// Hands `AGENT_HEAP` to the agent's allocator. Called once, by the
/// agent's CPU on its private stack, before anything it runs allocates.
pub fn init() {
    // SAFETY: AGENT_HEAP..+AGENT_HEAP_SIZE is identity-mapped RAM in the
    // agent's private window (the caller checked the window is RAM), used
    // for nothing else, and this is the only call: the allocator owns it
    // from here on.
    unsafe { AGENT.lock().init(AGENT_HEAP as *mut u8, AGENT_HEAP_SIZE as usize) }
}

/// Hands `layout::VIRTIO_HEAP` to the virtio drivers' allocator. Called
/// once, by the CPU that drives the devices, after checking that the
/// region is RAM, before any driver is created.
pub fn init_virtio() {
    // SAFETY: VIRTIO_HEAP..+VIRTIO_HEAP_SIZE is identity-mapped RAM (the
    // caller checked) that nothing else uses; one call only (virtio.rs).
    unsafe { VIRTIO.lock().init(VIRTIO_HEAP as *mut u8, VIRTIO_HEAP_SIZE as usize) }
}
