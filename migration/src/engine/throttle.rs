//! Auto-converge: slow the vCPUs step by step when pre-copy cannot keep
//! up with the guest, as QEMU's auto-converge does.
//!
//! A dirty round *misses* when the guest dirtied at least half as many
//! pages as the round sent (QEMU's `throttle-trigger-threshold` of 50%):
//! at that rate the remaining set shrinks too slowly, or grows. After
//! `trigger_rounds` misses in a row the throttle starts at
//! `initial_percent`; every further miss adds `step_percent`, up to
//! `max_percent`. A round that keeps up resets the miss count but never
//! lowers the throttle: the guest would only dirty faster again.

use serde::{Deserialize, Serialize};

/// How the throttle grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottlePolicy {
    /// First throttle applied, in percent.
    pub initial_percent: u8,
    /// Added per further missing round, in percent.
    pub step_percent: u8,
    /// Ceiling, in percent (0 disables throttling).
    pub max_percent: u8,
    /// Missing rounds in a row before the first step.
    pub trigger_rounds: u32,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            initial_percent: 20,
            step_percent: 10,
            max_percent: 99,
            trigger_rounds: 2,
        }
    }
}

/// The throttle's state during one migration.
#[derive(Debug, Clone)]
pub(crate) struct AutoConverge {
    policy: ThrottlePolicy,
    current: u8,
    misses: u32,
    max_applied: u8,
}

impl AutoConverge {
    pub(crate) fn new(policy: ThrottlePolicy) -> Self {
        AutoConverge {
            policy,
            current: 0,
            misses: 0,
            max_applied: 0,
        }
    }

    /// Throttle now, in percent.
    #[cfg(test)]
    pub(crate) fn current(&self) -> u8 {
        self.current
    }

    /// Highest throttle applied so far.
    pub(crate) fn max_applied(&self) -> u8 {
        self.max_applied
    }

    /// After a dirty round that did not converge: `dirtied` pages were
    /// written while it sent `sent` pages. Returns the new throttle when
    /// it changes.
    pub(crate) fn after_round(&mut self, dirtied: u64, sent: u64) -> Option<u8> {
        if dirtied * 2 < sent {
            self.misses = 0;
            return None;
        }
        self.misses += 1;
        if self.misses < self.policy.trigger_rounds.max(1) || self.current >= self.policy.max_percent {
            return None;
        }
        let next = if self.current == 0 {
            self.policy.initial_percent
        } else {
            self.current.saturating_add(self.policy.step_percent)
        };
        let next = next.min(self.policy.max_percent).min(99);
        if next == self.current {
            return None;
        }
        self.current = next;
        self.max_applied = self.max_applied.max(next);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_after_two_misses_then_every_miss_up_to_the_cap() {
        let mut t = AutoConverge::new(ThrottlePolicy::default());
        assert_eq!(t.after_round(100, 100), None);
        assert_eq!(t.after_round(100, 100), Some(20));
        assert_eq!(t.after_round(100, 100), Some(30));
        let mut last = 30;
        while let Some(p) = t.after_round(100, 100) {
            assert!(p > last);
            last = p;
        }
        assert_eq!(t.current(), 99);
        assert_eq!(t.max_applied(), 99);
    }

    #[test]
    fn keeping_up_resets_the_count_but_not_the_throttle() {
        let mut t = AutoConverge::new(ThrottlePolicy::default());
        t.after_round(60, 100);
        assert_eq!(t.after_round(10, 100), None);
        assert_eq!(t.after_round(60, 100), None, "the count started over");
        assert_eq!(t.after_round(60, 100), Some(20));
        assert_eq!(t.after_round(1, 100), None);
        assert_eq!(t.current(), 20);
    }

    #[test]
    fn max_zero_disables_throttling() {
        let mut t = AutoConverge::new(ThrottlePolicy {
            max_percent: 0,
            ..Default::default()
        });
        for _ in 0..10 {
            assert_eq!(t.after_round(1000, 1), None);
        }
    }
}
