//! The source's page commands: `EXPORT_PAGES`, `EXPORT_LIST` and
//! `END_ROUND` (the last ones, `EXPORT_FINAL` and `READ_CONTROL`, are in
//! `export_final`).
//!
//! Pages are sealed from a private copy: a zero page (known zero from the
//! firmware's write tracking, or read as zero in place) joins a ZeroPages
//! run, any other page is copied into the record
//! buffer in `AGENT_SCRATCH`, sealed there and copied out. Round 0 must
//! walk every private page in ascending order (the destination must end up
//! with all of memory whatever the host's dirty log says later); a request
//! that skips, repeats or reverses is refused and fails the session.

use crate::costs::{Costs, Laps, Stage};
use crate::env::{known_zero_block_at, EpochTables, GuestMemory, Platform};
use crate::mailbox::{self, Output};
use crate::memmap::MemoryMap;
use crate::reply::{fail, Done, Fail, Outcome};
use crate::{lanes, Agent, Run, Session};
use covm_agent_protocol::record::{COUNT_RECORD_LEN, HEADER_LEN, PAGE_RECORD_LEN};
use covm_agent_protocol::{MemoryDigest, SourceSession, SourceState, PAGE_SIZE};
use covm_guest_abi::mailbox::words::{
    EndRoundArgs, EndRoundReply, ExportListArgs, ExportListReply, ExportPagesArgs, ExportPagesReply,
};
use covm_guest_abi::mailbox::{status, TO_AGENT_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;
/// Output room that one more page always fits: a pending zero run's
/// record, then the page's own. `EXPORT_PAGES` stops before a page when
/// less is left.
pub(crate) const ROOM_PER_PAGE: usize = COUNT_RECORD_LEN + PAGE_RECORD_LEN;

/// Marks the session failed and passes the failure on.
pub(crate) fn fail_run(run: &mut Run, fail: Fail) -> Fail {
    run.failed = true;
    fail
}

/// The first `N` bytes of `buf` as an array.
pub(crate) fn head<const N: usize>(buf: &mut [u8]) -> &mut [u8; N] {
    (&mut buf[..N])
        .try_into()
        .expect("scratch holds SCRATCH_LEN bytes (checked at start-up)")
}

/// The memory digest of verified mode over every private page, ascending,
/// each copied into `page` first.
pub(crate) fn memory_digest(
    mem: &impl GuestMemory,
    map: &MemoryMap,
    page: &mut [u8; PAGE_SIZE],
) -> Result<[u8; 32], Fail> {
    let mut digest = MemoryDigest::new();
    for gpa in map.iter() {
        mem.read_page(gpa, page);
        digest
            .add_page(gpa, page)
            .map_err(|e| fail!(status::REFUSED, "memory digest: {e}"))?;
    }
    Ok(digest.finish())
}

/// The open source session, if it may still seal memory or state.
fn streaming<'s>(session: &'s mut Session<'_>, run: &Run, op: &str) -> Result<&'s mut SourceSession, Fail> {
    let Session::Source(s) = session else {
        return Err(fail!(status::BAD_STATE, "{op}: no confirmed source session"));
    };
    if run.failed {
        return Err(fail!(status::BAD_STATE, "{op}: the session failed; start a new one"));
    }
    if s.state() != SourceState::Streaming {
        return Err(fail!(status::BAD_STATE, "{op}: the source session is {}", s.state()));
    }
    Ok(s)
}

/// The parts of the agent an export command uses.
pub(crate) struct Exporting<'x, M, P> {
    pub(crate) mem: &'x mut M,
    pub(crate) platform: &'x P,
    pub(crate) map: &'x MemoryMap,
    pub(crate) s: &'x mut SourceSession,
    pub(crate) scratch: &'x mut [u8],
    pub(crate) run: &'x mut Run,
}

/// Bytes of one `EXPORT_LIST` entry: gpa and page count, u64 LE each.
pub(crate) const LIST_ENTRY_LEN: usize = 16;
/// Most entries one `EXPORT_LIST` takes (all of `TO_AGENT`).
const MAX_LIST_ENTRIES: u64 = TO_AGENT_SIZE / LIST_ENTRY_LEN as u64;

