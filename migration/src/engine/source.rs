//! The source side: handshake, pre-copy loop, stop-and-copy, commit, and
//! handing the guest back on failure.

use super::convergence::Estimator;
use super::report::{ms, whole_ms, DowntimeBreakdown, MigrationReport};
use super::rounds::{count_dirty, RoundStats};
use super::sealer::handshake_over;
use super::throttle::AutoConverge;
use super::{MigrationError, Phase, PlainSealer, Progress, Sealer, SendOptions, TimeoutStrategy};
use crate::paced::Paced;
use crate::protocol::{fit_reason, Message, ProtocolError, Wire, PROTOCOL_VERSION_CONFIDENTIAL};
use crate::transport::Stream;
use crate::vm::{SourceVm, PAGE_SIZE};
use std::time::{Duration, Instant};

/// How long a failing source waits to tell the destination it aborts.
const ABORT_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a source whose writes failed looks for the destination's Abort
/// (and how long it waits for an Abort's reason after an abort token).
const PEER_REASON_TIMEOUT: Duration = Duration::from_millis(200);

/// How long a source that may not resume (its session sealed its Final)
/// and told the destination it aborts waits for the destination's abort
/// token, which frees it.
const ABORT_TOKEN_TIMEOUT: Duration = Duration::from_secs(1);

/// Migrates `vm` out over `stream` with plain page records. `config` is
/// the VM's configuration (JSON) the destination builds the VM from.
///
/// `Ok`: the destination committed and runs the guest; the VMM must
/// release the VM and never resume it. `Err`: the guest was handed back
/// (throttle 0, tracking off, resumed if paused) and keeps running here.
/// (With a confidential sealer, [`MigrationError::Undecided`] is the
/// exception: the guest stays paused, see [`send_with`].)
pub fn send(
    stream: Box<dyn Stream>,
    vm: &mut dyn SourceVm,
    config: &[u8],
    options: &SendOptions,
    progress: &Progress,
) -> Result<MigrationReport, MigrationError> {
    send_with(stream, vm, config, &mut PlainSealer::default(), options, progress)
}

/// [`send`] with another [`Sealer`] (the confidential session's). The
/// Hello carries [`Sealer::version`]; after HelloAck the sealer's
/// handshake runs; the destination's answer after Complete goes to
/// [`Sealer::read_decision`]. On failure the paused guest is resumed only
/// if [`Sealer::may_resume`]; otherwise it stays paused and the error is
/// [`MigrationError::Undecided`] (the VMM must neither resume nor drop it
/// on its own: it may be running at the destination).
pub fn send_with(
    stream: Box<dyn Stream>,
    vm: &mut dyn SourceVm,
    config: &[u8],
    sealer: &mut dyn Sealer,
    options: &SendOptions,
    progress: &Progress,
) -> Result<MigrationReport, MigrationError> {
    let stream: Box<dyn Stream> = match options.max_bandwidth {
        Some(bytes_per_s) => Box::new(Paced::new(stream, bytes_per_s)),
        None => stream,
    };
    tracing::info!(peer = %stream.peer(), "migration: sending");
    let mut source = Source {
        wire: Wire::new(stream),
        vm,
        sealer,
        options,
        progress,
        started: Instant::now(),
        tracking: false,
        paused: false,
        throttle: AutoConverge::new(options.throttle),
        estimator: Estimator::default(),
        pages_before_round: 0,
        zero_pages: 0,
        setup: Duration::ZERO,
    };
    match source.run(config) {
        Ok(report) => {
            progress.set_phase(Phase::Completed);
            tracing::info!(report = %report.to_json(), "migration: committed by the destination");
            Ok(report)
        }
        Err(error) => {
            let error = source.peer_reason(error);
            let error = source.hand_back(error);
            if matches!(error, MigrationError::Undecided { .. }) {
                tracing::error!(%error, "migration failed; the guest stays paused here");
            } else {
                tracing::error!(%error, "migration failed; the guest keeps running here");
            }
            progress.update(|p| {
                p.phase = Phase::Failed;
                p.error = Some(error.to_string());
                p.throttle_percent = 0;
            });
            Err(error)
        }
    }
}

