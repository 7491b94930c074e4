//! The `rate=` token bucket `dirty` and `blk` share: a write is due every
//! `ticks_per_write` TSC ticks (0: unthrottled, always due); a CPU that
//! fell behind (a pause, a migration's switch) catches up on at most
//! [`MAX_BACKLOG_MS`] of writes; one ahead sleeps, at least
//! [`MIN_SLEEP_US`] at a time.

/// Least time worth a sleep syscall (each costs tens of emulated ring-0
/// instructions); shorter waits are taken as a burst of writes later.
pub const MIN_SLEEP_US: u64 = 1000;
/// Most backlog a throttled CPU may catch up on, e.g. after a pause.
pub const MAX_BACKLOG_MS: u64 = 100;

pub struct Pace {
    ticks_per_write: u64,
    ticks_per_ms: u64,
    next_write: u64,
}

impl Pace {
    /// A write due every `ticks_per_write` ticks from `now` (0: always).
    pub fn new(tsc_khz: u64, ticks_per_write: u64, now: u64) -> Pace {
        Pace {
            ticks_per_write,
            ticks_per_ms: tsc_khz,
            next_write: now,
        }
    }

    /// Whether writes are paced at all.
    pub fn throttled(&self) -> bool {
        self.ticks_per_write > 0
    }

    /// Whether a write is due at `now`.
    pub fn due(&self, now: u64) -> bool {
        !self.throttled() || now >= self.next_write
    }

    /// A write was made at `now`: the next one is due a period later, or
    /// sooner to catch up on at most the allowed backlog.
    pub fn wrote(&mut self, now: u64) {
        if self.throttled() {
            self.next_write =
                (self.next_write + self.ticks_per_write).max(now.saturating_sub(MAX_BACKLOG_MS * self.ticks_per_ms));
        }
    }

    /// When to wake from `now`, ahead of the budget: the next write, but
    /// not sooner than a sleep is worth.
    pub fn wake_at(&self, now: u64) -> u64 {
        self.next_write.max(now + MIN_SLEEP_US * self.ticks_per_ms / 1000)
    }
}
