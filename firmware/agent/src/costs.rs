//! Where the agent's time goes (`COSTS`): commands served, the ticks
//! inside them, and the ticks of each per-page stage. Accounting only:
//! no decision reads it. The clock is the platform's
//! ([`crate::Platform::ticks`]); a platform without one reports zeros.

use crate::env::Platform;
use covm_guest_abi::mailbox::words::CostsReply;

/// A per-page stage (`CostsReply` says what each holds on either side).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    CopyIn,
    Crypto,
    CopyOut,
    Zero,
}

/// The session's counts since `BEGIN`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Costs {
    commands: u64,
    busy: u64,
    copy_in: u64,
    crypto: u64,
    copy_out: u64,
    zero: u64,
}

impl Costs {
    /// One command served in `ticks`.
    pub(crate) fn command(&mut self, ticks: u64) {
        self.commands += 1;
        self.busy = self.busy.saturating_add(ticks);
    }

    /// Adds a command's stage counts (its own commands and busy time are
    /// counted when it ends).
    pub(crate) fn merge(&mut self, other: &Costs) {
        self.copy_in = self.copy_in.saturating_add(other.copy_in);
        self.crypto = self.crypto.saturating_add(other.crypto);
        self.copy_out = self.copy_out.saturating_add(other.copy_out);
        self.zero = self.zero.saturating_add(other.zero);
    }

    fn add(&mut self, stage: Stage, ticks: u64) {
        let slot = match stage {
            Stage::CopyIn => &mut self.copy_in,
            Stage::Crypto => &mut self.crypto,
            Stage::CopyOut => &mut self.copy_out,
            Stage::Zero => &mut self.zero,
        };
        *slot = slot.saturating_add(ticks);
    }

    /// The counts as `COSTS` replies them. The stages ran inside commands,
    /// but the one in progress is not counted there yet: the busy time
    /// reported is at least the stages' sum.
    pub(crate) fn reply(&self) -> CostsReply {
        let mut reply = CostsReply {
            commands: self.commands,
            busy_ticks: self.busy,
            copy_in_ticks: self.copy_in,
            crypto_ticks: self.crypto,
            copy_out_ticks: self.copy_out,
            zero_ticks: self.zero,
        };
        reply.busy_ticks = reply.busy_ticks.max(reply.stage_ticks());
        reply
    }
}

/// Charges the time between marks to stages: one clock read per stage.
pub(crate) struct Laps {
    last: u64,
}

impl Laps {
    /// Starts timing now.
    pub(crate) fn start(platform: &impl Platform) -> Self {
        Laps { last: platform.ticks() }
    }

    /// The time since the last mark was spent in `stage`.
    pub(crate) fn mark(&mut self, platform: &impl Platform, costs: &mut Costs, stage: Stage) {
        let now = platform.ticks();
        costs.add(stage, now.saturating_sub(self.last));
        self.last = now;
    }

    /// Time since the last mark belongs to no stage (checks, bookkeeping).
    pub(crate) fn skip(&mut self, platform: &impl Platform) {
        self.last = platform.ticks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_never_exceed_the_busy_time_reported() {
        let mut costs = Costs::default();
        costs.add(Stage::Crypto, 70);
        costs.add(Stage::CopyIn, 40);
        costs.command(100);
        let reply = costs.reply();
        assert_eq!((reply.commands, reply.busy_ticks), (1, 110));
        costs.command(50);
        let reply = costs.reply();
        assert_eq!(
            (reply.busy_ticks, reply.crypto_ticks, reply.copy_in_ticks),
            (150, 70, 40)
        );
    }
}