/// The source's state during one migration.
pub(super) struct Source<'a> {
    pub(super) wire: Wire<Box<dyn Stream>>,
    pub(super) vm: &'a mut dyn SourceVm,
    pub(super) sealer: &'a mut dyn Sealer,
    pub(super) options: &'a SendOptions,
    pub(super) progress: &'a Progress,
    started: Instant,
    tracking: bool,
    paused: bool,
    throttle: AutoConverge,
    estimator: Estimator,
    /// Pages of the rounds already ended.
    pub(super) pages_before_round: u64,
    /// Zero pages of the rounds already ended.
    pub(super) zero_pages: u64,
    /// From the start to the first page: Hello, the destination building
    /// its VM, the sealer's handshake.
    setup: Duration,
}

impl Source<'_> {
    pub(super) fn past_deadline(&self) -> bool {
        self.started
            .checked_add(self.options.timeout)
            .is_some_and(|d| Instant::now() >= d)
    }

    fn set_io_timeout(&self, timeout: Duration) -> Result<(), MigrationError> {
        self.wire
            .stream()
            .set_io_timeout(Some(timeout))
            .map_err(MigrationError::Timeouts)
    }

    fn run(&mut self, config: &[u8]) -> Result<MigrationReport, MigrationError> {
        self.check_ranges()?;
        self.progress.set_phase(Phase::Handshake);
        self.set_io_timeout(self.options.io_timeout)?;
        // The Hello's version is the connection's: the wire takes it.
        self.wire.send_now(&Message::Hello {
            version: self.sealer.version(),
            config: config.to_vec(),
        })?;
        match self.wire.receive()? {
            Message::HelloAck => {}
            Message::Refuse { reason } => return Err(MigrationError::Refused { reason }),
            Message::Abort { reason } => return Err(MigrationError::PeerAborted { reason }),
            other => {
                return Err(MigrationError::Unexpected {
                    got: other.kind(),
                    during: "waiting for HelloAck",
                })
            }
        }
        let sealer = &mut *self.sealer;
        handshake_over(&mut self.wire, |link| sealer.handshake(link))?;
        self.setup = self.started.elapsed();
        self.vm
            .start_dirty_tracking()
            .map_err(MigrationError::vm("start dirty tracking"))?;
        self.tracking = true;
        self.progress.set_phase(Phase::PreCopy);
        let (rounds_before_pause, converged) = self.precopy()?;
        self.stop_and_copy(rounds_before_pause, converged)
    }

    /// The page ranges must be whole pages, or the last bytes would be lost.
    fn check_ranges(&self) -> Result<(), MigrationError> {
        for (start, len) in self.vm.memory_ranges() {
            if start % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
                return Err(MigrationError::vm("list memory ranges")(
                    crate::vm::VmOpError::PartialPages { start, len },
                ));
            }
        }
        Ok(())
    }

    /// Rounds until converged (or past the deadline with Ignore). Returns
    /// the number of rounds sent and whether it converged.
    fn precopy(&mut self) -> Result<(u32, bool), MigrationError> {
        let mut last = self.full_round()?;
        let mut round = 0;
        // Dirty pages found after the previous round, and rounds run since
        // the target was met.
        let (mut previous, mut extra): (Option<u64>, u32) = (None, 0);
        // Version 2 waits for the destination to catch up before it pauses
        // (protocol doc, `Sync`), and again after each round that follows,
        // at most MAX_SYNCS times; `synced` is then true and the dirty log
        // is read again without a new round to observe.
        let mut syncs_left = if self.sealer.version() == PROTOCOL_VERSION_CONFIDENTIAL {
            super::MAX_SYNCS
        } else {
            0
        };
        let (mut sync_due, mut synced) = (syncs_left > 0, false);
        loop {
            let bitmaps = self
                .vm
                .dirty_pages()
                .map_err(MigrationError::vm("read the dirty log"))?;
            let dirty = count_dirty(&bitmaps);
            let just_synced = std::mem::take(&mut synced);
            if !just_synced {
                self.estimator.observe(last.wire_bytes, last.elapsed, dirty);
            }
            let expected = self.estimator.expected_downtime(dirty);
            self.publish(round, dirty, expected);
            tracing::debug!(round, dirty, expected_ms = expected.as_millis() as u64, "pre-copy");
            let target_met = expected <= self.options.downtime;
            if target_met {
                let polish = Polish {
                    dirty,
                    previous,
                    just_synced,
                    expected,
                    floor: self.options.downtime_floor,
                    extra,
                };
                if !polish.another_round() {
                    if std::mem::take(&mut sync_due) {
                        self.sync(round)?;
                        syncs_left -= 1;
                        synced = true;
                        continue;
                    }
                    return Ok((round + 1, true));
                }
                extra += 1;
            }
            if self.progress.is_cancelled() {
                return Err(MigrationError::Cancelled);
            }
            if self.past_deadline() {
                match self.options.timeout_strategy {
                    TimeoutStrategy::Cancel => return Err(MigrationError::TimedOut(self.options.timeout)),
                    TimeoutStrategy::Ignore => {
                        tracing::warn!(round, "migration timeout passed: pausing anyway (strategy Ignore)");
                        return Ok((round + 1, false));
                    }
                }
            }
            // Rounds past the target only polish: no reason to slow the guest.
            if round > 0 && !target_met {
                self.maybe_throttle(dirty, &last)?;
            }
            previous = Some(dirty);
            round += 1;
            last = self.dirty_round(round, &bitmaps, true)?;
            sync_due = syncs_left > 0;
        }
    }

    /// Sends `Sync{round}` and waits for the destination's `Synced`.
    fn sync(&mut self, round: u32) -> Result<(), MigrationError> {
        let started = Instant::now();
        self.wire.send_now(&Message::Sync { round })?;
        match self.wire.receive()? {
            Message::Synced { round: r } if r == round => {}
            Message::Abort { reason } => return Err(MigrationError::PeerAborted { reason }),
            // A destination that refused something sends its abort token
            // (then its reason) without waiting for the Sync.
            decision @ Message::Control { .. } => {
                return match self.decide(decision) {
                    Err(e) => Err(e),
                    Ok(()) => Err(MigrationError::stream(
                        "the destination sent a Commit before the pause (answering Sync)",
                    )),
                }
            }
            Message::Synced { round: r } => {
                return Err(MigrationError::stream(format!(
                    "the destination answered Sync {round} with Synced {r}"
                )))
            }
            other => {
                return Err(MigrationError::Unexpected {
                    got: other.kind(),
                    during: "waiting for the destination to catch up (Synced)",
                })
            }
        }
        tracing::debug!(round, waited_ms = ms(started.elapsed()), "destination caught up");
        Ok(())
    }

    fn maybe_throttle(&mut self, dirty: u64, last: &RoundStats) -> Result<(), MigrationError> {
        if let Some(percent) = self.throttle.after_round(dirty, last.pages) {
            tracing::info!(percent, "pre-copy does not keep up: throttling the vCPUs");
            self.vm
                .set_throttle(percent)
                .map_err(MigrationError::vm("throttle the vCPUs"))?;
            self.progress.update(|p| p.throttle_percent = percent);
        }
        Ok(())
    }

    fn publish(&self, round: u32, dirty: u64, expected: Duration) {
        let (bandwidth, rate) = (self.estimator.bandwidth(), self.estimator.dirty_rate());
        self.progress.update(|p| {
            p.round = round;
            p.bytes_remaining = dirty * PAGE_SIZE;
            p.bandwidth_bytes_per_s = bandwidth;
            p.dirty_rate_bytes_per_s = rate;
            p.expected_downtime_ms = expected.as_millis().min(u64::MAX as u128) as u64;
        });
    }

    fn stop_and_copy(&mut self, rounds: u32, converged: bool) -> Result<MigrationReport, MigrationError> {
        self.progress.set_phase(Phase::StopAndCopy);
        let paused_at = Instant::now();
        self.vm.pause().map_err(MigrationError::vm("pause the vCPUs"))?;
        self.paused = true;
        let bitmaps = self
            .vm
            .dirty_pages()
            .map_err(MigrationError::vm("read the dirty log"))?;
        let last = self.dirty_round(rounds, &bitmaps, false)?;
        let pages_done = Instant::now();
        let state = self.vm.save_state().map_err(MigrationError::vm("save the VM state"))?;
        let state_bytes = state.len() as u64;
        let wire = &mut self.wire;
        self.sealer.seal_state(state, &mut |m: &Message| wire.send(m))?;
        let saved = Instant::now();
        let rounds = rounds + 1;
        self.wire.send_now(&Message::Complete {
            pages: self.pages_before_round,
            rounds,
        })?;
        let sent = Instant::now();
        self.progress.set_phase(Phase::Completing);
        self.set_io_timeout(self.options.commit_timeout)?;
        match self.wire.receive() {
            Ok(Message::Abort { reason }) => return Err(MigrationError::PeerAborted { reason }),
            Ok(decision) => self.decide(decision)?,
            Err(ProtocolError::Stalled { .. }) => {
                return Err(MigrationError::CommitTimeout(self.options.commit_timeout))
            }
            Err(e) => return Err(e.into()),
        }
        // Committed: from here on the guest belongs to the destination.
        let committed = Instant::now();
        let total = self.started.elapsed();
        Ok(MigrationReport {
            total_ms: ms(total),
            setup_ms: ms(self.setup),
            downtime_ms: ms(committed - paused_at),
            downtime: DowntimeBreakdown {
                final_pages_ms: ms(pages_done - paused_at),
                state_save_ms: ms(saved - pages_done),
                state_transfer_ms: ms(sent - saved),
                restore_and_commit_ms: ms(committed - sent),
            },
            bytes_sent: self.wire.bytes_sent(),
            pages_sent: self.pages_before_round - self.zero_pages,
            zero_pages: self.zero_pages,
            rounds,
            final_round_pages: last.pages,
            state_bytes,
            max_throttle_percent: self.throttle.max_applied(),
            throughput_bytes_per_s: (self.wire.bytes_sent() as f64 / total.as_secs_f64().max(1e-6)) as u64,
            converged,
            crypto_ms: whole_ms(self.sealer.crypto_time()),
            wire_ms: ms(self.wire.io_time()),
            agent: self.sealer.agent_costs(),
        })
    }

    /// Hands the destination's decision (its Commit, or a confidential
    /// `Control`) to the sealer. A valid abort (`PeerAborted`) is followed
    /// at once by the destination's plain Abort: its reason is added if it
    /// arrives quickly.
    fn decide(&mut self, decision: Message) -> Result<(), MigrationError> {
        match self.sealer.read_decision(decision) {
            Err(MigrationError::PeerAborted { reason }) => {
                let _ = self.wire.stream().set_io_timeout(Some(PEER_REASON_TIMEOUT));
                let reason = match self.wire.receive() {
                    Ok(Message::Abort { reason: theirs }) => format!("{theirs} ({reason})"),
                    _ => reason,
                };
                Err(MigrationError::PeerAborted { reason })
            }
            other => other,
        }
    }

    /// A write failed: the destination may have said why before it
    /// closed (an Abort waiting in our receive buffer, after its abort
    /// token in version 2). Best effort.
    fn peer_reason(&mut self, error: MigrationError) -> MigrationError {
        if !matches!(
            error,
            MigrationError::Protocol(ProtocolError::Io { .. } | ProtocolError::Stalled { .. })
        ) {
            return error;
        }
        let _ = self.wire.stream().set_io_timeout(Some(PEER_REASON_TIMEOUT));
        match self.wire.receive() {
            Ok(Message::Abort { reason }) => MigrationError::PeerAborted { reason },
            Ok(decision @ Message::Control { .. }) => match self.decide(decision) {
                Err(aborted @ MigrationError::PeerAborted { .. }) => aborted,
                Ok(()) => {
                    tracing::error!(%error, "the destination committed although a write failed here");
                    error
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the destination's control record was not valid");
                    error
                }
            },
            _ => error,
        }
    }

    /// After a failure before Commit: tell the destination, lift the
    /// throttle, stop tracking, and run the guest again if we paused it,
    /// unless the sealer forbids it (then [`MigrationError::Undecided`]
    /// wraps `error`). Every step is tried even if an earlier one fails.
    fn hand_back(&mut self, error: MigrationError) -> MigrationError {
        let mut told = false;
        if !error.peer_knows() {
            let _ = self.wire.stream().set_io_timeout(Some(ABORT_WRITE_TIMEOUT));
            let abort = Message::Abort {
                reason: fit_reason(&error.to_string()),
            };
            match self.wire.send_now(&abort) {
                Ok(()) => told = true,
                Err(e) => tracing::debug!(error = %e, "could not send Abort to the destination"),
            }
        }
        if let Err(e) = self.vm.set_throttle(0) {
            tracing::error!(error = %e, "cannot lift the vCPU throttle after a failed migration");
        }
        if self.tracking {
            if let Err(e) = self.vm.stop_dirty_tracking() {
                tracing::error!(error = %e, "cannot stop dirty tracking after a failed migration");
            }
        }
        if !self.paused {
            return error;
        }
        // A destination that has not committed answers our Abort with its
        // abort token (version 2), which lets the sealer resume.
        let may_resume = self.sealer.may_resume() || (told && self.look_for_abort_token());
        if !may_resume {
            tracing::error!(
                %error,
                "the migration session sealed its final record and no Commit or valid abort token was read: \
                 the guest stays paused (it may be running at the destination)"
            );
            return MigrationError::Undecided { error: Box::new(error) };
        }
        match self.vm.resume() {
            Ok(()) => self.paused = false,
            Err(e) => tracing::error!(error = %e, "cannot resume the guest after a failed migration"),
        }
        error
    }

    /// Reads the destination's messages for a while, handing its
    /// `Control` records to the sealer, until the sealer may resume.
    fn look_for_abort_token(&mut self) -> bool {
        let deadline = Instant::now() + ABORT_TOKEN_TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            let _ = self.wire.stream().set_io_timeout(Some(left));
            match self.wire.receive() {
                Ok(decision @ Message::Control { .. }) => match self.sealer.read_decision(decision) {
                    Ok(()) => {
                        tracing::error!("the destination committed after this source gave up: the guest is theirs");
                        return false;
                    }
                    Err(MigrationError::PeerAborted { reason }) => {
                        tracing::info!(%reason, "the destination answered the Abort with its abort token");
                        return self.sealer.may_resume();
                    }
                    Err(e) => tracing::warn!(error = %e, "the destination's control record was not valid"),
                },
                Ok(other) => tracing::debug!(kind = %other.kind(), "ignored while waiting for an abort token"),
                Err(_) => break,
            }
        }
        self.sealer.may_resume()
    }
}

