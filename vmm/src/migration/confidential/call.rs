//! One agent command as the migration engine sees it: timed as crypto
//! time, its failure recorded in the session and turned into the engine's
//! error. Shared by the sealer (source) and the opener (destination).

use super::mailbox::{AgentError, AgentMailbox};
use super::session::SessionInfo;
use covm_guest_abi::mailbox::words::{Args, CostsArgs};
use covm_migration::engine::{AgentCosts, MigrationError};
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
    post(mailbox, info, args, input)?;
    finish::<A>(mailbox, info)
}

/// [`timed`] in two halves: posts the command and returns at once (the
/// agent works while covm sends); [`finish`] waits for the reply.
pub fn post<A: Args>(
    mailbox: &mut AgentMailbox,
    info: &SessionInfo,
    args: A,
    input: &[u8],
) -> Result<(), MigrationError> {
    let started = Instant::now();
    let result = mailbox.post(args, input);
    info.add_crypto(started.elapsed());
    result.map_err(|e| failed(info, e))
}

/// The reply to the command [`post`] posted.
pub fn finish<A: Args>(mailbox: &mut AgentMailbox, info: &SessionInfo) -> Result<A::Reply, MigrationError> {
    let started = Instant::now();
    let result = mailbox.finish::<A>();
    info.add_crypto(started.elapsed());
    result.map_err(|e| failed(info, e))
}

fn failed(info: &SessionInfo, e: AgentError) -> MigrationError {
    let e = agent_err(e);
    info.fail(e.to_string());
    e
}

/// Where the agent's work went in this session, for the report: its own
/// counts (`COSTS`, its clock's ticks converted at the guest's TSC rate)
/// beside covm's waiting and copying. `None` (logged) when the agent
/// cannot say or the rate is unknown: the report then lacks the
/// breakdown, nothing else.
pub fn costs(mailbox: &mut AgentMailbox) -> Option<AgentCosts> {
    // Posted already (the destination asks right after its Commit, so the
    // answer is ready by the time the report is written).
    let reply = if mailbox.pending() == Some(<CostsArgs as Args>::COMMAND) {
        mailbox.finish::<CostsArgs>()
    } else {
        mailbox.call(CostsArgs, &[])
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!("no cost breakdown from the migration agent: {e}");
            return None;
        }
    };
    let Some(khz) = mailbox.tsc_khz() else {
        tracing::warn!("no cost breakdown: the guest's TSC rate is unknown");
        return None;
    };
    let ms = |ticks: u64| ticks as f64 / f64::from(khz);
    let (waited, copied) = mailbox.host_times();
    Some(AgentCosts {
        commands: reply.commands,
        wait_ms: waited.as_secs_f64() * 1e3,
        busy_ms: ms(reply.busy_ticks),
        copy_in_ms: ms(reply.copy_in_ticks),
        crypto_ms: ms(reply.crypto_ticks),
        copy_out_ms: ms(reply.copy_out_ticks),
        zero_ms: ms(reply.zero_ticks),
        mailbox_copy_ms: copied.as_secs_f64() * 1e3,
    })
}
