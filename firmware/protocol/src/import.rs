//! The destination's import checker: every record the source sends passes
//! through it, in order, before anything reaches guest memory.
//!
//! It opens each record (sequence, key, session, header all authenticated)
//! and enforces the migration's shape:
//!
//! - sequence numbers strictly +1 within each lane (a dropped, replayed,
//!   duplicated or reordered record fails; records of different lanes may
//!   interleave in any order);
//! - every record carries the open round's epoch; a round closes only when
//!   every lane sent its RoundEnd, so epochs never go backwards or skip,
//!   and a lane that ended the round carries nothing more until it closed;
//! - a page (or zero run) is accepted only if its epoch is newer than the
//!   last one imported at that address: the caller's epoch table holds,
//!   per 4 KiB guest frame, `last imported epoch + 1` (0 = never);
//!   (the table is shared by all lanes, so a page sent on two lanes in one
//!   round fails too);
//! - each RoundEnd's count equals the pages received on its lane in the
//!   round;
//! - vCPU states come on lane 0 after the last round closed, each index
//!   once; after the first one no memory record is accepted;
//! - Final (lane 0): its rounds, pages, vCPU count and lanes equal what
//!   arrived, the vCPU indices being exactly `0..vcpus`;
//! - in verified mode the caller's memory digest equals the source's.
//!
//! Any failure poisons the checker for good: the destination can then
//! only mint an abort token. [`ImportChecker::commit`] works only after a
//! checked Final, and it destroys the abort key before it seals the
//! Commit record: once committed, no abort token can ever exist.

use crate::error::{Error, Result};
use crate::handshake::DestinationSession;
use crate::keys::SESSION_ID_LEN;
use crate::policy::PeerIdentity;
use crate::record::payload::{decode_count, encode_abort, Summary, ABORT_LEN, SUMMARY_LEN};
use crate::record::round_lanes::RoundLanes;
use crate::record::stream::{RecordCipher, RecordOpener, RecordSealer, StreamId};
use crate::record::RecordHeader;
use crate::record::{RecordType, ABORT_RECORD_LEN, COMMIT_RECORD_LEN, HEADER_LEN, PAGE_SIZE};
use crate::MAX_VCPUS;
use subtle::ConstantTimeEq;

/// What the caller must do with a record the checker accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum ImportEvent<'r> {
    /// Write `data` to the private page at `gpa`.
    Page {
        /// Guest-physical address, 4 KiB aligned.
        gpa: u64,
        /// The page's content (decrypted in the record buffer).
        data: &'r [u8; PAGE_SIZE],
    },
    /// Zero the `count` private pages from `gpa`.
    ZeroPages {
        /// First page's guest-physical address.
        gpa: u64,
        /// Number of pages.
        count: u64,
    },
    /// Lane `lane` ended round `epoch` with `pages` pages, all received
    /// (the round closes when every lane ended it).
    RoundEnd {
        /// The round that ended.
        epoch: u32,
        /// The lane that ended it.
        lane: u16,
        /// Pages that lane carried in it.
        pages: u64,
    },
    /// vCPU `index`'s state (opaque to the protocol).
    VcpuState {
        /// The vCPU index.
        index: u32,
        /// Its state bytes (decrypted in the record buffer).
        state: &'r [u8],
    },
    /// Everything announced arrived. If `summary.memory_digest` is set
    /// (verified mode), compute the [`crate::MemoryDigest`] of the private
    /// memory and pass it to [`ImportChecker::commit`].
    Complete(Summary),
}

/// A record [`ImportChecker::admit`] took as its lane's next: decrypt it
/// with [`Admitted::open`] (with any copy of the stream's cipher, on any
/// vCPU), then hand the result to [`ImportChecker::settle`].
#[must_use]
#[derive(Debug)]
pub struct Admitted {
    header: RecordHeader,
}

impl Admitted {
    /// The record's header (authenticated only once opened).
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// Verifies and decrypts the admitted `record` in place (private
    /// memory only); returns its plaintext payload.
    pub fn open<'r>(&self, cipher: &RecordCipher, record: &'r mut [u8]) -> Result<&'r [u8]> {
        if RecordHeader::decode(record)? != self.header {
            return Err(Error::Invalid {
                what: "record (not the one admitted)",
            });
        }
        cipher.decrypt(&self.header, record)
    }
}

