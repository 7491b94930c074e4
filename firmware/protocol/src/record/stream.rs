//! One direction of sealed records: its key, its stream id, and one
//! counter per lane.
//!
//! A stream's key seals nothing else (each direction and purpose has its
//! own key). The source's record stream may run on several lanes (one per
//! agent vCPU sealing in parallel): each lane has its own counter and its
//! own nonce prefix, `stream id | lane << 16`, so no two lanes can ever
//! use the same nonce under the shared key. Each counter only grows: [`RecordSealer::reserve`] takes
//! a sequence number for good before anything is checked or encrypted, so
//! a seal that fails or a record the caller abandons still used up its
//! number, and no (key, nonce) pair can ever be used twice. The counter
//! never wraps: at `u64::MAX` the sealer refuses. A consumed-but-unsent
//! number is a gap the destination reports as a dropped record: a stream
//! with a failure in it cannot continue, by design.

use super::{RecordHeader, RecordType, HEADER_LEN, RECORD_OVERHEAD, TAG_LEN};
use crate::error::{Error, Result};
use crate::keys::{KEY_LEN, SESSION_ID_LEN};
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of the associated data: session id ‖ header.
pub const AAD_LEN: usize = SESSION_ID_LEN + HEADER_LEN;

/// The streams of a session; the id is the nonce's first four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StreamId {
    /// Source → destination: pages, round ends, vCPU states, final.
    S2dRecords = 1,
    /// Destination → source: the Commit record.
    D2sControl = 2,
    /// Destination → source: the abort token.
    D2sAbort = 3,
}

/// Most lanes a stream has (one bit each in a `u64` of the sessions).
pub const MAX_LANES: usize = 64;

/// nonce = (stream id | lane << 16) (u32 LE) ‖ sequence (u64 LE). Lane 0's
/// nonces are those of a stream without lanes.
pub(crate) fn nonce(stream: StreamId, lane: u16, sequence: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&(stream as u32 | u32::from(lane) << 16).to_le_bytes());
    n[4..].copy_from_slice(&sequence.to_le_bytes());
    n
}

/// AAD = session id ‖ header bytes.
pub(crate) fn aad(session_id: &[u8; SESSION_ID_LEN], header: &[u8; HEADER_LEN]) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[..SESSION_ID_LEN].copy_from_slice(session_id);
    a[SESSION_ID_LEN..].copy_from_slice(header);
    a
}

/// A stream's cipher: its key schedule, stream id and session id. It only
/// seals or decrypts; sequence numbers and checks are its owners'. A copy
/// ([`Clone`]) lets another vCPU seal or open records of the same stream
/// in parallel, on its own lane; every copy zeroizes its round keys and
/// GHASH key on drop (aes-gcm's "zeroize").
#[derive(Clone)]
pub struct RecordCipher {
    cipher: Aes256Gcm,
    stream: StreamId,
    session_id: [u8; SESSION_ID_LEN],
}

