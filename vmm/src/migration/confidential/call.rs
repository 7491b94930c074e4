//! One agent command as the migration engine sees it: timed as crypto
//! time, its failure recorded in the session and turned into the engine's
//! error. Shared by the sealer (source) and the opener (destination).

use super::mailbox::{AgentError, AgentMailbox};
use super::session::SessionInfo;
use covm_guest_abi::mailbox::words::Args;
use covm_migration::engine::MigrationError;
use std::time::Instant;

/// Turns an agent failure into the engine's error.
pub fn agent_err(e: AgentError) -> MigrationError {
    MigrationError::Vm {
        op: "drive the migration agent",
        source: covm_migration::vm::VmOpError::vmm(e),
    }
}

/// Runs the command `args` are for on `mailbox`, adds its time to
/// `info`'s crypto time and records a failure in `info`; the command's
/// reply.
pub fn timed<A: Args>(
    mailbox: &mut AgentMailbox,
    info: &SessionInfo,
    args: A,
    input: &[u8],
) -> Result<A::Reply, MigrationError> {
    let started = Instant::now();
    let result = mailbox.call(args, input);
    info.add_crypto(started.elapsed());
    result.map_err(|e| {
        let e = agent_err(e);
        info.fail(e.to_string());
        e
    })
}
