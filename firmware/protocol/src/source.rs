//! The source's confirmed session: it seals what leaves the guest and
//! decides whether the guest may ever run here again.
//!
//! The source counts what it seals itself (pages per round, rounds, vCPU
//! states), so RoundEnd and Final always state the truth about what this
//! agent produced; the destination recounts what it received.
//!
//! # Lanes
//!
//! The record stream may be spread over several lanes
//! ([`SourceSession::set_lanes`], before the first record), one per agent
//! vCPU sealing in parallel. Each lane has its own sequence numbers and
//! nonces; memory records go on any lane, each lane ends each round with
//! its own RoundEnd (its own page count), and the round closes when every
//! lane ended it: only then may any lane carry the next round's records.
//! vCPU states and the Final travel on lane 0, after the last round
//! closed; the Final states the lane count.
//!
//! # May the source resume?
//!
//! The destination can commit only after it checked a Final record, and
//! only this session can seal one. So:
//!
//! | state                          | may_resume | why                                              |
//! |--------------------------------|------------|--------------------------------------------------|
//! | (handshake never confirmed)    | yes        | no key, no record ever left                      |
//! | [`SourceState::Streaming`]     | yes        | no Final sealed: the destination cannot commit   |
//! | [`SourceState::SealingState`]  | yes        | idem                                             |
//! | [`SourceState::FinalSealed`]   | **no**     | the destination may have committed               |
//! | [`SourceState::Aborted`]       | yes        | a valid abort token: the destination never will  |
//! | [`SourceState::Committed`]     | **never**  | the guest runs at the destination                |
//!
//! `FinalSealed` is entered the moment a Final is *attempted* (its
//! sequence number taken), before anything can fail, so a Final that left
//! by any path is covered. `Committed` is final: no call leaves it.

use crate::error::{Error, Result};
use crate::keys::{KeySchedule, SESSION_ID_LEN};
use crate::policy::PeerIdentity;
use crate::record::payload::{decode_abort, Summary, COUNT_LEN};
use crate::record::round_lanes::RoundLanes;
use crate::record::stream::{RecordCipher, RecordOpener, RecordSealer, Reserved, StreamId};
use crate::record::{
    RecordHeader, RecordType, COUNT_RECORD_LEN, FINAL_RECORD_LEN, HEADER_LEN, MAX_VCPU_STATE_LEN, PAGE_RECORD_LEN,
    PAGE_SIZE, RECORD_OVERHEAD,
};
use crate::suite::Suite;
use crate::MAX_VCPUS;

/// Where a source session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Memory records flow (pre-copy rounds, then the paused last round).
    Streaming,
    /// vCPU states are being sealed; no more memory records.
    SealingState,
    /// The Final record was sealed: wait for Commit or an abort token.
    FinalSealed,
    /// The destination proved it committed: the guest must never run here again.
    Committed,
    /// The destination proved it gave up before committing: resume.
    Aborted,
}

impl SourceState {
    fn name(self) -> &'static str {
        match self {
            SourceState::Streaming => "streaming",
            SourceState::SealingState => "sealing vCPU state",
            SourceState::FinalSealed => "final sealed",
            SourceState::Committed => "committed",
            SourceState::Aborted => "aborted",
        }
    }
}

impl core::fmt::Display for SourceState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A memory record [`SourceSession`] admitted on a lane: its sequence
/// number (taken for good) and header fields. [`SealTicket::seal`] seals
/// it with any copy of the stream's cipher, on any vCPU, without the
/// session: the session is what several sealing vCPUs share under a lock,
/// and the cipher work stays outside it.
#[must_use]
pub struct SealTicket {
    seq: Reserved,
    record_type: RecordType,
    epoch: u32,
    address: u64,
    /// ZeroPages: the count the payload carries.
    count: Option<u64>,
}

impl SealTicket {
    /// Seals the record into `record`: a Page record's page must already
    /// be at `record[HEADER_LEN..]` (`record` is [`PAGE_RECORD_LEN`]
    /// bytes); a ZeroPages record ([`COUNT_RECORD_LEN`] bytes) gets its
    /// count here. Private memory only.
    pub fn seal(self, cipher: &RecordCipher, record: &mut [u8]) -> Result<RecordHeader> {
        if let Some(count) = self.count {
            crate::wire::check_room(record, HEADER_LEN + COUNT_LEN)?;
            record[HEADER_LEN..HEADER_LEN + COUNT_LEN].copy_from_slice(&count.to_le_bytes());
        }
        cipher.seal(self.seq, self.record_type, self.epoch, self.address, record)
    }
}

