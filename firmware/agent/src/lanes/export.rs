//! `EXPORT_PAGES` and `EXPORT_LIST` on several lanes: every worker of the
//! [`Team`] seals on its own lane, into its own part of `FROM_AGENT`.
//!
//! The workers take chunks of the request in address order from one
//! shared [`Plan`], under the lock that also guards the session, and each
//! takes one only while its part of the output is sure to hold the whole
//! chunk. So every chunk taken is sealed in full, and the pages walked are
//! always a prefix of the request: the host asks again from where the
//! plan stopped, as with one lane, and round 0 still covers every private
//! page (the plan checks the cursor chunk by chunk). A whole run of
//! blocks nothing wrote since launch is one chunk, sealed as one ZeroPages
//! record, as an idle guest's memory mostly is.
//!
//! Each worker admits its records under the lock and seals them outside
//! it, with its own copy of the stream's cipher. Once every worker has
//! returned, worker 0 moves the parts together: the output is one batch,
//! the lanes interleaved by part.

use super::{LaneTally, Lock, Tallies};
use crate::env::{known_zero_block_at, GuestMemory, Team};
use crate::export::{head, page_range, u64_le, LIST_ENTRY_LEN, ROOM_PER_PAGE};
use crate::mailbox::{self, Output};
use crate::memmap::MemoryMap;
use crate::reply::{fail, Fail};
use covm_agent_protocol::record::{COUNT_RECORD_LEN, HEADER_LEN, PAGE_RECORD_LEN};
use covm_agent_protocol::{RecordCipher, SourceSession, PAGE_SIZE};
use covm_guest_abi::mailbox::{status, FROM_AGENT, FROM_AGENT_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;

/// What an export command asks for: one range, or the list in `TO_AGENT`.
#[derive(Clone, Copy)]
pub(crate) enum Request {
    /// `EXPORT_PAGES`: the pages `first..end`.
    Range(u64, u64),
    /// `EXPORT_LIST`: this many entries (checked against the mailbox).
    List(u64),
}

/// Frames a request may cover and still be sealed on lane 0 alone.
const SOLO_FRAMES: u64 = 256;
/// List entries such a request may have.
const SOLO_ENTRIES: u64 = 64;

impl Request {
    /// Whether the request covers at most [`SOLO_FRAMES`] frames (a list
    /// read from `TO_AGENT` for it; the plan reads and checks it again).
    fn is_small(self, mem: &impl GuestMemory) -> bool {
        match self {
            Request::Range(first, end) => (end - first) / PAGE <= SOLO_FRAMES,
            Request::List(entries) if entries <= SOLO_ENTRIES => {
                let mut frames = 0u64;
                for i in 0..entries {
                    let mut raw = [0u8; LIST_ENTRY_LEN];
                    mailbox::read_input(mem, (i * LIST_ENTRY_LEN as u64) as usize, &mut raw);
                    frames = frames.saturating_add(u64_le(&raw[8..]));
                }
                frames <= SOLO_FRAMES
            }
            Request::List(_) => false,
        }
    }
}

/// Where the workers take their next chunk from. Lives under the lock.
struct Plan {
    request: Request,
    /// The entry being walked.
    entry: u64,
    /// Its range, once read (a list entry is read from `TO_AGENT` once,
    /// when the plan reaches it).
    range: Option<(u64, u64)>,
    /// The next address of it to hand out.
    at: u64,
    /// Round 0: the next private page to seal (`None`: all sealed).
    cursor: Option<u64>,
    round0: bool,
}

impl Plan {
    /// The current entry's range, read and checked when first reached;
    /// `None` past the last entry.
    fn range(&mut self, mem: &impl GuestMemory) -> Result<Option<(u64, u64)>, Fail> {
        if let Some(range) = self.range {
            return Ok(Some(range));
        }
        let range = match self.request {
            Request::Range(first, end) if self.entry == 0 => (first, end),
            Request::Range(..) => return Ok(None),
            Request::List(entries) if self.entry < entries => {
                let mut raw = [0u8; LIST_ENTRY_LEN];
                mailbox::read_input(mem, (self.entry * LIST_ENTRY_LEN as u64) as usize, &mut raw);
                let (first, count) = (u64_le(&raw[..8]), u64_le(&raw[8..]));
                if count == 0 {
                    return Err(fail!(
                        status::BAD_COMMAND,
                        "EXPORT_LIST: entry {} has no pages",
                        self.entry
                    ));
                }
                page_range("EXPORT_LIST", first, count)?
            }
            Request::List(_) => return Ok(None),
        };
        self.range = Some(range);
        self.at = range.0;
        Ok(Some(range))
    }

    /// The next chunk, `None` once the request is all handed out: a run
    /// of known-zero blocks wholly private, else up to `frames` frames,
    /// never past a block's end (so that the next chunk starts where a
    /// block may be known zero).
    fn next(&mut self, mem: &impl GuestMemory, map: &MemoryMap, frames: u64) -> Result<Option<(u64, u64)>, Fail> {
        let end = loop {
            match self.range(mem)? {
                None => return Ok(None),
                Some((_, end)) if self.at >= end => {
                    self.entry += 1;
                    self.range = None;
                }
                Some((_, end)) => break end,
            }
        };
        let start = self.at;
        let block = mem.known_zero_block().max(1);
        // Only a wholly private block is asked about (the agent window
        // and the pages outside the map are never read).
        let zero_block = |at: u64| {
            if map.contains(at, block) {
                known_zero_block_at(mem, at, end)
            } else {
                None
            }
        };
        let stop = match zero_block(start) {
            Some(block) => {
                let mut stop = start + block * PAGE;
                while let Some(block) = zero_block(stop) {
                    stop += block * PAGE;
                }
                stop
            }
            None => {
                let block_end = (start / (block * PAGE)).saturating_add(1).saturating_mul(block * PAGE);
                start.saturating_add(frames * PAGE).min(end).min(block_end)
            }
        };
        if self.round0 {
            if let Some(p) = map.next_private(start).filter(|&p| p < stop) {
                match self.cursor {
                    Some(next) if next == p => {}
                    Some(next) => {
                        return Err(fail!(
                            status::REFUSED,
                            "round 0 must cover every private page in ascending order: asked for {p:#x}, the next \
                             one is {next:#x}"
                        ))
                    }
                    None => {
                        return Err(fail!(
                            status::REFUSED,
                            "round 0 already covered every private page; {p:#x} asked for again"
                        ))
                    }
                }
                self.cursor = map.next_private(stop);
            }
        }
        self.at = stop;
        Ok(Some((start, stop)))
    }

    /// How far the request was handed out: entries done, and frames of
    /// the next.
    fn progress(&self) -> (u64, u64) {
        match self.range {
            Some((_, end)) if self.at >= end => (self.entry + 1, 0),
            Some((first, _)) => (self.entry, (self.at - first) / PAGE),
            None => (self.entry, 0),
        }
    }
}

/// What the workers share: the session and the plan, under one lock.
struct Shared<'x> {
    session: &'x mut SourceSession,
    plan: Plan,
    /// The first failure; every worker stops at its next chunk.
    failed: Option<Fail>,
}