pub(crate) fn u64_le(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

/// Ends an export command: counts its records, fails the session on an
/// error, moves round 0's cursor past the last page walked and counts
/// the pages. Passes the walk's result on.
fn finish(
    run: &mut Run,
    s: &SourceSession,
    map: &MemoryMap,
    walk: &Walk,
    walked: Result<u64, Fail>,
) -> Result<u64, Fail> {
    run.records += walk.records;
    run.costs.merge(&walk.costs);
    let walked = walked.map_err(|e| fail_run(run, e))?;
    advance_cursor(run, s, map, walk);
    run.pages += walk.pages;
    Ok(walked)
}

/// In round 0, moves the cursor past the last page `walk` sealed.
fn advance_cursor(run: &mut Run, s: &SourceSession, map: &MemoryMap, walk: &Walk) {
    if s.epoch() == 0 {
        if let Some(p) = walk.last {
            run.cursor = map.next_private(p + PAGE);
        }
    }
}

/// Seals a run of `count` zero pages from `gpa` and appends the record.
fn seal_zero_run(
    s: &mut SourceSession,
    mem: &impl GuestMemory,
    out: &mut Output,
    (gpa, count): (u64, u64),
) -> Result<(), Fail> {
    let mut record = [0u8; COUNT_RECORD_LEN];
    s.seal_zero_pages(gpa, count, &mut record)
        .map_err(|e| fail!(status::REFUSED, "sealing zero pages at {gpa:#x}: {e}"))?;
    out.put(mem, &record)
}

/// What one export command sealed so far: its output and counts, and
/// the zero run not yet sealed (runs merge across the command's ranges
/// when they touch).
struct Walk {
    out: Output,
    pages: u64,
    zeros: u64,
    records: u64,
    zero_run: Option<(u64, u64)>,
    /// The last private page walked.
    last: Option<u64>,
    /// Where its time went (merged into the run's by `finish`).
    costs: Costs,
    laps: Laps,
}

impl Walk {
    fn new(platform: &impl Platform) -> Self {
        Walk {
            out: Output::new(),
            pages: 0,
            zeros: 0,
            records: 0,
            zero_run: None,
            last: None,
            costs: Costs::default(),
            laps: Laps::start(platform),
        }
    }

    /// Seals the pending zero run, if any.
    fn flush(&mut self, s: &mut SourceSession, mem: &impl GuestMemory) -> Result<(), Fail> {
        match self.zero_run.take() {
            Some(run) => {
                self.records += 1;
                seal_zero_run(s, mem, &mut self.out, run)
            }
            None => Ok(()),
        }
    }

    /// Counts `count` zero pages from `gpa`: they extend the pending
    /// zero run when they follow it, else that run is sealed and a new
    /// one starts.
    fn zero_pages(&mut self, s: &mut SourceSession, mem: &impl GuestMemory, gpa: u64, count: u64) -> Result<(), Fail> {
        self.zeros += count;
        match &mut self.zero_run {
            Some((start, n)) if *start + *n * PAGE == gpa => *n += count,
            _ => {
                self.flush(s, mem)?;
                self.zero_run = Some((gpa, count));
            }
        }
        Ok(())
    }

    /// Seals the private pages of `first..end` (zero runs pending in
    /// `self`) until the output might not hold the next page: the address
    /// it stopped at, `end` when it walked all of it.
    #[allow(clippy::too_many_arguments)]
    fn range(
        &mut self,
        s: &mut SourceSession,
        mem: &impl GuestMemory,
        platform: &impl Platform,
        map: &MemoryMap,
        record: &mut [u8; PAGE_RECORD_LEN],
        (first, end): (u64, u64),
    ) -> Result<u64, Fail> {
        self.laps.skip(platform);
        let mut gpa = first;
        while gpa < end {
            let page = gpa;
            gpa += PAGE;
            if !map.is_private(page) {
                continue;
            }
            if self.out.room() < ROOM_PER_PAGE {
                return Ok(page);
            }
            // A whole block nothing wrote since launch joins the zero run
            // at once (an idle guest's memory is mostly such blocks).
            let block = known_zero_block_at(mem, page, end).filter(|&block| map.contains(page, block));
            if let Some(block) = block {
                let span = block * PAGE;
                self.laps.mark(platform, &mut self.costs, Stage::Zero);
                self.last = Some(page + span - PAGE);
                self.pages += block;
                self.zero_pages(s, mem, page, block)?;
                gpa = page + span;
                continue;
            }
            let gpa = page;
            self.last = Some(gpa);
            self.pages += 1;
            let zero = mem.known_zero(gpa) || mem.page_is_zero(gpa);
            self.laps.mark(platform, &mut self.costs, Stage::Zero);
            if zero {
                self.zero_pages(s, mem, gpa, 1)?;
            } else {
                self.flush(s, mem)?;
                self.laps.skip(platform);
                mem.read_page(gpa, head::<PAGE_SIZE>(&mut record[HEADER_LEN..]));
                self.laps.mark(platform, &mut self.costs, Stage::CopyIn);
                self.records += 1;
                s.seal_page_in_place(gpa, record)
                    .map_err(|e| fail!(status::REFUSED, "sealing the page at {gpa:#x}: {e}"))?;
                self.laps.mark(platform, &mut self.costs, Stage::Crypto);
                self.out.put(mem, &record[..])?;
                self.laps.mark(platform, &mut self.costs, Stage::CopyOut);
            }
        }
        Ok(end)
    }
}

/// Seals `request` on the session's lanes with the platform's team (see
/// [`lanes::export`]), and books it in `run`.
fn seal_lanes(
    platform: &impl Platform,
    mem: &impl GuestMemory,
    map: &MemoryMap,
    s: &mut SourceSession,
    scratch: &mut [u8],
    run: &mut Run,
    request: lanes::export::Request,
) -> Result<lanes::export::Sealed, Fail> {
    let team = platform
        .team()
        .filter(|t| t.workers() >= usize::from(s.lanes()))
        .ok_or_else(|| fail!(status::BAD_STATE, "{} lanes, but fewer vCPUs to seal them", s.lanes()))?;
    let sealed =
        lanes::export::seal(team, mem, map, s, &mut run.cursor, scratch, request).map_err(|e| fail_run(run, e))?;
    run.records += sealed.tally.records;
    run.pages += sealed.tally.pages;
    Ok(sealed)
}

/// The range of `count` pages from `first`, checked.
pub(crate) fn page_range(op: &str, first: u64, count: u64) -> Result<(u64, u64), Fail> {
    if first % PAGE != 0 {
        return Err(fail!(status::BAD_COMMAND, "{op}: {first:#x} is not 4 KiB aligned"));
    }
    match count.checked_mul(PAGE).and_then(|n| first.checked_add(n)) {
        Some(end) => Ok((first, end)),
        None => Err(fail!(status::BAD_COMMAND, "{op}: the range passes the end of memory")),
    }
}

/// Round 0 covers every private page, in order: the first private page
/// of `range` must be the next one not yet sealed.
fn check_cursor(run: &mut Run, s: &SourceSession, map: &MemoryMap, (first, end): (u64, u64)) -> Result<(), Fail> {
    if s.epoch() != 0 {
        return Ok(());
    }
    let Some(p) = map.next_private(first).filter(|&p| p < end) else {
        return Ok(());
    };
    match run.cursor {
        Some(next) if next == p => Ok(()),
        Some(next) => Err(fail_run(
            run,
            fail!(
                status::REFUSED,
                "round 0 must cover every private page in ascending order: asked for {p:#x}, the next one is {next:#x}"
            ),
        )),
        None => Err(fail_run(
            run,
            fail!(
                status::REFUSED,
                "round 0 already covered every private page; {p:#x} asked for again"
            ),
        )),
    }
}

/// Checks that `round` is the session's open round.
fn check_round(s: &SourceSession, op: &str, round: u32) -> Result<(), Fail> {
    if round != s.epoch() {
        return Err(fail!(
            status::BAD_COMMAND,
            "{op}: round {round}, but round {} is open",
            s.epoch()
        ));
    }
    Ok(())
}

impl<'a, M: GuestMemory, P: Platform, E: EpochTables<'a>> Agent<'a, M, P, E> {
    /// What an export command works with, once the session is streaming.
    pub(crate) fn streaming_parts(&mut self, op: &str) -> Result<Exporting<'_, M, P>, Fail> {
        let parts = self.parts()?;
        let s = streaming(parts.session, parts.run, op)?;
        Ok(Exporting {
            mem: parts.mem,
            platform: parts.platform,
            map: parts.map,
            s,
            scratch: parts.scratch,
            run: parts.run,
        })
    }

    /// What a page export command works with, once the session is
    /// streaming in `round`.
    fn exporting(&mut self, op: &str, round: u32) -> Result<Exporting<'_, M, P>, Fail> {
        let exporting = self.streaming_parts(op)?;
        check_round(exporting.s, op, round)?;
        Ok(exporting)
    }

    pub(crate) fn export_pages(
        &mut self,
        ExportPagesArgs { round, first, count }: ExportPagesArgs,
    ) -> Outcome<ExportPagesReply> {
        let Exporting {
            mem,
            platform,
            map,
            s,
            scratch,
            run,
        } = self.exporting("EXPORT_PAGES", round)?;
        let range = page_range("EXPORT_PAGES", first, count)?;
        if s.lanes() > 1 {
            let request = lanes::export::Request::Range(range.0, range.1);
            let sealed = seal_lanes(platform, mem, map, s, scratch, run, request)?;
            return Ok(Done::new(ExportPagesReply {
                pages: sealed.tally.pages,
                zero_pages: sealed.tally.zero_pages,
                walked_frames: if sealed.entries_done > 0 {
                    count
                } else {
                    sealed.next_frames
                },
            })
            .with_output(sealed.out_len));
        }
        let record = head::<PAGE_RECORD_LEN>(scratch);
        check_cursor(run, s, map, range)?;
        let mut walk = Walk::new(platform);
        let walked = walk
            .range(s, mem, platform, map, record, range)
            .and_then(|stopped| walk.flush(s, mem).map(|_| stopped));
        let walked = finish(run, s, map, &walk, walked)?;
        Ok(Done::new(ExportPagesReply {
            pages: walk.pages,
            zero_pages: walk.zeros,
            walked_frames: (walked - first) / PAGE,
        })
        .with_output(walk.out.len()))
    }

    /// `EXPORT_LIST`: the ranges listed in `TO_AGENT`, in order.
    pub(crate) fn export_list(
        &mut self,
        ExportListArgs { round, entries }: ExportListArgs,
    ) -> Outcome<ExportListReply> {
        if entries == 0 || entries > MAX_LIST_ENTRIES {
            return Err(fail!(
                status::BAD_COMMAND,
                "EXPORT_LIST: {entries} entries (1 to {MAX_LIST_ENTRIES})"
            ));
        }
        let Exporting {
            mem,
            platform,
            map,
            s,
            scratch,
            run,
        } = self.exporting("EXPORT_LIST", round)?;
        if s.lanes() > 1 {
            let sealed = seal_lanes(
                platform,
                mem,
                map,
                s,
                scratch,
                run,
                lanes::export::Request::List(entries),
            )?;
            return Ok(Done::new(ExportListReply {
                pages: sealed.tally.pages,
                zero_pages: sealed.tally.zero_pages,
                entries_done: sealed.entries_done,
                next_entry_frames: sealed.next_frames,
            })
            .with_output(sealed.out_len));
        }
        let record = head::<PAGE_RECORD_LEN>(scratch);
        let mut walk = Walk::new(platform);
        let (mut done, mut partial) = (0u64, 0u64);
        let mut walked = Ok(0);
        for i in 0..entries {
            // Each entry is copied into private memory once, then checked.
            let mut entry = [0u8; LIST_ENTRY_LEN];
            mailbox::read_input(mem, (i * LIST_ENTRY_LEN as u64) as usize, &mut entry);
            let (first, count) = (u64_le(&entry[..8]), u64_le(&entry[8..]));
            // A bad entry after sealed ones fails the session: records
            // sealed for an output that is never handed out leave a gap.
            let range = match page_range("EXPORT_LIST", first, count) {
                Ok(range) if count > 0 => Ok(range),
                Ok(_) => Err(fail!(status::BAD_COMMAND, "EXPORT_LIST: entry {i} has no pages")),
                Err(e) => Err(e),
            }
            .and_then(|range| check_cursor(run, s, map, range).map(|_| range));
            let range = match range {
                Ok(range) => range,
                Err(e) => {
                    walked = Err(e);
                    break;
                }
            };
            walked = walk.range(s, mem, platform, map, record, range);
            match walked {
                Ok(stopped) if stopped == range.1 => done += 1,
                Ok(stopped) => {
                    partial = (stopped - first) / PAGE;
                    break;
                }
                Err(_) => break,
            }
            // The cursor follows the walk: the next entry's check needs it.
            advance_cursor(run, s, map, &walk);
        }
        let walked = walked.and_then(|stopped| walk.flush(s, mem).map(|_| stopped));
        finish(run, s, map, &walk, walked)?;
        Ok(Done::new(ExportListReply {
            pages: walk.pages,
            zero_pages: walk.zeros,
            entries_done: done,
            next_entry_frames: partial,
        })
        .with_output(walk.out.len()))
    }

    pub(crate) fn end_round(&mut self, _: EndRoundArgs) -> Outcome<EndRoundReply> {
        let Agent { mem, session, run, .. } = self;
        let s = streaming(session, run, "END_ROUND")?;
        if s.epoch() == 0 {
            if let Some(next) = run.cursor {
                return Err(fail_run(
                    run,
                    fail!(
                        status::REFUSED,
                        "round 0 cannot end before every private page was sealed: the next one is {next:#x}"
                    ),
                ));
            }
        }
        // Every lane ends the round; the round closes with the last.
        let mut out = Output::new();
        let mut pages = 0;
        for lane in 0..s.lanes() {
            let mut record = [0u8; COUNT_RECORD_LEN];
            run.records += 1;
            pages += s.seal_round_end_on(lane, &mut record).map_err(|e| {
                fail_run(
                    run,
                    fail!(status::REFUSED, "sealing the round's end on lane {lane}: {e}"),
                )
            })?;
            out.put(mem, &record)?;
        }
        Ok(Done::new(EndRoundReply { pages }).with_output(out.len()))
    }
}