/// The source's side of a confirmed session.
pub struct SourceSession {
    sealer: RecordSealer,
    control: RecordOpener,
    abort: RecordOpener,
    session_id: [u8; SESSION_ID_LEN],
    peer: PeerIdentity,
    version: u16,
    suite: Suite,
    state: SourceState,
    epoch: u32,
    /// The open round's pages per lane and the lanes that ended it.
    round: RoundLanes,
    total_pages: u64,
    rounds: u32,
    vcpus: u32,
    summary: Option<Summary>,
}

fn check_aligned(gpa: u64) -> Result<()> {
    if gpa % PAGE_SIZE as u64 != 0 {
        return Err(Error::Unaligned(gpa));
    }
    Ok(())
}

impl SourceSession {
    pub(crate) fn new(keys: KeySchedule, peer: PeerIdentity, version: u16, suite: Suite) -> Self {
        let id = keys.session_id;
        // `keys` is dropped (zeroized) at the end of this function: the
        // ciphers hold their own expanded copies.
        SourceSession {
            sealer: RecordSealer::new(&keys.s2d_records, StreamId::S2dRecords, &id),
            control: RecordOpener::new(&keys.d2s_control, StreamId::D2sControl, &id),
            abort: RecordOpener::new(&keys.d2s_abort, StreamId::D2sAbort, &id),
            session_id: id,
            peer,
            version,
            suite,
            state: SourceState::Streaming,
            epoch: 0,
            round: RoundLanes::new(),
            total_pages: 0,
            rounds: 0,
            vcpus: 0,
            summary: None,
        }
    }

    /// Where the session stands.
    pub fn state(&self) -> SourceState {
        self.state
    }

    /// Whether the guest may run at the source (see the module doc).
    pub fn may_resume(&self) -> bool {
        matches!(
            self.state,
            SourceState::Streaming | SourceState::SealingState | SourceState::Aborted
        )
    }

    /// The open round: the epoch of the next memory record.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Pages sealed in the open round, on all lanes.
    pub fn pages_in_round(&self) -> u64 {
        self.round.pages()
    }

    /// Lanes of the record stream.
    pub fn lanes(&self) -> u16 {
        self.round.lanes()
    }

    /// Spreads the record stream over `lanes` lanes (1..=[`MAX_LANES`](crate::record::MAX_LANES)).
    /// Only before the first record: the destination must be told the
    /// same count, and the Final states it.
    pub fn set_lanes(&mut self, lanes: u16) -> Result<()> {
        self.require(&[SourceState::Streaming], "set the lanes")?;
        if self.sealer.any_taken() {
            return Err(Error::State {
                op: "set the lanes after the first record",
                state: self.state.name(),
            });
        }
        self.sealer.set_lanes(lanes)?;
        self.round.set_lanes(lanes);
        Ok(())
    }

    /// The session id bound into every record.
    pub fn session_id(&self) -> &[u8; SESSION_ID_LEN] {
        &self.session_id
    }

    /// The verified destination.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The negotiated protocol version and suite.
    pub fn negotiated(&self) -> (u16, Suite) {
        (self.version, self.suite)
    }

    /// The sequence number the next record on lane 0 gets.
    pub fn next_sequence(&self) -> u64 {
        self.sealer.next_sequence(0)
    }

    /// The sequence number the next record on `lane` gets.
    pub fn next_sequence_on(&self, lane: u16) -> u64 {
        self.sealer.next_sequence(lane)
    }

    fn require(&self, states: &[SourceState], op: &'static str) -> Result<()> {
        if !states.contains(&self.state) {
            return Err(Error::State {
                op,
                state: self.state.name(),
            });
        }
        Ok(())
    }

    /// Seals `page`, the content at `gpa`, into `out`: one 4 KiB copy into
    /// the record, then AES-GCM in place. (aes-gcm 0.11's out-of-place
    /// mode measured slower than copy + in place: 1.6 vs 2.2 GB/s.)
    pub fn seal_page(
        &mut self,
        gpa: u64,
        page: &[u8; PAGE_SIZE],
        out: &mut [u8; PAGE_RECORD_LEN],
    ) -> Result<RecordHeader> {
        out[HEADER_LEN..HEADER_LEN + PAGE_SIZE].copy_from_slice(page);
        self.seal_page_in_place(gpa, out)
    }

