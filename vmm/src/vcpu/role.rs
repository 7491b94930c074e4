//! Which kind of vCPU the calling thread runs. Port devices run on the
//! thread of the vCPU that exited, and a confidential VM's agent ports
//! must tell the migration agent's vCPUs from the workload's: a workload
//! vCPU left waiting in the agent's doorbell would never park, and would
//! hold the port the agent itself waits on.

use std::cell::Cell;

thread_local! {
    static ON_AGENT_VCPU: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread, for its whole life, as running one of the
/// migration agent's vCPUs.
pub(crate) fn enter_agent_vcpu() {
    ON_AGENT_VCPU.with(|a| a.set(true));
}

/// Whether the calling thread runs one of the migration agent's vCPUs.
pub fn on_agent_vcpu() -> bool {
    ON_AGENT_VCPU.with(Cell::get)
}