/// One worker's lane: its output part, its pending zero run, its counts.
struct Lane {
    lane: u16,
    out: Output,
    zero_run: Option<(u64, u64)>,
    tally: LaneTally,
}

impl Lane {
    fn seal_zero_run(
        &mut self,
        shared: &Lock<Shared>,
        mem: &impl GuestMemory,
        cipher: &RecordCipher,
    ) -> Result<(), Fail> {
        let Some((gpa, count)) = self.zero_run.take() else {
            return Ok(());
        };
        let ticket = shared
            .lock()
            .session
            .admit_zero_pages(self.lane, gpa, count)
            .map_err(|e| fail!(status::REFUSED, "sealing zero pages at {gpa:#x}: {e}"))?;
        let mut record = [0u8; COUNT_RECORD_LEN];
        ticket
            .seal(cipher, &mut record)
            .map_err(|e| fail!(status::REFUSED, "sealing zero pages at {gpa:#x}: {e}"))?;
        self.tally.records += 1;
        self.out.put(mem, &record)
    }

    fn zero_pages(
        &mut self,
        shared: &Lock<Shared>,
        mem: &impl GuestMemory,
        cipher: &RecordCipher,
        (gpa, count): (u64, u64),
    ) -> Result<(), Fail> {
        self.tally.pages += count;
        self.tally.zero_pages += count;
        match &mut self.zero_run {
            Some((start, n)) if *start + *n * PAGE == gpa => *n += count,
            _ => {
                self.seal_zero_run(shared, mem, cipher)?;
                self.zero_run = Some((gpa, count));
            }
        }
        Ok(())
    }