    /// Seals the page the caller already placed at `record[HEADER_LEN..]`
    /// (e.g. read straight from guest memory into it): no copy at all.
    /// Like every buffer here, `record` must be private memory.
    pub fn seal_page_in_place(&mut self, gpa: u64, record: &mut [u8; PAGE_RECORD_LEN]) -> Result<RecordHeader> {
        self.seal_page_on(0, gpa, record)
    }

    /// [`Self::seal_page_in_place`] on lane `lane`.
    pub fn seal_page_on(&mut self, lane: u16, gpa: u64, record: &mut [u8; PAGE_RECORD_LEN]) -> Result<RecordHeader> {
        self.admit_page(lane, gpa)?.seal(self.sealer.cipher(), record)
    }

    /// A copy of the record cipher, for a vCPU that seals admitted records
    /// in parallel with others ([`SealTicket::seal`]).
    pub fn cipher(&self) -> RecordCipher {
        self.sealer.cipher().clone()
    }

    /// Admits a Page record of `gpa` on `lane`: takes the lane's number
    /// and counts the page in the round (a ticket never sealed leaves a
    /// gap the destination refuses, like any lost record).
    pub fn admit_page(&mut self, lane: u16, gpa: u64) -> Result<SealTicket> {
        let seq = self.sealer.reserve(lane)?;
        self.require(&[SourceState::Streaming], "seal a page")?;
        self.round.check_open(lane, self.epoch)?;
        check_aligned(gpa)?;
        self.round.add(lane, 1);
        Ok(SealTicket {
            seq,
            record_type: RecordType::Page,
            epoch: self.epoch,
            address: gpa,
            count: None,
        })
    }

    /// Seals a run of `count` all-zero pages from `gpa` (the caller
    /// checked they are zero): 56 bytes instead of `count` page records.
    pub fn seal_zero_pages(&mut self, gpa: u64, count: u64, out: &mut [u8; COUNT_RECORD_LEN]) -> Result<RecordHeader> {
        self.seal_zero_pages_on(0, gpa, count, out)
    }

    /// [`Self::seal_zero_pages`] on lane `lane`.
    pub fn seal_zero_pages_on(
        &mut self,
        lane: u16,
        gpa: u64,
        count: u64,
        out: &mut [u8; COUNT_RECORD_LEN],
    ) -> Result<RecordHeader> {
        self.admit_zero_pages(lane, gpa, count)?.seal(self.sealer.cipher(), out)
    }

    /// Admits a ZeroPages record of `count` pages from `gpa` on `lane`
    /// (see [`Self::admit_page`]).
    pub fn admit_zero_pages(&mut self, lane: u16, gpa: u64, count: u64) -> Result<SealTicket> {
        let seq = self.sealer.reserve(lane)?;
        self.require(&[SourceState::Streaming], "seal zero pages")?;
        self.round.check_open(lane, self.epoch)?;
        check_aligned(gpa)?;
        if count == 0
            || count
                .checked_mul(PAGE_SIZE as u64)
                .and_then(|b| gpa.checked_add(b))
                .is_none()
        {
            return Err(Error::Invalid {
                what: "zero-page run (empty or past the end of the address space)",
            });
        }
        self.round.add(lane, count);
        Ok(SealTicket {
            seq,
            record_type: RecordType::ZeroPages,
            epoch: self.epoch,
            address: gpa,
            count: Some(count),
        })
    }

    /// Ends the open round: seals a RoundEnd with the pages this session
    /// sealed in it and opens the next round. Returns that page count.
    pub fn seal_round_end(&mut self, out: &mut [u8; COUNT_RECORD_LEN]) -> Result<u64> {
        self.seal_round_end_on(0, out)
    }

    /// Ends the open round on lane `lane`: seals a RoundEnd with the pages
    /// sealed on that lane in the round. The round closes (and the next
    /// opens) when every lane ended it. Returns the lane's page count.
    pub fn seal_round_end_on(&mut self, lane: u16, out: &mut [u8; COUNT_RECORD_LEN]) -> Result<u64> {
        let seq = self.sealer.reserve(lane)?;
        self.require(&[SourceState::Streaming], "end a round")?;
        self.round.check_open(lane, self.epoch)?;
        let next = self
            .epoch
            .checked_add(1)
            .filter(|&e| e < u32::MAX)
            .ok_or(Error::Invalid {
                what: "epoch (too many rounds)",
            })?;
        let pages = self.round.lane_pages(lane);
        out[HEADER_LEN..HEADER_LEN + COUNT_LEN].copy_from_slice(&pages.to_le_bytes());
        self.sealer
            .cipher()
            .seal(seq, RecordType::RoundEnd, self.epoch, 0, out)?;
        if let Some(round_pages) = self.round.end(lane) {
            self.epoch = next;
            self.rounds += 1;
            self.total_pages += round_pages;
        }
        Ok(pages)
    }

