//! Live progress the VMM reads at any time (for `vm.info`), and the
//! cancellation switch.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Phase {
    /// Not started, or connecting.
    #[default]
    Connecting,
    /// Hello / HelloAck.
    Handshake,
    /// Pre-copy rounds, the guest running.
    PreCopy,
    /// The guest paused: last pages and state.
    StopAndCopy,
    /// Everything sent, waiting for the destination's Commit.
    Completing,
    /// Committed: the destination runs the guest.
    Completed,
    /// Failed (see `error`); the source runs the guest.
    Failed,
}

/// A copy of the progress at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressSnapshot {
    /// Where the migration is.
    pub phase: Phase,
    /// Current round (0 is the full pass).
    pub round: u32,
    /// Frame bytes sent (source) or received (destination) so far.
    pub bytes_transferred: u64,
    /// Pages carried so far, zero pages included.
    pub pages: u64,
    /// Estimated bytes still to send (dirty pages at the last count).
    pub bytes_remaining: u64,
    /// Bytes the guest dirties per second, measured.
    pub dirty_rate_bytes_per_s: u64,
    /// Bytes per second the connection carries, measured and smoothed.
    pub bandwidth_bytes_per_s: u64,
    /// Downtime expected if the guest were paused now.
    pub expected_downtime_ms: u64,
    /// vCPU throttle applied now, in percent.
    pub throttle_percent: u8,
    /// Why the migration failed, once `phase` is `Failed`.
    pub error: Option<String>,
}

/// A step a migration reached, told to the progress's observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    /// The migration entered this phase.
    Phase(Phase),
    /// Pre-copy round `n` started (0 is the full pass, told on entering
    /// [`Phase::PreCopy`]).
    Round(u32),
}

/// Called with each [`Milestone`], on the engine's thread, outside any lock.
pub type Observer = Arc<dyn Fn(Milestone) + Send + Sync>;

#[derive(Default)]
struct Shared {
    snapshot: Mutex<ProgressSnapshot>,
    cancelled: AtomicBool,
    observer: Option<Observer>,
}

/// Shared handle on a migration's progress. Clones see the same state:
/// the engine writes, the VMM reads.
#[derive(Clone, Default)]
pub struct Progress(Arc<Shared>);

impl Progress {
    /// A fresh progress in phase `Connecting`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh progress whose phase changes and new rounds are told to
    /// `observer` (the VMM's event monitor).
    pub fn with_observer(observer: Observer) -> Self {
        Self(Arc::new(Shared {
            observer: Some(observer),
            ..Shared::default()
        }))
    }

    /// The progress now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        self.0.snapshot.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Asks the engine to give up at its next check (between chunks of
    /// pages). Before Commit the source then resumes the guest; after it,
    /// cancelling changes nothing.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether [`Progress::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ProgressSnapshot)) {
        let (before, after) = {
            let mut snapshot = self.0.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
            let before = (snapshot.phase, snapshot.round);
            f(&mut snapshot);
            (before, (snapshot.phase, snapshot.round))
        };
        let Some(observer) = &self.0.observer else { return };
        if after.0 != before.0 {
            observer(Milestone::Phase(after.0));
            if after.0 == Phase::PreCopy {
                observer(Milestone::Round(after.1));
            }
        }
        if after.1 != before.1 && after.0 == Phase::PreCopy {
            observer(Milestone::Round(after.1));
        }
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.update(|s| s.phase = phase);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_observer_hears_each_phase_and_round_once() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        let progress = Progress::with_observer(Arc::new(move |m| sink.lock().unwrap().push(m)));
        progress.set_phase(Phase::Handshake);
        progress.set_phase(Phase::PreCopy);
        progress.update(|p| p.bytes_transferred = 10);
        progress.update(|p| p.round = 1);
        progress.update(|p| p.round = 1);
        progress.update(|p| p.round = 2);
        progress.set_phase(Phase::StopAndCopy);
        progress.set_phase(Phase::StopAndCopy);
        assert_eq!(
            *heard.lock().unwrap(),
            [
                Milestone::Phase(Phase::Handshake),
                Milestone::Phase(Phase::PreCopy),
                Milestone::Round(0),
                Milestone::Round(1),
                Milestone::Round(2),
                Milestone::Phase(Phase::StopAndCopy),
            ]
        );
    }
}
