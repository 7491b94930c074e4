//! The agent's helper vCPUs, and the [`Team`] they make with agent 0: the
//! bare-metal half of `covm_agent::Team` (docs: `covm_guest_abi::mailbox`,
//! "Team").
//!
//! Agent 0 posts work through the control page at `AGENT_TEAM` (private
//! memory, zero at launch, never migrated) and waits for the helpers by
//! counting them there; the ports only block and wake. Like agent 0, a
//! helper touches nothing of the firmware's data once it started (imports
//! overwrite it): it runs on its own stack in the agent window and waits
//! only in port I/O.

use crate::hw;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use covm_agent::Team;
use covm_guest_abi::mailbox::{helper_stack_top, AGENT_TEAM, MAX_AGENT_VCPUS};
use covm_guest_abi::ports;

/// The work a join hands out: called with the worker's index.
type Work<'w> = &'w (dyn Fn(usize) + Sync);

/// The control page.
#[repr(C)]
struct Control {
    /// Work posted so far (0: none yet).
    posted: AtomicU64,
    /// The work posted last: the address of a [`Work`] on agent 0's stack.
    work: AtomicU64,
    /// Helpers that finished the work posted last.
    done: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<Control>() <= 4096);

fn control() -> &'static Control {
    // SAFETY: AGENT_TEAM is agent-private RAM (zero at launch, which is a
    // valid Control) used for nothing else, and every access to it is
    // atomic, so agent 0 and its helpers may share it.
    unsafe { &*(AGENT_TEAM as *const Control) }
}

/// Agent 0's side: `workers` vCPUs, its own and its helpers'.
pub struct FirmwareTeam {
    workers: u32,
}

impl FirmwareTeam {
    /// A team of `workers` (2 to `MAX_AGENT_VCPUS`, checked at boot).
    pub fn new(workers: u32) -> Self {
        FirmwareTeam { workers }
    }
}

impl Team for FirmwareTeam {
    fn workers(&self) -> usize {
        self.workers as usize
    }

    fn join(&self, work: &(dyn Fn(usize) + Sync)) {
        let ctl = control();
        let helpers = self.workers - 1;
        let slot: Work = work;
        ctl.done.store(0, Ordering::Relaxed);
        ctl.work.store(&raw const slot as u64, Ordering::Relaxed);
        // Release: a helper that sees the new count sees the work too.
        let posted = ctl.posted.load(Ordering::Relaxed) + 1;
        ctl.posted.store(posted, Ordering::Release);
        hw::outl(ports::TEAM_START, posted as u32);
        work(0);
        // The count decides, not the port: `slot` (and what the work
        // borrows) must outlive every helper's call.
        while ctl.done.load(Ordering::Acquire) < helpers {
            hw::inl(ports::TEAM_JOIN);
        }
    }
}

/// Runs helper `index` (1 for the vCPU just below agent 0's APIC ID, and
/// so on) on this CPU, which has checked in.
pub fn help(index: u32) -> ! {
    if index == 0 || index >= MAX_AGENT_VCPUS {
        // The BSP checked the count; a helper without a stack stays out.
        crate::idle()
    }
    // SAFETY: the helper's stack is agent-private RAM that only this vCPU
    // uses; helper_main never returns, so nothing on the old stack is
    // used again.
    unsafe { super::agent_switch_stack(u64::from(index), 0, helper_stack_top(index), helper_main) }
}

extern "C" fn helper_main(index: u64, _: u64) -> ! {
    let ctl = control();
    // The control page was zero at launch and no work is posted before
    // every helper checked in, so 0 is the last work this one has seen.
    let mut seen = 0;
    loop {
        hw::inl(ports::team_wait(index as u32));
        let posted = ctl.posted.load(Ordering::Acquire);
        if posted == seen {
            continue;
        }
        seen = posted;
        let at = ctl.work.load(Ordering::Relaxed) as *const Work;
        // SAFETY: agent 0 stored the address of a live `Work` before its
        // Release store of `posted`, and keeps it (and all it borrows)
        // alive until every helper counted itself done below.
        let work: Work = unsafe { *at };
        work(index as usize);
        ctl.done.fetch_add(1, Ordering::Release);
        hw::outl(ports::TEAM_DONE, posted as u32);
    }
}
