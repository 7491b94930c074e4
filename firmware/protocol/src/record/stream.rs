//! One direction of sealed records: its key, its stream id, its counter.
//!
//! A stream's key seals nothing else (each direction and purpose has its
//! own key), and its counter only grows: [`RecordSealer::reserve`] takes
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

/// nonce = stream id (u32 LE) ‖ sequence (u64 LE).
pub(crate) fn nonce(stream: StreamId, sequence: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&(stream as u32).to_le_bytes());
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

struct StreamCipher {
    // Round keys and GHASH key zeroized on drop (aes-gcm "zeroize").
    cipher: Aes256Gcm,
    stream: StreamId,
    session_id: [u8; SESSION_ID_LEN],
}

impl StreamCipher {
    fn new(key: &[u8; KEY_LEN], stream: StreamId, session_id: &[u8; SESSION_ID_LEN]) -> Self {
        StreamCipher {
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)),
            stream,
            session_id: *session_id,
        }
    }
}

/// A sequence number taken from a sealer; sealing consumes it.
#[must_use]
pub(crate) struct Reserved(u64);

/// Seals records of one stream.
pub(crate) struct RecordSealer {
    c: StreamCipher,
    next: u64,
}

impl RecordSealer {
    pub(crate) fn new(key: &[u8; KEY_LEN], stream: StreamId, session_id: &[u8; SESSION_ID_LEN]) -> Self {
        RecordSealer {
            c: StreamCipher::new(key, stream, session_id),
            next: 0,
        }
    }

    /// Takes the next sequence number for good.
    pub(crate) fn reserve(&mut self) -> Result<Reserved> {
        if self.next == u64::MAX {
            return Err(Error::CounterExhausted);
        }
        let seq = self.next;
        self.next += 1;
        Ok(Reserved(seq))
    }

    /// The number the next [`reserve`](Self::reserve) returns.
    pub(crate) fn next_sequence(&self) -> u64 {
        self.next
    }

    #[cfg(test)]
    pub(crate) fn set_next_for_test(&mut self, next: u64) {
        self.next = next;
    }

    /// Seals `record` in place. `record` is the whole record: header space,
    /// the plaintext payload at [`HEADER_LEN`], tag space at the end.
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
            length: len as u32,
            sequence: seq.0,
            address,
            epoch,
        };
        let head = header.encode();
        record[..HEADER_LEN].copy_from_slice(&head);
        let (_, rest) = record.split_at_mut(HEADER_LEN);
        let (payload, tag_out) = rest.split_at_mut(len);
        let tag = self
            .c
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce(self.c.stream, seq.0)),
                &aad(&self.c.session_id, &head),
                InOutBuf::from(payload),
            )
            .map_err(|_| Error::Invalid {
                what: "record payload (too long for AES-GCM)",
            })?;
        tag_out.copy_from_slice(&tag);
        Ok(header)
    }
}

/// Opens records of one stream, strictly in sequence.
pub(crate) struct RecordOpener {
    c: StreamCipher,
    next: u64,
}

impl RecordOpener {
    pub(crate) fn new(key: &[u8; KEY_LEN], stream: StreamId, session_id: &[u8; SESSION_ID_LEN]) -> Self {
        RecordOpener {
            c: StreamCipher::new(key, stream, session_id),
            next: 0,
        }
    }

    /// Checks and decrypts `record` in place; returns its header and the
    /// plaintext payload (inside `record`). On any error the record's
    /// bytes are unchanged or unusable, and the counter does not move.
    pub(crate) fn open<'r>(&mut self, record: &'r mut [u8]) -> Result<(RecordHeader, &'r [u8])> {
        let header = RecordHeader::decode(record)?;
        if record.len() != header.record_len() {
            return Err(Error::Length {
                what: "record",
                expected: header.record_len(),
                got: record.len(),
            });
        }
        if header.sequence != self.next {
            return Err(Error::Sequence {
                expected: self.next,
                got: header.sequence,
            });
        }
        let len = header.length as usize;
        let head: [u8; HEADER_LEN] = record[..HEADER_LEN].try_into().expect("decoded above");
        let (_, rest) = record.split_at_mut(HEADER_LEN);
        let (payload, tag) = rest.split_at_mut(len);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().expect("length checked above");
        self.c
            .cipher
            .decrypt_inout_detached(
                &Nonce::from(nonce(self.c.stream, header.sequence)),
                &aad(&self.c.session_id, &head),
                InOutBuf::from(&mut *payload),
                &Tag::from(tag),
            )
            .map_err(|_| Error::RecordAuthentication)?;
        self.next = self.next.checked_add(1).ok_or(Error::CounterExhausted)?;
        Ok((header, &*payload))
    }
}
