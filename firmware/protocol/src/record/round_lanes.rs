//! The open round as seen lane by lane, kept alike by the source (what it
//! sealed) and the destination (what it received): pages per lane, which
//! lanes ended the round, and when the round closes (every lane ended it).

use super::MAX_LANES;
use crate::error::{Error, Result};

pub(crate) struct RoundLanes {
    lanes: u16,
    /// Pages of the open round, per lane.
    pages: [u64; MAX_LANES],
    /// Bit `l`: lane `l` ended the open round.
    ended: u64,
}

impl RoundLanes {
    pub(crate) fn new() -> Self {
        RoundLanes {
            lanes: 1,
            pages: [0; MAX_LANES],
            ended: 0,
        }
    }

    /// The lanes (the caller checked the count with its stream).
    pub(crate) fn set_lanes(&mut self, lanes: u16) {
        self.lanes = lanes;
    }

    pub(crate) fn lanes(&self) -> u16 {
        self.lanes
    }

    /// Refuses a memory record or RoundEnd on a lane that already ended
    /// round `epoch`, the open one.
    pub(crate) fn check_open(&self, lane: u16, epoch: u32) -> Result<()> {
        if self.ended & (1 << lane) != 0 {
            return Err(Error::LaneEnded { lane, epoch });
        }
        Ok(())
    }

    /// Counts `pages` more pages on `lane` (a lane the stream has).
    pub(crate) fn add(&mut self, lane: u16, pages: u64) {
        self.pages[usize::from(lane)] += pages;
    }

    /// `lane`'s pages in the open round.
    pub(crate) fn lane_pages(&self, lane: u16) -> u64 {
        self.pages[usize::from(lane)]
    }

    /// Pages of the open round, on all lanes.
    pub(crate) fn pages(&self) -> u64 {
        self.pages.iter().sum()
    }

    /// Nothing happened in the open round yet: no page, no lane ended it.
    pub(crate) fn untouched(&self) -> bool {
        self.pages() == 0 && self.ended == 0
    }

    /// `lane` ended the round. Once every lane did, the round closes:
    /// returns its pages and starts the next one empty.
    pub(crate) fn end(&mut self, lane: u16) -> Option<u64> {
        self.ended |= 1 << lane;
        if self.ended.count_ones() < u32::from(self.lanes) {
            return None;
        }
        let pages = self.pages();
        self.pages = [0; MAX_LANES];
        self.ended = 0;
        Some(pages)
    }
}
