//! A session of several lanes, worked by several of the agent's vCPUs at
//! once (the [`Team`](crate::Team)): sealing at the source
//! ([`export`]), opening at the destination ([`import`]).
//!
//! The session (its sequence numbers, round books and epoch table) is
//! shared under one spin lock, held only to admit and to settle a record;
//! the cipher work, the copies and the page writes run outside it, each
//! worker with its own copy of the stream's cipher. With one lane the
//! agent's own vCPU does everything, as before lanes existed.

pub(crate) mod export;
pub(crate) mod import;

use crate::env::MAX_WORKERS;
use spin::mutex::SpinMutex;

/// Bytes of a batch agent 0 opens alone, every lane in batch order:
/// sixteen page records.
pub(crate) const SOLO_BATCH: usize = 16 * covm_agent_protocol::record::PAGE_RECORD_LEN;

/// The lock the workers share a session under: a spin lock (there is no
/// OS to block in), held only for a record's admission or settlement.
pub(crate) type Lock<T> = SpinMutex<T>;

/// What one worker did in one command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LaneTally {
    pub(crate) records: u64,
    /// Pages sealed or imported, zero runs counted page by page.
    pub(crate) pages: u64,
    pub(crate) zero_pages: u64,
    pub(crate) vcpu_states: u64,
    /// Bytes of output in the worker's part of `FROM_AGENT`.
    pub(crate) out_len: usize,
}

impl LaneTally {
    fn add(&mut self, other: &LaneTally) {
        self.records += other.records;
        self.pages += other.pages;
        self.zero_pages += other.zero_pages;
        self.vcpu_states += other.vcpu_states;
        self.out_len += other.out_len;
    }
}

/// Each worker's tally, written once by that worker.
pub(crate) struct Tallies([Lock<LaneTally>; MAX_WORKERS]);

impl Tallies {
    pub(crate) fn new() -> Self {
        Tallies(core::array::from_fn(|_| Lock::new(LaneTally::default())))
    }

    pub(crate) fn set(&self, worker: usize, tally: LaneTally) {
        *self.0[worker].lock() = tally;
    }

    pub(crate) fn get(&self, worker: usize) -> LaneTally {
        *self.0[worker].lock()
    }

    /// The first `workers` tallies added up.
    pub(crate) fn sum(&self, workers: usize) -> LaneTally {
        let mut total = LaneTally::default();
        for w in 0..workers {
            total.add(&self.get(w));
        }
        total
    }
}
