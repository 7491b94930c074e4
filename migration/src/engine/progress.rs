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

#[derive(Default)]
struct Shared {
    snapshot: Mutex<ProgressSnapshot>,
    cancelled: AtomicBool,
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
        f(&mut self.0.snapshot.lock().unwrap_or_else(PoisonError::into_inner));
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.update(|s| s.phase = phase);
    }
}
