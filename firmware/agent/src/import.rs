//! The destination's commands: `IMPORT`, `COMMIT` and `MINT_ABORT`.
//!
//! Each record is copied from `TO_AGENT` into `AGENT_SCRATCH` and opened
//! there by the `ImportChecker` (every protocol check: sequence, tag,
//! epoch, staleness, counts); the agent adds its own: a page goes only to
//! private memory, a vCPU state only to a slot of the VMSA area.

use crate::costs::{Laps, Stage};
use crate::env::{known_zero_block_at, EpochTables, GuestMemory, Platform};
use crate::export::{fail_run, head, memory_digest};
use crate::mailbox::{self, Output};
use crate::memmap::MemoryMap;
use crate::reply::{fail, Done, Fail, Outcome};
use crate::{lanes, Agent, Run, Session};
use covm_agent_protocol::record::{record_len, ABORT_RECORD_LEN, COMMIT_RECORD_LEN, HEADER_LEN};
use covm_agent_protocol::{ImportChecker, ImportEvent, ImportPhase, Summary, PAGE_SIZE};
use covm_guest_abi::mailbox::words::{CommitArgs, CommitReply, ImportArgs, ImportReply, MintAbortArgs, MintAbortReply};
use covm_guest_abi::mailbox::{status, AGENT_VCPU_STATES, MAX_VCPU_STATE, MAX_WORKLOAD_VCPUS, VCPU_STATE_SLOT};

const PAGE: u64 = PAGE_SIZE as u64;

fn checker<'s, 'a>(session: &'s mut Session<'a>, op: &str) -> Result<&'s mut ImportChecker<'a>, Fail> {
    match session {
        Session::Destination(c) => Ok(c),
        Session::DestinationHandshake(_) => Err(fail!(
            status::BAD_STATE,
            "{op}: the handshake is not complete (no session keys yet: the source may simply resume)"
        )),
        _ => Err(fail!(status::BAD_STATE, "{op}: no confirmed destination session")),
    }
}

/// The parts of the agent `IMPORT` and `COMMIT` use.
struct Importing<'x, 'a, M, P> {
    mem: &'x mut M,
    platform: &'x mut P,
    map: &'x MemoryMap,
    checker: &'x mut ImportChecker<'a>,
    scratch: &'x mut [u8],
    run: &'x mut Run,
    imported: &'x mut bool,
}

/// Applies one opened record: a page to private memory, a zero run
/// (skipping pages known zero), a vCPU state to its slot of the VMSA
/// area; counts it in `counts`. The Final's summary is returned.
pub(crate) fn apply(
    event: ImportEvent<'_>,
    mem: &impl GuestMemory,
    map: &MemoryMap,
    workload: u32,
    counts: &mut ImportReply,
) -> Result<Option<Summary>, Fail> {
    match event {
        ImportEvent::Page { gpa, data } => {
            if !map.is_private(gpa) {
                return Err(fail!(
                    status::REFUSED,
                    "IMPORT: a page at {gpa:#x}, outside private memory"
                ));
            }
            mem.write_page(gpa, data);
            counts.pages += 1;
        }
        ImportEvent::ZeroPages { gpa, count } => {
            if !map.contains(gpa, count) {
                return Err(fail!(
                    status::REFUSED,
                    "IMPORT: {count} zero pages at {gpa:#x}, not all in private memory"
                ));
            }
            // A page nothing wrote since launch needs neither a read nor
            // a write (writing would populate it); a whole such block is
            // skipped at once.
            let end = gpa + count * PAGE;
            let mut page = gpa;
            while page < end {
                if let Some(block) = known_zero_block_at(mem, page, end) {
                    page += block * PAGE;
                    continue;
                }
                if !mem.known_zero(page) && !mem.page_is_zero(page) {
                    mem.zero_page(page);
                }
                page += PAGE;
            }
            counts.pages += count;
            counts.zero_pages += count;
        }
        ImportEvent::RoundEnd { .. } => {}
        ImportEvent::VcpuState { index, state } => {
            let limit = if workload == 0 {
                MAX_WORKLOAD_VCPUS
            } else {
                u64::from(workload)
            };
            if u64::from(index) >= limit || state.len() as u64 > MAX_VCPU_STATE {
                return Err(fail!(
                    status::REFUSED,
                    "IMPORT: vCPU {index}'s state ({} bytes) has no slot (vCPUs below {limit}, at most \
                     {MAX_VCPU_STATE} bytes)",
                    state.len()
                ));
            }
            let slot = AGENT_VCPU_STATES + u64::from(index) * VCPU_STATE_SLOT;
            mem.write_window(slot + 4, state);
            mem.write_window(slot, &(state.len() as u32).to_le_bytes());
            counts.vcpu_states += 1;
        }
        ImportEvent::Complete(summary) => return Ok(Some(summary)),
    }
    Ok(None)
}