impl RecordCipher {
    fn new(key: &[u8; KEY_LEN], stream: StreamId, session_id: &[u8; SESSION_ID_LEN]) -> Self {
        RecordCipher {
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)),
            stream,
            session_id: *session_id,
        }
    }

    /// Seals `record` in place with the number `seq` (see [`RecordSealer`]).
    /// `record` is the whole record: header space, the plaintext payload at
    /// [`HEADER_LEN`], tag space at the end.
    pub(crate) fn seal(
        &self,
        seq: Reserved,
        record_type: RecordType,
        epoch: u32,
        address: u64,
        record: &mut [u8],
    ) -> Result<RecordHeader> {
        let len = record.len().checked_sub(RECORD_OVERHEAD).ok_or(Error::BufferTooSmall {
            need: RECORD_OVERHEAD,
            have: record.len(),
        })?;
        record_type.check_payload_len(len)?;
        let header = RecordHeader {
            record_type,
            lane: seq.lane,
            length: len as u32,
            sequence: seq.sequence,
            address,
            epoch,
        };
        let head = header.encode();
        record[..HEADER_LEN].copy_from_slice(&head);
        let (_, rest) = record.split_at_mut(HEADER_LEN);
        let (payload, tag_out) = rest.split_at_mut(len);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce(self.stream, seq.lane, seq.sequence)),
                &aad(&self.session_id, &head),
                InOutBuf::from(payload),
            )
            .map_err(|_| Error::Invalid {
                what: "record payload (too long for AES-GCM)",
            })?;
        tag_out.copy_from_slice(&tag);
        Ok(header)
    }

    /// Verifies and decrypts `record` (whose `header` was decoded from it
    /// and its length checked) in place; returns the plaintext payload.
    pub(crate) fn decrypt<'r>(&self, header: &RecordHeader, record: &'r mut [u8]) -> Result<&'r [u8]> {
        let len = header.length as usize;
        if record.len() != header.record_len() {
            return Err(Error::Length {
                what: "record",
                expected: header.record_len(),
                got: record.len(),
            });
        }
        let head: [u8; HEADER_LEN] = record[..HEADER_LEN].try_into().expect("length checked above");
        let (_, rest) = record.split_at_mut(HEADER_LEN);
        let (payload, tag) = rest.split_at_mut(len);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().expect("length checked above");
        self.cipher
            .decrypt_inout_detached(
                &Nonce::from(nonce(self.stream, header.lane, header.sequence)),
                &aad(&self.session_id, &head),
                InOutBuf::from(&mut *payload),
                &Tag::from(tag),
            )
            .map_err(|_| Error::RecordAuthentication)?;
        Ok(&*payload)
    }
}

impl core::fmt::Debug for RecordCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the key schedule.
        f.debug_struct("RecordCipher")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// A lane's sequence number taken from a sealer; sealing consumes it.
#[must_use]
pub(crate) struct Reserved {
    lane: u16,
    sequence: u64,
}

/// A stream's lanes and each lane's next sequence number.
struct LaneCounters {
    lanes: u16,
    next: [u64; MAX_LANES],
}

impl LaneCounters {
    fn new() -> Self {
        LaneCounters {
            lanes: 1,
            next: [0; MAX_LANES],
        }
    }

    /// Spreads the stream over `lanes` lanes; only before any number was
    /// used (the callers check), 1..=[`MAX_LANES`].
    fn set_lanes(&mut self, lanes: u16) -> Result<()> {
        if lanes == 0 || usize::from(lanes) > MAX_LANES {
            return Err(Error::Invalid {
                what: "lane count (1 to 64)",
            });
        }
        self.lanes = lanes;
        Ok(())
    }

    /// Whether any lane's number was used.
    fn any_used(&self) -> bool {
        self.next.iter().any(|&n| n != 0)
    }

    /// `lane`'s index, refusing a lane the stream does not have.
    fn index(&self, lane: u16) -> Result<usize> {
        if lane >= self.lanes {
            return Err(Error::Lane {
                lane,
                lanes: self.lanes,
            });
        }
        Ok(usize::from(lane))
    }

    /// Lane `lane`'s next number.
    fn next(&self, lane: u16) -> Result<u64> {
        Ok(self.next[self.index(lane)?])
    }

    /// Lane `lane`'s next number, to take.
    fn next_mut(&mut self, lane: u16) -> Result<&mut u64> {
        let i = self.index(lane)?;
        Ok(&mut self.next[i])
    }
}

/// Seals records of one stream.
pub(crate) struct RecordSealer {
    c: RecordCipher,
    counters: LaneCounters,
}

impl RecordSealer {
    pub(crate) fn new(key: &[u8; KEY_LEN], stream: StreamId, session_id: &[u8; SESSION_ID_LEN]) -> Self {
        RecordSealer {
            c: RecordCipher::new(key, stream, session_id),
            counters: LaneCounters::new(),
        }
    }