/// Where the checker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportPhase {
    /// Memory records are accepted.
    Memory,
    /// vCPU states (and then Final) are accepted.
    VcpuStates,
    /// Final checked: ready to commit.
    Complete,
    /// Committed: the guest runs here; no abort possible.
    Committed,
    /// An abort token was minted: nothing more is accepted.
    Aborted,
    /// A check failed: only an abort token can be minted.
    Poisoned,
}

impl ImportPhase {
    fn name(self) -> &'static str {
        match self {
            ImportPhase::Memory => "memory",
            ImportPhase::VcpuStates => "vCPU states",
            ImportPhase::Complete => "complete",
            ImportPhase::Committed => "committed",
            ImportPhase::Aborted => "aborted",
            ImportPhase::Poisoned => "poisoned",
        }
    }
}

impl core::fmt::Display for ImportPhase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

const VCPU_WORDS: usize = MAX_VCPUS / 64;

/// The destination's checker over one session's record stream.
pub struct ImportChecker<'t> {
    opener: RecordOpener,
    control: RecordSealer,
    // None once committed (or the token was minted): the key is gone.
    abort: Option<RecordSealer>,
    abort_token: Option<[u8; ABORT_RECORD_LEN]>,
    session_id: [u8; SESSION_ID_LEN],
    peer: PeerIdentity,
    epochs: &'t mut [u32],
    phase: ImportPhase,
    epoch: u32,
    /// The open round's pages per lane and the lanes that ended it.
    round: RoundLanes,
    /// Bit `l`: lane `l` has a record admitted and not settled.
    in_flight: u64,
    total_pages: u64,
    rounds: u32,
    vcpus_seen: [u64; VCPU_WORDS],
    vcpus: u32,
    summary: Option<Summary>,
}

impl<'t> ImportChecker<'t> {
    /// A checker for `session`. `epochs` has one entry per 4 KiB guest
    /// frame (index = gpa / 4096, so its length bounds the addresses
    /// accepted); the checker zeroes it. The caller must still check that
    /// each accepted address is private guest RAM.
    pub fn new(session: DestinationSession, epochs: &'t mut [u32]) -> Self {
        epochs.fill(0);
        let keys = &session.keys;
        let id = keys.session_id;
        ImportChecker {
            opener: RecordOpener::new(&keys.s2d_records, StreamId::S2dRecords, &id),
            control: RecordSealer::new(&keys.d2s_control, StreamId::D2sControl, &id),
            abort: Some(RecordSealer::new(&keys.d2s_abort, StreamId::D2sAbort, &id)),
            abort_token: None,
            session_id: id,
            peer: session.peer,
            epochs,
            phase: ImportPhase::Memory,
            epoch: 0,
            round: RoundLanes::new(),
            in_flight: 0,
            total_pages: 0,
            rounds: 0,
            vcpus_seen: [0; VCPU_WORDS],
            vcpus: 0,
            summary: None,
        }
        // `session` (and its key schedule) is dropped and zeroized here.
    }

    /// Where the checker stands.
    pub fn phase(&self) -> ImportPhase {
        self.phase
    }

    /// The open round.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Pages received in ended rounds.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// Lanes of the source's record stream.
    pub fn lanes(&self) -> u16 {
        self.round.lanes()
    }

    /// Expects the source's records on `lanes` lanes (1..=[`MAX_LANES`](crate::record::MAX_LANES));
    /// only before the first record. The count may come from the host:
    /// the Final states the source's, and a different one is refused
    /// (a lane too many never ends its rounds, one too few is refused by
    /// its first record).
    pub fn set_lanes(&mut self, lanes: u16) -> Result<()> {
        self.refuse_if_done()?;
        if self.phase != ImportPhase::Memory || self.opener.any_opened() {
            return Err(Error::State {
                op: "set the lanes after the first record",
                state: self.phase.name(),
            });
        }
        self.opener.set_lanes(lanes)?;
        self.round.set_lanes(lanes);
        Ok(())
    }