impl<'a, M: GuestMemory, P: Platform, E: EpochTables<'a>> Agent<'a, M, P, E> {
    /// What `op` works with, once a destination session is confirmed.
    fn importing(&mut self, op: &str) -> Result<Importing<'_, 'a, M, P>, Fail> {
        let parts = self.parts()?;
        Ok(Importing {
            checker: checker(parts.session, op)?,
            mem: parts.mem,
            platform: parts.platform,
            map: parts.map,
            scratch: parts.scratch,
            run: parts.run,
            imported: parts.imported,
        })
    }

    pub(crate) fn import(&mut self, args: ImportArgs) -> Outcome<ImportReply> {
        let len = mailbox::input_len(args.len, "IMPORT")?;
        let workload = self.config.workload_vcpus;
        let Importing {
            mem,
            platform,
            map,
            checker,
            scratch,
            run,
            ..
        } = self.importing("IMPORT")?;
        let platform = &*platform;
        let mut laps = Laps::start(platform);
        if run.failed {
            return Err(fail!(
                status::BAD_STATE,
                "IMPORT: an earlier record failed the agent's checks; only an abort token can follow"
            ));
        }
        let mut counts = ImportReply {
            pages: 0,
            zero_pages: 0,
            complete: false,
            vcpu_states: 0,
            verified: false,
        };
        // Several lanes and several vCPUs: each opens its own lanes. A
        // batch of a few records (a final round's) is not worth waking
        // the helpers for: agent 0 opens every lane of it, in order.
        let team = platform
            .team()
            .filter(|t| t.workers() > 1 && checker.lanes() > 1 && len > lanes::SOLO_BATCH);
        if let Some(team) = team {
            let opened = lanes::import::open(team, mem, map, checker, (len, workload), scratch);
            let tally = opened.tally;
            run.records += tally.records;
            run.pages += tally.pages;
            if let Some(summary) = opened.summary {
                run.summary = Some(summary);
            }
            let counts = ImportReply {
                pages: tally.pages,
                zero_pages: tally.zero_pages,
                vcpu_states: tally.vcpu_states,
                complete: run.summary.is_some(),
                verified: run.summary.is_some_and(|s| s.memory_digest.is_some()),
            };
            return match opened.failed {
                Some(e) => Err(fail_run(run, e).with_partial(ImportReply {
                    complete: false,
                    verified: false,
                    ..counts
                })),
                None => Ok(Done::new(counts)),
            };
        }
        let mut offset = 0;
        while offset < len {
            let partial = counts;
            let rest = len - offset;
            // The header first, for the length; the whole record is then
            // copied again, and the checker reads the length from the
            // private copy (a changed length fails there).
            let mut header = [0u8; HEADER_LEN];
            let n = rest.min(HEADER_LEN);
            mailbox::read_input(mem, offset, &mut header[..n]);
            let size = match record_len(&header[..n]) {
                Ok(size) if size <= rest && size <= scratch.len() => size,
                Ok(size) => {
                    return Err(fail_run(
                        run,
                        fail!(
                            status::REFUSED,
                            "IMPORT: the record at byte {offset} is {size} bytes, {rest} are left"
                        ),
                    )
                    .with_partial(partial))
                }
                Err(e) => {
                    return Err(
                        fail_run(run, fail!(status::REFUSED, "IMPORT: record at byte {offset}: {e}"))
                            .with_partial(partial),
                    )
                }
            };
            let record = &mut scratch[..size];
            mailbox::read_input(mem, offset, record);
            laps.mark(platform, &mut run.costs, Stage::CopyIn);
            run.records += 1;
            let event = checker.open(record).map_err(|e| {
                fail!(status::REFUSED, "IMPORT: record at byte {offset} refused: {e}").with_partial(partial)
            })?;
            laps.mark(platform, &mut run.costs, Stage::Crypto);
            let stage = match event {
                ImportEvent::ZeroPages { .. } => Stage::Zero,
                _ => Stage::CopyOut,
            };
            match apply(event, mem, map, workload, &mut counts) {
                Ok(Some(summary)) => run.summary = Some(summary),
                Ok(None) => {}
                Err(e) => return Err(fail_run(run, e).with_partial(partial)),
            }
            laps.mark(platform, &mut run.costs, stage);
            laps.skip(platform);
            offset += size;
        }
        run.pages += counts.pages;
        Ok(Done::new(ImportReply {
            complete: run.summary.is_some(),
            verified: run.summary.is_some_and(|s| s.memory_digest.is_some()),
            ..counts
        }))
    }

    pub(crate) fn commit(&mut self, CommitArgs { verified }: CommitArgs) -> Outcome<CommitReply> {
        let workload = self.config.workload_vcpus;
        let Importing {
            mem,
            platform,
            map,
            checker,
            scratch,
            run,
            imported,
        } = self.importing("COMMIT")?;
        let mut out = Output::new();
        if let Some(record) = &run.commit {
            // Committed already: the same record again (a lost one can be
            // re-sent; nothing changes).
            out.put(mem, record)?;
            return Ok(Done::new(CommitReply).with_output(out.len()));
        }
        if run.failed || checker.phase() == ImportPhase::Poisoned {
            return Err(fail!(
                status::BAD_STATE,
                "COMMIT: the session failed; only an abort token can follow"
            ));
        }
        let Some(summary) = run.summary else {
            return Err(fail!(
                status::BAD_STATE,
                "COMMIT: the migration is not complete (phase {})",
                checker.phase()
            ));
        };
        if verified != summary.memory_digest.is_some() {
            return Err(fail!(
                status::BAD_COMMAND,
                "COMMIT: verified = {}, but the source's Final {}",
                u8::from(verified),
                if verified {
                    "has no memory digest"
                } else {
                    "carries a memory digest"
                }
            ));
        }
        if workload != 0 && summary.vcpus != workload {
            return Err(fail_run(
                run,
                fail!(
                    status::REFUSED,
                    "COMMIT: the source sent {} vCPU states, this guest has {workload} workload vCPUs",
                    summary.vcpus
                ),
            ));
        }
        // The host must hold the shared window as the guest's own sealed
        // map says (crate::shared_check).
        let page = head::<PAGE_SIZE>(scratch);
        mem.read_page(covm_guest_abi::shared_map::SHARED_MAP, page);
        if let Err((gpa, pages, host, shared)) =
            crate::shared_check::check(&page[..], |first, n| platform.page_state_query(first, n))
        {
            return Err(fail_run(
                run,
                fail!(
                    status::REFUSED,
                    "COMMIT refused: {pages} pages at {gpa:#x} are {host} for the host, {} in the guest's sealed \
                     map",
                    if shared { "shared" } else { "private" }
                ),
            ));
        }
        // Verified mode digests private memory, as the source did: the
        // shared pages (the host's to carry and to change) left out.
        let private = crate::shared_check::private_map(map, &page[..])
            .map_err(|e| fail!(status::REFUSED, "COMMIT: the guest's shared map: {e}"))?;
        let digest = if verified {
            Some(memory_digest(mem, &private, head::<PAGE_SIZE>(scratch))?)
        } else {
            None
        };
        let mut record = [0u8; COMMIT_RECORD_LEN];
        checker
            .commit(digest.as_ref(), &mut record)
            .map_err(|e| fail!(status::REFUSED, "COMMIT refused: {e}"))?;
        run.records += 1;
        run.commit = Some(record);
        *imported = true;
        out.put(mem, &record)?;
        Ok(Done::new(CommitReply).with_output(out.len()))
    }

    pub(crate) fn mint_abort(&mut self, MintAbortArgs { reason }: MintAbortArgs) -> Outcome<MintAbortReply> {
        let Agent { mem, session, run, .. } = self;
        let checker = checker(session, "MINT_ABORT")?;
        let mut token = [0u8; ABORT_RECORD_LEN];
        checker
            .mint_abort(reason, &mut token)
            .map_err(|e| fail!(status::BAD_STATE, "MINT_ABORT: {e}"))?;
        run.records += 1;
        let mut out = Output::new();
        out.put(mem, &token)?;
        Ok(Done::new(MintAbortReply).with_output(out.len()))
    }
}