    /// Seals vCPU `index`'s `state` into `out`; returns the record's
    /// length (`state.len()` + 48). Allowed once the last round ended;
    /// from the first vCPU state on, no memory record is accepted.
    pub fn seal_vcpu_state(&mut self, index: u32, state: &[u8], out: &mut [u8]) -> Result<usize> {
        let seq = self.sealer.reserve(0)?;
        self.require(&[SourceState::Streaming, SourceState::SealingState], "seal vCPU state")?;
        if !self.round.untouched() {
            return Err(Error::State {
                op: "seal vCPU state before the round's RoundEnd",
                state: self.state.name(),
            });
        }
        if index as usize >= MAX_VCPUS {
            return Err(Error::VcpuIndex(index.into()));
        }
        if state.is_empty() || state.len() > MAX_VCPU_STATE_LEN {
            return Err(Error::Length {
                what: "vCPU state",
                expected: MAX_VCPU_STATE_LEN,
                got: state.len(),
            });
        }
        let len = state.len() + RECORD_OVERHEAD;
        crate::wire::check_room(out, len)?;
        let record = &mut out[..len];
        record[HEADER_LEN..HEADER_LEN + state.len()].copy_from_slice(state);
        self.sealer
            .cipher()
            .seal(seq, RecordType::VcpuState, self.epoch, index.into(), record)?;
        self.state = SourceState::SealingState;
        self.vcpus += 1;
        Ok(len)
    }

    /// Seals the Final record: the totals, and in verified mode the
    /// [`crate::MemoryDigest`] of the paused guest's private memory. From
    /// here on the source may resume only with a valid abort token.
    pub fn seal_final(
        &mut self,
        memory_digest: Option<&[u8; 32]>,
        out: &mut [u8; FINAL_RECORD_LEN],
    ) -> Result<Summary> {
        let seq = self.sealer.reserve(0)?;
        self.require(&[SourceState::SealingState], "seal the final record")?;
        // From the moment a Final may exist, the source must not resume.
        self.state = SourceState::FinalSealed;
        let summary = Summary {
            rounds: self.rounds,
            vcpus: self.vcpus,
            total_pages: self.total_pages,
            lanes: self.round.lanes(),
            memory_digest: memory_digest.copied(),
        };
        self.summary = Some(summary);
        out[HEADER_LEN..HEADER_LEN + crate::record::payload::SUMMARY_LEN].copy_from_slice(&summary.encode());
        self.sealer.cipher().seal(seq, RecordType::Final, self.epoch, 0, out)?;
        Ok(summary)
    }

    /// Reads the destination's Commit. On success the session is
    /// [`SourceState::Committed`] for good. A bad record changes nothing.
    pub fn read_commit(&mut self, record: &mut [u8]) -> Result<()> {
        self.require(&[SourceState::FinalSealed], "accept a commit")?;
        let (header, payload) = self.control.open(record)?;
        if header.record_type != RecordType::Commit {
            return Err(Error::UnexpectedRecord {
                got: header.record_type as u8,
                during: "on the control stream",
            });
        }
        let summary = self.summary.expect("set with FinalSealed");
        if header.address != 0 || header.epoch != self.epoch || payload != summary.encode() {
            return Err(Error::CommitMismatch);
        }
        self.state = SourceState::Committed;
        Ok(())
    }

    /// Reads an abort token; returns the destination's reason code. On
    /// success the session is [`SourceState::Aborted`] and the guest may
    /// resume. Refused after a Commit was seen.
    pub fn read_abort(&mut self, record: &mut [u8]) -> Result<u32> {
        if self.state == SourceState::Committed {
            return Err(Error::AlreadyCommitted);
        }
        let (header, payload) = self.abort.open(record)?;
        if header.record_type != RecordType::AbortToken {
            return Err(Error::UnexpectedRecord {
                got: header.record_type as u8,
                during: "on the abort stream",
            });
        }
        if header.address != 0 || header.epoch != 0 {
            return Err(Error::Invalid {
                what: "abort token header (address and epoch must be 0)",
            });
        }
        let reason = decode_abort(payload)?;
        self.state = SourceState::Aborted;
        Ok(reason)
    }

    #[cfg(test)]
    pub(crate) fn sealer_for_test(&mut self) -> &mut RecordSealer {
        &mut self.sealer
    }
}
