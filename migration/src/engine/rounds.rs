//! One pre-copy round on the source: walk the pages, clear, read, send.

use super::source::Source;
use super::{MigrationError, TimeoutStrategy};
use crate::protocol::Message;
use crate::vm::{DirtyBitmap, PAGE_SIZE};
use std::time::{Duration, Instant};

/// What a round sent, for RoundEnd and the estimates.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RoundStats {
    /// Pages, zero pages included.
    pub pages: u64,
    /// Zero pages.
    pub zero_pages: u64,
    /// Payload bytes of the page records.
    pub bytes: u64,
    /// Frame bytes the round put on the wire.
    pub wire_bytes: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Pages of a bitmap that lie inside its range.
fn range_pages(bitmap: &DirtyBitmap) -> u64 {
    bitmap.range.1 / PAGE_SIZE
}

fn bit(bits: &[u64], page: u64) -> bool {
    bits.get((page / 64) as usize)
        .is_some_and(|w| w & (1 << (page % 64)) != 0)
}

/// Dirty pages in `bitmaps`, ignoring bits past each range's end.
pub(super) fn count_dirty(bitmaps: &[DirtyBitmap]) -> u64 {
    let mut total = 0;
    for b in bitmaps {
        let pages = range_pages(b);
        for (i, w) in b.bits.iter().enumerate() {
            let first = i as u64 * 64;
            if first >= pages {
                break;
            }
            let valid = pages - first;
            let w = if valid < 64 { w & ((1u64 << valid) - 1) } else { *w };
            total += u64::from(w.count_ones());
        }
    }
    total
}

/// Pages of `runs`.
fn run_pages(runs: &[(u64, u64)]) -> u64 {
    runs.iter().map(|r| r.1).sum()
}

/// Appends the runs of set bits among pages `from..to` as (first, count).
pub(super) fn dirty_runs(bits: &[u64], from: u64, to: u64, runs: &mut Vec<(u64, u64)>) {
    let mut page = from;
    while page < to {
        // Skip clean words quickly.
        if page % 64 == 0 && bits.get((page / 64) as usize).is_none_or(|w| *w == 0) {
            page += 64;
            continue;
        }
        if !bit(bits, page) {
            page += 1;
            continue;
        }
        let start = page;
        while page < to && bit(bits, page) {
            page += 1;
        }
        runs.push((start, page - start));
    }
}