    /// The session id.
    pub fn session_id(&self) -> &[u8; SESSION_ID_LEN] {
        &self.session_id
    }

    /// The verified source.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    fn refuse_if_done(&self) -> Result<()> {
        match self.phase {
            ImportPhase::Poisoned => Err(Error::Poisoned),
            ImportPhase::Aborted => Err(Error::Aborted),
            ImportPhase::Committed => Err(Error::State {
                op: "import a record",
                state: "committed",
            }),
            _ => Ok(()),
        }
    }

    /// Opens and checks the next record (the whole record, exactly; see
    /// [`crate::record::record_len`] to split a buffer). The plaintext is
    /// decrypted in place and the event borrows it, so `record` must be
    /// private memory (see the crate doc).
    ///
    /// This is [`Self::admit`], [`Admitted::open`] and [`Self::settle`] in
    /// one call; several vCPUs opening lanes in parallel make those calls
    /// themselves, the checker under a lock and the decryption outside it.
    pub fn open<'r>(&mut self, record: &'r mut [u8]) -> Result<ImportEvent<'r>> {
        let admitted = self.admit(record)?;
        let opened = admitted.open(self.opener.cipher(), record);
        self.settle(admitted, opened)
    }

    /// A copy of the source's record cipher, for a vCPU that decrypts
    /// admitted records of its lane in parallel with others.
    pub fn cipher(&self) -> RecordCipher {
        self.opener.cipher().clone()
    }

    /// Admits `record` as its lane's next: checks its header, length,
    /// lane and sequence number, and takes the number. Its lane admits
    /// nothing more until [`Self::settle`] has had it (so each lane is
    /// checked strictly in order, while lanes interleave freely), and the
    /// checker does not commit while a record is admitted and unsettled.
    /// Errors poison the checker.
    pub fn admit(&mut self, record: &[u8]) -> Result<Admitted> {
        self.refuse_if_done()?;
        let result = self.admit_inner(record);
        if result.is_err() {
            self.phase = ImportPhase::Poisoned;
        }
        result
    }

    fn admit_inner(&mut self, record: &[u8]) -> Result<Admitted> {
        let header = self.opener.check_next(record)?;
        if self.in_flight & (1 << header.lane) != 0 {
            return Err(Error::State {
                op: "admit a record before its lane's previous one settled",
                state: self.phase.name(),
            });
        }
        self.opener.advance(&header)?;
        self.in_flight |= 1 << header.lane;
        Ok(Admitted { header })
    }

    /// Settles an admitted record once [`Admitted::open`] has decrypted
    /// it (`opened`): all of the protocol's checks on its content, in the
    /// order records settle. A failed decryption, or any check, poisons the
    /// checker.
    pub fn settle<'r>(&mut self, admitted: Admitted, opened: Result<&'r [u8]>) -> Result<ImportEvent<'r>> {
        let header = admitted.header;
        let lane_bit = 1u64 << header.lane;
        if self.in_flight & lane_bit == 0 {
            self.phase = ImportPhase::Poisoned;
            return Err(Error::State {
                op: "settle a record that was not admitted",
                state: self.phase.name(),
            });
        }
        self.in_flight &= !lane_bit;
        self.refuse_if_done()?;
        let result = opened.and_then(|payload| self.accept(header, payload));
        if result.is_err() {
            self.phase = ImportPhase::Poisoned;
        }
        result
    }

    fn accept<'r>(&mut self, header: RecordHeader, payload: &'r [u8]) -> Result<ImportEvent<'r>> {
        let lane = header.lane;
        if header.epoch != self.epoch {
            return Err(Error::Epoch {
                open: self.epoch,
                got: header.epoch,
            });
        }
        let during = match self.phase {
            ImportPhase::Memory => "while memory is imported",
            ImportPhase::VcpuStates => "after the first vCPU state",
            _ => "after the final record",
        };
        let unexpected = Error::UnexpectedRecord {
            got: header.record_type as u8,
            during,
        };
        match header.record_type {
            RecordType::Page => {
                if self.phase != ImportPhase::Memory {
                    return Err(unexpected);
                }
                self.round.check_open(lane, self.epoch)?;
                self.mark(header.address, 1)?;
                self.round.add(lane, 1);
                Ok(ImportEvent::Page {
                    gpa: header.address,
                    data: payload.try_into().expect("page length checked with the header"),
                })
            }
            RecordType::ZeroPages => {
                if self.phase != ImportPhase::Memory {
                    return Err(unexpected);
                }
                let count = decode_count(payload)?;
                self.round.check_open(lane, self.epoch)?;
                self.mark(header.address, count)?;
                self.round.add(lane, count);
                Ok(ImportEvent::ZeroPages {
                    gpa: header.address,
                    count,
                })
            }
            RecordType::RoundEnd => {
                if self.phase != ImportPhase::Memory {
                    return Err(unexpected);
                }
                if header.address != 0 {
                    return Err(Error::Invalid {
                        what: "RoundEnd address (must be 0)",
                    });
                }
                self.round.check_open(lane, self.epoch)?;
                let claimed = decode_count(payload)?;
                let received = self.round.lane_pages(lane);
                if claimed != received {
                    return Err(Error::RoundCount {
                        epoch: self.epoch,
                        claimed,
                        received,
                    });
                }
                let ended = self.epoch;
                let next = ended.checked_add(1).filter(|&e| e < u32::MAX).ok_or(Error::Invalid {
                    what: "epoch (too many rounds)",
                })?;
                if let Some(round_pages) = self.round.end(lane) {
                    self.epoch = next;
                    self.rounds += 1;
                    self.total_pages += round_pages;
                }
                Ok(ImportEvent::RoundEnd {
                    epoch: ended,
                    lane,
                    pages: claimed,
                })
            }
            RecordType::VcpuState => {
                let allowed = lane == 0
                    && match self.phase {
                        ImportPhase::Memory => self.round.untouched(),
                        ImportPhase::VcpuStates => true,
                        _ => false,
                    };
                if !allowed {
                    return Err(unexpected);
                }
                if header.address >= MAX_VCPUS as u64 {
                    return Err(Error::VcpuIndex(header.address));
                }
                let index = header.address as u32;
                let (word, bit) = (index as usize / 64, 1u64 << (index % 64));
                if self.vcpus_seen[word] & bit != 0 {
                    return Err(Error::DuplicateVcpu(index));
                }
                self.vcpus_seen[word] |= bit;
                self.vcpus += 1;
                self.phase = ImportPhase::VcpuStates;
                Ok(ImportEvent::VcpuState { index, state: payload })
            }
            RecordType::Final => {
                if self.phase != ImportPhase::VcpuStates || header.address != 0 || lane != 0 {
                    return Err(unexpected);
                }
                let summary = Summary::decode(payload)?;
                self.check_final(&summary)?;
                self.summary = Some(summary);
                self.phase = ImportPhase::Complete;
                Ok(ImportEvent::Complete(summary))
            }
            RecordType::Commit | RecordType::AbortToken => Err(Error::UnexpectedRecord {
                got: header.record_type as u8,
                during: "on the source's stream",
            }),
        }
    }

    /// Records `count` pages from `gpa` as imported in the open epoch.
    fn mark(&mut self, gpa: u64, count: u64) -> Result<()> {
        if gpa % PAGE_SIZE as u64 != 0 {
            return Err(Error::Unaligned(gpa));
        }
        let first = gpa / PAGE_SIZE as u64;
        let end = first.checked_add(count).ok_or(Error::OutOfRange(gpa))?;
        if count == 0 || end > self.epochs.len() as u64 {
            return Err(if count == 0 {
                Error::Invalid {
                    what: "zero-page run of 0 pages",
                }
            } else {
                Error::OutOfRange(gpa)
            });
        }
        let stamp = self.epoch + 1;
        for (i, entry) in self.epochs[first as usize..end as usize].iter_mut().enumerate() {
            // entry = last imported epoch + 1 (0: never); newer means entry ≤ epoch.
            if *entry >= stamp {
                return Err(Error::StalePage {
                    gpa: gpa + i as u64 * PAGE_SIZE as u64,
                    epoch: self.epoch,
                });
            }
            *entry = stamp;
        }
        Ok(())
    }

    fn check_final(&self, summary: &Summary) -> Result<()> {
        if self.round.pages() != 0 {
            return Err(Error::RoundCount {
                epoch: self.epoch,
                claimed: 0,
                received: self.round.pages(),
            });
        }
        let checks = [
            ("lanes", u64::from(summary.lanes), u64::from(self.round.lanes())),
            ("rounds", u64::from(summary.rounds), u64::from(self.rounds)),
            ("pages", summary.total_pages, self.total_pages),
            ("vcpus", u64::from(summary.vcpus), u64::from(self.vcpus)),
        ];
        for (what, claimed, received) in checks {
            if claimed != received {
                return Err(Error::FinalMismatch {
                    what,
                    claimed,
                    received,
                });
            }
        }
        // As many distinct indices as vCPUs, none at or above the count:
        // exactly 0..vcpus.
        let highest = (0..MAX_VCPUS)
            .rev()
            .find(|&i| self.vcpus_seen[i / 64] & (1 << (i % 64)) != 0)
            .map_or(0, |i| i as u64 + 1);
        if highest != u64::from(summary.vcpus) {
            return Err(Error::FinalMismatch {
                what: "vcpus (highest index + 1)",
                claimed: u64::from(summary.vcpus),
                received: highest,
            });
        }
        Ok(())
    }

    /// Commits: checks completeness (and, in verified mode, that
    /// `memory_digest`, the caller's [`crate::MemoryDigest`] of its private
    /// memory, equals the source's), destroys the abort key, then seals
    /// the Commit record into `out`. After `Ok` the guest must run here
    /// and no abort token can ever be minted.
    pub fn commit(&mut self, memory_digest: Option<&[u8; 32]>, out: &mut [u8; COMMIT_RECORD_LEN]) -> Result<()> {
        self.refuse_if_done()?;
        let result = self.commit_inner(memory_digest, out);
        if result.is_err() && self.phase != ImportPhase::Committed {
            self.phase = ImportPhase::Poisoned;
        }
        result
    }

    fn commit_inner(&mut self, memory_digest: Option<&[u8; 32]>, out: &mut [u8; COMMIT_RECORD_LEN]) -> Result<()> {
        if self.phase != ImportPhase::Complete || self.in_flight != 0 {
            return Err(Error::Incomplete);
        }
        let summary = self.summary.expect("set with Complete");
        match (summary.memory_digest, memory_digest) {
            (Some(theirs), Some(ours)) => {
                if !bool::from(theirs.ct_eq(ours)) {
                    return Err(Error::DigestMismatch);
                }
            }
            (None, None) => {}
            (theirs, _) => {
                return Err(Error::DigestMode {
                    source_verified: theirs.is_some(),
                })
            }
        }
        // The one-way switch: the abort key is zeroized before the Commit
        // exists, so there is no moment where both could be produced.
        self.abort = None;
        self.phase = ImportPhase::Committed;
        let seq = self.control.reserve(0)?;
        out[HEADER_LEN..HEADER_LEN + SUMMARY_LEN].copy_from_slice(&summary.encode());
        self.control
            .cipher()
            .seal(seq, RecordType::Commit, self.epoch, 0, out)?;
        Ok(())
    }

    /// Mints the abort token (into `out`): the destination gives up, and
    /// the source may resume. Refused after commit. Once minted, nothing
    /// more is imported and commit is impossible; asking again returns the
    /// same token (`reason` of the first call).
    pub fn mint_abort(&mut self, reason: u32, out: &mut [u8; ABORT_RECORD_LEN]) -> Result<()> {
        if self.phase == ImportPhase::Committed {
            return Err(Error::AlreadyCommitted);
        }
        if let Some(token) = &self.abort_token {
            out.copy_from_slice(token);
            return Ok(());
        }
        // From here on nothing can commit, whatever happens below.
        self.phase = ImportPhase::Aborted;
        let mut sealer = self.abort.take().ok_or(Error::AlreadyCommitted)?;
        let seq = sealer.reserve(0)?;
        out[HEADER_LEN..HEADER_LEN + ABORT_LEN].copy_from_slice(&encode_abort(reason));
        sealer.cipher().seal(seq, RecordType::AbortToken, 0, 0, out)?;
        self.abort_token = Some(*out);
        Ok(())
    }
}
