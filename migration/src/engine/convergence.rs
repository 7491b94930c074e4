//! When to stop pre-copy: measured bandwidth and dirty rate, and the
//! downtime the remaining dirty pages would cost.

use crate::protocol::{HEADER_LEN, MAX_PAGES_PER_FRAME, PAGE_BYTES};
use std::time::Duration;

/// Weight of the newest sample in the smoothed bandwidth: recent rounds
/// matter most (throttling and link changes), but one odd round (a tiny
/// one absorbed by socket buffers) must not swing the decision.
const ALPHA: f64 = 0.5;

/// Shortest elapsed time a round is credited with, so a round of a few
/// pages does not claim an absurd bandwidth.
const MIN_ELAPSED: Duration = Duration::from_micros(200);

/// Wire bytes one dirty page costs: its data, its address and its share
/// of a frame header.
pub(crate) const WIRE_BYTES_PER_PAGE: u64 = (PAGE_BYTES + 8 + HEADER_LEN.div_ceil(MAX_PAGES_PER_FRAME)) as u64;

/// Smoothed measurements of the migration so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Estimator {
    bandwidth: Option<f64>,
    dirty_rate: f64,
}

impl Estimator {
    /// Takes in a finished round (`bytes` sent in `elapsed`) and the
    /// `dirty_pages` found dirty after it, written while it ran.
    pub(crate) fn observe(&mut self, bytes: u64, elapsed: Duration, dirty_pages: u64) {
        let secs = elapsed.max(MIN_ELAPSED).as_secs_f64();
        let sample = bytes as f64 / secs;
        self.bandwidth = Some(match self.bandwidth {
            Some(b) => ALPHA * sample + (1.0 - ALPHA) * b,
            None => sample,
        });
        self.dirty_rate = (dirty_pages * PAGE_BYTES as u64) as f64 / secs;
    }

    /// Bytes per second the connection carried (0 before any round).
    pub(crate) fn bandwidth(&self) -> u64 {
        self.bandwidth.unwrap_or(0.0) as u64
    }

    /// Bytes per second the guest dirtied during the last round.
    pub(crate) fn dirty_rate(&self) -> u64 {
        self.dirty_rate as u64
    }

    /// Time to send `dirty_pages` at the measured bandwidth; unbounded
    /// before any measurement.
    pub(crate) fn expected_downtime(&self, dirty_pages: u64) -> Duration {
        if dirty_pages == 0 {
            return Duration::ZERO;
        }
        match self.bandwidth {
            Some(b) if b > 0.0 => Duration::from_secs_f64((dirty_pages * WIRE_BYTES_PER_PAGE) as f64 / b),
            _ => Duration::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_dirty_always_fits() {
        assert_eq!(Estimator::default().expected_downtime(0), Duration::ZERO);
        assert_eq!(Estimator::default().expected_downtime(1), Duration::MAX);
    }

    #[test]
    fn downtime_is_remaining_over_bandwidth() {
        let mut e = Estimator::default();
        e.observe(100 << 20, Duration::from_secs(1), 256); // 100 MiB/s, 1 MiB dirtied
        assert_eq!(e.bandwidth(), 100 << 20);
        assert_eq!(e.dirty_rate(), 1 << 20);
        let ms = e.expected_downtime(25_600).as_secs_f64() * 1000.0; // 100 MiB + overhead
        assert!((1000.0..1010.0).contains(&ms), "{ms}");
    }

    #[test]
    fn bandwidth_is_smoothed() {
        let mut e = Estimator::default();
        e.observe(100, Duration::from_secs(1), 0);
        e.observe(300, Duration::from_secs(1), 0);
        assert_eq!(e.bandwidth(), 200);
        // A round of a few bytes in no time is not credited as infinite.
        e.observe(4096, Duration::ZERO, 0);
        assert!(e.bandwidth() < 20_000_000);
    }
}