impl Source<'_> {
    /// Round 0: every page of every range.
    pub(super) fn full_round(&mut self) -> Result<RoundStats, MigrationError> {
        let started = (Instant::now(), self.wire.bytes_sent());
        let mut stats = RoundStats::default();
        let chunk = self.sealer.full_round_chunk();
        for (base, len) in self.vm.memory_ranges() {
            let pages = len / PAGE_SIZE;
            let mut first = 0;
            while first < pages {
                let n = chunk.min(pages - first);
                let gpa = base + first * PAGE_SIZE;
                self.vm
                    .clear_dirty(gpa, n)
                    .map_err(MigrationError::vm("clear the dirty log"))?;
                self.export_runs(0, &[(gpa, n)], &mut stats)?;
                self.between_chunks(&stats, true)?;
                first += n;
            }
        }
        self.end_round(0, stats, started)
    }

    /// A round of the pages dirty in `bitmaps`. `precopy` rounds stop at
    /// the deadline (strategy Cancel); the final round does not.
    pub(super) fn dirty_round(
        &mut self,
        round: u32,
        bitmaps: &[DirtyBitmap],
        precopy: bool,
    ) -> Result<RoundStats, MigrationError> {
        let started = (Instant::now(), self.wire.bytes_sent());
        let mut stats = RoundStats::default();
        let mut runs = Vec::new();
        // Runs of several chunks go to the sealer together, up to a
        // chunk's worth of pages: a sparse round (a paused final round of
        // a few hundred pages spread over the guest) is then one agent
        // call instead of one per 32 MiB holding a dirty page, and each
        // call is a round trip through the agent's vCPU.
        let mut pending: Vec<(u64, u64)> = Vec::new();
        let chunk = self.sealer.chunk_pages();
        for bitmap in bitmaps {
            let (base, pages) = (bitmap.range.0, range_pages(bitmap));
            let mut first = 0;
            while first < pages {
                let end = (first + chunk).min(pages);
                runs.clear();
                dirty_runs(&bitmap.bits, first, end, &mut runs);
                first = end;
                if runs.is_empty() {
                    continue;
                }
                let found = run_pages(&runs);
                if run_pages(&pending) + found > chunk {
                    self.export_runs(round, &pending, &mut stats)?;
                    pending.clear();
                    self.between_chunks(&stats, precopy)?;
                }
                // Clear first, then read: a write after the clear is
                // caught by the next round.
                for run in runs.iter_mut() {
                    run.0 = base + run.0 * PAGE_SIZE;
                    self.vm
                        .clear_dirty(run.0, run.1)
                        .map_err(MigrationError::vm("clear the dirty log"))?;
                }
                pending.extend_from_slice(&runs);
            }
        }
        if !pending.is_empty() {
            self.export_runs(round, &pending, &mut stats)?;
            self.between_chunks(&stats, precopy)?;
        }
        self.end_round(round, stats, started)
    }

    /// Exports the runs `(gpa, count)` of one chunk.
    fn export_runs(&mut self, round: u32, runs: &[(u64, u64)], stats: &mut RoundStats) -> Result<(), MigrationError> {
        let wire = &mut self.wire;
        let mut bytes = 0;
        let carried = self.sealer.seal_runs(&*self.vm, round, runs, &mut |m: &Message| {
            bytes += m.payload_len() as u64;
            wire.send(m)
        })?;
        stats.pages += carried.pages;
        stats.zero_pages += carried.zero_pages;
        stats.bytes += bytes;
        Ok(())
    }

    /// Cancellation, the Cancel deadline, and progress, between chunks.
    fn between_chunks(&mut self, stats: &RoundStats, precopy: bool) -> Result<(), MigrationError> {
        if self.progress.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        if precopy && self.options.timeout_strategy == TimeoutStrategy::Cancel && self.past_deadline() {
            return Err(MigrationError::TimedOut(self.options.timeout));
        }
        let (sent, pages) = (self.wire.bytes_sent(), self.pages_before_round + stats.pages);
        self.progress.update(|p| {
            p.bytes_transferred = sent;
            p.pages = pages;
        });
        Ok(())
    }

    fn end_round(
        &mut self,
        round: u32,
        mut stats: RoundStats,
        (started, sent_before): (Instant, u64),
    ) -> Result<RoundStats, MigrationError> {
        // The sealer's own end of round (confidential: the agent's sealed
        // RoundEnd record): its frames count in the round's bytes, as the
        // destination counts every record frame its opener claims.
        let wire = &mut self.wire;
        let mut bytes = 0;
        self.sealer.end_round(round, &mut |m: &Message| {
            bytes += m.payload_len() as u64;
            wire.send(m)
        })?;
        stats.bytes += bytes;
        let end = Message::RoundEnd {
            round,
            pages: stats.pages,
            zero_pages: stats.zero_pages,
            bytes: stats.bytes,
        };
        self.wire.send_now(&end)?;
        stats.elapsed = started.elapsed();
        stats.wire_bytes = self.wire.bytes_sent() - sent_before;
        self.pages_before_round += stats.pages;
        self.zero_pages += stats.zero_pages;
        tracing::debug!(
            round,
            pages = stats.pages,
            zero = stats.zero_pages,
            ms = stats.elapsed.as_millis() as u64,
            "round sent"
        );
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_counts_respect_the_range() {
        let bits = vec![0b1110_0110u64, 0, 1 | (1 << 63)];
        let mut runs = Vec::new();
        dirty_runs(&bits, 0, 192, &mut runs);
        assert_eq!(runs, vec![(1, 2), (5, 3), (128, 1), (191, 1)]);
        runs.clear();
        dirty_runs(&bits, 6, 130, &mut runs);
        assert_eq!(runs, vec![(6, 2), (128, 1)]);
        let b = DirtyBitmap {
            range: (0, 130 * PAGE_SIZE),
            bits,
        };
        assert_eq!(count_dirty(std::slice::from_ref(&b)), 6, "bit 191 is past the range");
        // A short bitmap counts as clean, never out of bounds.
        runs.clear();
        dirty_runs(&[u64::MAX], 0, 200, &mut runs);
        assert_eq!(runs, vec![(0, 64)]);
    }
}
