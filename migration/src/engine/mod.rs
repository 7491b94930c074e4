//! The migration engine: pre-copy rounds, convergence, auto-converge
//! throttling, stop-and-copy and the one-way commit, over the traits of
//! [`crate::vm`] and the wire of [`crate::protocol`].
//!
//! # Source ([`send`])
//!
//! 1. Hello with the VM's configuration; wait for HelloAck (or Refuse).
//! 2. Start dirty tracking. Round 0 sends every page of every range.
//! 3. Each further round reads the dirty log and, chunk by chunk (256
//!    pages), clears the dirty bits of the pages it is about to send
//!    *then* reads and sends them, so a write racing the read dirties the
//!    page again for the next round instead of being lost. Only pages
//!    found dirty are cleared. Every round ends with RoundEnd and counts.
//! 4. After each round: bandwidth (smoothed) and dirty rate are measured;
//!    converged when the dirty pages at that bandwidth fit `downtime`.
//!    Rounds that cannot keep up step the vCPU throttle up
//!    ([`ThrottlePolicy`]). Past `timeout`, strategy `Cancel` gives up and
//!    `Ignore` pauses anyway.
//! 5. Pause, send the last dirty pages, `save_state`, State, Complete,
//!    wait for Commit (at most `commit_timeout`).
//!
//! Any failure before Commit: Abort to the destination if it can still
//! hear it, throttle 0, stop dirty tracking, resume the vCPUs if the
//! engine paused them, and return the error: the source keeps its guest.
//! Once Commit is read the source never resumes: [`send`] returns the
//! report and the VMM releases the VM and exits.
//!
//! With a confidential sealer ([`send_with`], protocol version 2) the
//! Hello is followed by the agents' handshake, every round's records end
//! with the agent's sealed round end, the state is sealed, and the
//! decision after Complete is a `Control` record only the agent can judge.
//! On failure the paused guest is resumed only if [`Sealer::may_resume`]
//! (before the agent sealed its Final, or after a valid abort token; the
//! source waits briefly for a token after telling the destination it
//! aborts); otherwise it stays paused and the error is
//! [`MigrationError::Undecided`].
//!
//! # Destination ([`receive`])
//!
//! Hello → build the incoming VM with the VMM's factory (Refuse if it
//! fails) → HelloAck → apply page records, checking that rounds never go
//! backwards and that each RoundEnd's counts match what arrived → State →
//! `restore_state` → Complete (totals must match) → Commit, and the VM is
//! handed back to the VMM to run. On any error the VM is dropped and the
//! error returned; the VMM stays ready for a new attempt.
//!
//! [`receive_with`]'s factory sees the Hello's version and returns the VM
//! with its [`Opener`]: after HelloAck the opener's handshake, after
//! Complete [`Opener::commit`] (its message, e.g. the agent's sealed
//! Commit, goes to the source); on failure before that, the opener's
//! abort token goes out before the Abort.
//!
//! # The sealer seam
//!
//! Everything that turns pages and state into records is behind
//! [`Sealer`] (source) and [`Opener`] (destination); [`send`] and
//! [`receive`] use the plain pair (protocol version 1), [`send_with`] and
//! [`receive_with`] take any. The confidential session replaces only that
//! pair (see [`Sealer`] for the calls and the record accounting).

mod convergence;
mod destination;
mod error;
mod plain;
mod progress;
mod report;
mod rounds;
mod sealer;
mod source;
mod throttle;

pub use destination::{receive, receive_with, Incoming};
pub use error::MigrationError;
pub use plain::{PlainOpener, PlainSealer};
pub use progress::{Milestone, Observer, Phase, Progress, ProgressSnapshot};
pub use report::{AgentCosts, DowntimeBreakdown, MigrationReport, ReceiveReport};
pub use sealer::{Carried, Link, Opener, RecordSink, Sealer};
pub use source::{send, send_with};
pub use throttle::ThrottlePolicy;

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What to do when `timeout` passes before pre-copy converged
/// (Cloud Hypervisor's `timeout_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TimeoutStrategy {
    /// Give up: the source keeps running the guest.
    #[default]
    Cancel,
    /// Pause anyway and finish, whatever the downtime.
    Ignore,
}

/// How the source migrates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOptions {
    /// Downtime target: pause once the rest fits in it (CH's `downtime_ms`,
    /// default 300 ms).
    pub downtime: Duration,
    /// Longest pre-copy (CH's `timeout_s`, default 3600 s).
    pub timeout: Duration,
    /// What to do past `timeout`.
    pub timeout_strategy: TimeoutStrategy,
    /// For [`crate::transport::connect`] (default 10 s).
    pub connect_timeout: Duration,
    /// A read or write making no progress this long means the peer
    /// stalled (default 30 s).
    pub io_timeout: Duration,
    /// Longest wait for Commit after Complete (default 60 s).
    pub commit_timeout: Duration,
    /// How the vCPU throttle grows.
    pub throttle: ThrottlePolicy,
    /// Once the target is met, pre-copy goes on while each round still
    /// shrinks the dirty set by a quarter, until the pause would cost less
    /// than this (default 1 ms) or [`MAX_EXTRA_ROUNDS`] rounds more: at a
    /// dirty rate well below the bandwidth those rounds are short and cut
    /// the downtime far below the target.
    pub downtime_floor: Duration,
    /// A cap on the bytes per second the source writes (at least
    /// [`crate::paced::MIN_BANDWIDTH`]); `None`: as fast as the link goes.
    pub max_bandwidth: Option<u64>,
}

/// Most pre-copy rounds run after the downtime target is already met.
pub const MAX_EXTRA_ROUNDS: u32 = 8;

/// Most times a version-2 source waits for the destination to catch up
/// (`Sync`) before it pauses: the first convergence, then after each of
/// the next rounds.
pub const MAX_SYNCS: u32 = 3;

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            downtime: Duration::from_millis(300),
            timeout: Duration::from_secs(3600),
            timeout_strategy: TimeoutStrategy::Cancel,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            commit_timeout: Duration::from_secs(60),
            throttle: ThrottlePolicy::default(),
            downtime_floor: Duration::from_millis(1),
            max_bandwidth: None,
        }
    }
}

/// How the destination receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// A read or write making no progress this long means the source
    /// stalled (default 30 s).
    pub io_timeout: Duration,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            io_timeout: Duration::from_secs(30),
        }
    }
}