    /// Seals every private page of the chunk `start..stop`.
    fn chunk(
        &mut self,
        shared: &Lock<Shared>,
        (mem, map, cipher): (&impl GuestMemory, &MemoryMap, &RecordCipher),
        record: &mut [u8; PAGE_RECORD_LEN],
        (start, stop): (u64, u64),
    ) -> Result<(), Fail> {
        let mut gpa = start;
        while gpa < stop {
            let page = gpa;
            gpa += PAGE;
            if !map.is_private(page) {
                continue;
            }
            if let Some(block) = known_zero_block_at(mem, page, stop).filter(|&block| map.contains(page, block)) {
                self.zero_pages(shared, mem, cipher, (page, block))?;
                gpa = page + block * PAGE;
                continue;
            }
            if mem.known_zero(page) || mem.page_is_zero(page) {
                self.zero_pages(shared, mem, cipher, (page, 1))?;
                continue;
            }
            self.seal_zero_run(shared, mem, cipher)?;
            mem.read_page(page, head::<PAGE_SIZE>(&mut record[HEADER_LEN..]));
            let ticket = shared
                .lock()
                .session
                .admit_page(self.lane, page)
                .map_err(|e| fail!(status::REFUSED, "sealing the page at {page:#x}: {e}"))?;
            ticket
                .seal(cipher, record)
                .map_err(|e| fail!(status::REFUSED, "sealing the page at {page:#x}: {e}"))?;
            self.tally.pages += 1;
            self.tally.records += 1;
            self.out.put(mem, &record[..])?;
        }
        Ok(())
    }
}

/// What a lane export did: each lane's counts and the output's length,
/// and how far the request was walked (entries done, frames of the next).
pub(crate) struct Sealed {
    pub(crate) tally: LaneTally,
    pub(crate) out_len: usize,
    pub(crate) entries_done: u64,
    pub(crate) next_frames: u64,
}

/// Seals `request` on the session's lanes with `team`. `cursor` is round
/// 0's (moved past what was sealed); `scratch` is worker 0's private
/// buffer for putting the output parts together.
pub(crate) fn seal(
    team: &dyn Team,
    mem: &impl GuestMemory,
    map: &MemoryMap,
    session: &mut SourceSession,
    cursor: &mut Option<u64>,
    scratch: &mut [u8],
    request: Request,
) -> Result<Sealed, Fail> {
    let lanes = usize::from(session.lanes());
    let part = (FROM_AGENT_SIZE as usize / lanes) & !7;
    // Chunks a part holds at least four of (most output a page can take:
    // a pending zero run's record, then its own), then one more record
    // for the zero run pending at the end.
    let frames = (part / ROOM_PER_PAGE / 4).clamp(1, 256) as u64;
    let need = frames as usize * ROOM_PER_PAGE + COUNT_RECORD_LEN;
    let cipher = session.cipher();
    let round0 = session.epoch() == 0;
    let shared = Lock::new(Shared {
        session,
        plan: Plan {
            request,
            entry: 0,
            range: None,
            at: 0,
            cursor: *cursor,
            round0,
        },
        failed: None,
    });
    let tallies = Tallies::new();
    let work = |w: usize| {
        if w >= lanes {
            return;
        }
        let mut lane = Lane {
            lane: w as u16,
            out: Output::part(w * part, part),
            zero_run: None,
            tally: LaneTally::default(),
        };
        let mut record = [0u8; PAGE_RECORD_LEN];
        let walked = loop {
            let chunk = {
                let mut s = shared.lock();
                if s.failed.is_some() || lane.out.room() < need {
                    break Ok(());
                }
                match s.plan.next(mem, map, frames) {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = lane.chunk(&shared, (mem, map, &cipher), &mut record, chunk) {
                break Err(e);
            }
        };
        let walked = walked.and_then(|()| lane.seal_zero_run(&shared, mem, &cipher));
        if let Err(e) = walked {
            shared.lock().failed.get_or_insert(e);
        }
        lane.tally.out_len = lane.out.len();
        tallies.set(w, lane.tally);
    };
    // Waking the helpers costs each a wait and a wake-up through covm
    // (milliseconds on a busy host): a request of a few pages, as a
    // paused final round's, is sealed on lane 0 alone.
    if request.is_small(mem) {
        work(0);
    } else {
        team.join(&work);
    }
    let shared = shared.into_inner();
    if let Some(e) = shared.failed {
        return Err(e);
    }
    *cursor = shared.plan.cursor;
    let (entries_done, next_frames) = shared.plan.progress();
    let out_len = gather(mem, scratch, part, &tallies, lanes);
    Ok(Sealed {
        tally: tallies.sum(lanes),
        out_len,
        entries_done,
        next_frames,
    })
}

/// Moves each lane's part of `FROM_AGENT` down to follow the one before
/// (through private `scratch`): the output's length.
fn gather(mem: &impl GuestMemory, scratch: &mut [u8], part: usize, tallies: &Tallies, lanes: usize) -> usize {
    let mut end = 0;
    for w in 0..lanes {
        let (from, len) = (w * part, tallies.get(w).out_len);
        let mut moved = 0;
        while moved < len && from != end {
            let n = (len - moved).min(scratch.len());
            mem.read_window(FROM_AGENT + (from + moved) as u64, &mut scratch[..n]);
            mem.write_window(FROM_AGENT + (end + moved) as u64, &scratch[..n]);
            moved += n;
        }
        end += len;
    }
    end
}