    /// Spreads the stream over `lanes` lanes (1..=[`MAX_LANES`]); only
    /// before any number was taken (the caller checks).
    pub(crate) fn set_lanes(&mut self, lanes: u16) -> Result<()> {
        self.counters.set_lanes(lanes)
    }

    /// Takes lane `lane`'s next sequence number for good.
    pub(crate) fn reserve(&mut self, lane: u16) -> Result<Reserved> {
        let next = self.counters.next_mut(lane)?;
        if *next == u64::MAX {
            return Err(Error::CounterExhausted);
        }
        let sequence = *next;
        *next += 1;
        Ok(Reserved { lane, sequence })
    }

    /// Whether any lane's number was taken.
    pub(crate) fn any_taken(&self) -> bool {
        self.counters.any_used()
    }

    /// The number lane `lane`'s next [`reserve`](Self::reserve) returns.
    pub(crate) fn next_sequence(&self, lane: u16) -> u64 {
        self.counters.next(lane).unwrap_or(0)
    }

    #[cfg(test)]
    pub(crate) fn set_next_for_test(&mut self, next: u64) {
        self.counters.next[0] = next;
    }

    /// The stream's cipher: it seals with the numbers [`Self::reserve`]
    /// takes, and copies of it seal on other vCPUs.
    pub(crate) fn cipher(&self) -> &RecordCipher {
        &self.c
    }
}

/// Opens records of one stream, strictly in sequence within each lane
/// (records of different lanes may interleave in any order).
pub(crate) struct RecordOpener {
    c: RecordCipher,
    counters: LaneCounters,
}

impl RecordOpener {
    pub(crate) fn new(key: &[u8; KEY_LEN], stream: StreamId, session_id: &[u8; SESSION_ID_LEN]) -> Self {
        RecordOpener {
            c: RecordCipher::new(key, stream, session_id),
            counters: LaneCounters::new(),
        }
    }

    /// Accepts records on `lanes` lanes (1..=[`MAX_LANES`]); only before
    /// any was opened (the caller checks).
    pub(crate) fn set_lanes(&mut self, lanes: u16) -> Result<()> {
        self.counters.set_lanes(lanes)
    }

    /// Whether any record was opened.
    pub(crate) fn any_opened(&self) -> bool {
        self.counters.any_used()
    }

    /// The stream's cipher, to copy for another vCPU.
    pub(crate) fn cipher(&self) -> &RecordCipher {
        &self.c
    }

    /// Checks `record`'s header, length, lane and sequence number (the
    /// lane's next), without decrypting or taking the number.
    pub(crate) fn check_next(&self, record: &[u8]) -> Result<RecordHeader> {
        let header = RecordHeader::decode(record)?;
        if record.len() != header.record_len() {
            return Err(Error::Length {
                what: "record",
                expected: header.record_len(),
                got: record.len(),
            });
        }
        let next = self.counters.next(header.lane)?;
        if header.sequence != next {
            return Err(Error::Sequence {
                expected: next,
                got: header.sequence,
            });
        }
        Ok(header)
    }

    /// Takes `header`'s number (checked by [`Self::check_next`]).
    pub(crate) fn advance(&mut self, header: &RecordHeader) -> Result<()> {
        let next = self.counters.next_mut(header.lane)?;
        *next = next.checked_add(1).ok_or(Error::CounterExhausted)?;
        Ok(())
    }

    /// Checks and decrypts `record` in place; returns its header and the
    /// plaintext payload (inside `record`). On any error the record's
    /// bytes are unchanged or unusable, and the counter does not move.
    pub(crate) fn open<'r>(&mut self, record: &'r mut [u8]) -> Result<(RecordHeader, &'r [u8])> {
        let header = self.check_next(record)?;
        let payload = self.c.decrypt(&header, record)?;
        self.advance(&header)?;
        Ok((header, payload))
    }
}