/// Where pre-copy stands once the downtime target is met: it polishes
/// with more rounds while they pay off, then (after a `Sync` if one is
/// due) pauses.
struct Polish {
    /// Dirty pages now.
    dirty: u64,
    /// Dirty pages found after the round before (None after round 0).
    previous: Option<u64>,
    /// Whether the dirty log was read again right after a `Sync`.
    just_synced: bool,
    /// The downtime a pause now is expected to cost.
    expected: Duration,
    /// Below this a pause is cheap enough ([`SendOptions::downtime_floor`]).
    floor: Duration,
    /// Rounds run since the target was met.
    extra: u32,
}

impl Polish {
    /// Whether one more round beats pausing now: the pause still costs
    /// more than the floor, rounds still shrink the dirty set by a quarter,
    /// and fewer than [`super::MAX_EXTRA_ROUNDS`] ran. Right after a `Sync`
    /// the dirty set holds what the guest wrote while the source waited: it
    /// says nothing about convergence, so it counts as shrinking (pausing on
    /// it made the final round several times larger than the rounds before
    /// it).
    fn another_round(&self) -> bool {
        let shrinking = self.just_synced || self.previous.is_none_or(|p| self.dirty * 4 < p * 3);
        self.expected > self.floor && shrinking && self.extra < super::MAX_EXTRA_ROUNDS
    }
}

#[cfg(test)]
mod tests {
    use super::Polish;
    use crate::engine::MAX_EXTRA_ROUNDS;
    use std::time::Duration;

    fn polish(dirty: u64, previous: Option<u64>, just_synced: bool, expected_ms: u64, extra: u32) -> bool {
        Polish {
            dirty,
            previous,
            just_synced,
            expected: Duration::from_millis(expected_ms),
            floor: Duration::from_millis(1),
            extra,
        }
        .another_round()
    }

    #[test]
    fn rounds_continue_while_they_shrink_the_dirty_set() {
        assert!(polish(100, None, false, 5, 0));
        assert!(polish(74, Some(100), false, 5, 1));
        // Not a quarter smaller: pause.
        assert!(!polish(75, Some(100), false, 5, 1));
        // Cheap enough already, or out of extra rounds: pause.
        assert!(!polish(10, Some(100), false, 1, 1));
        assert!(!polish(10, Some(100), false, 5, MAX_EXTRA_ROUNDS));
    }

    /// The dirty set grew while the source waited for `Synced`: that is
    /// not a failure to converge, so one more round sends it before the
    /// pause, unless the pause is cheap already or the rounds ran out.
    #[test]
    fn a_set_grown_during_a_sync_gets_one_more_round() {
        assert!(!polish(327, Some(100), false, 5, 2));
        assert!(polish(327, Some(100), true, 5, 2));
        assert!(!polish(327, Some(100), true, 1, 2));
        assert!(!polish(327, Some(100), true, 5, MAX_EXTRA_ROUNDS));
    }
}
