//! Sealed records: the unit in which memory, vCPU state and the end of a
//! migration travel after the handshake.
//!
//! Every record is `header (32) ‖ AES-256-GCM ciphertext of the payload ‖
//! tag (16)`. The header is sent in the clear (the relaying VMM may read
//! it, e.g. to count pages) but it is the GCM associated data, together
//! with the session id, so no field of it can be changed:
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! | 0      | 1    | record type ([`RecordType`])                                |
//! | 1      | 1    | protocol version, 1                                         |
//! | 2      | 2    | lane: which of the stream's lanes (0 without lanes)         |
//! | 4      | 4    | payload length (plaintext bytes, tag excluded)              |
//! | 8      | 8    | sequence number: 0, 1, 2, … per stream; also the nonce's counter |
//! | 16     | 8    | address: guest-physical page address (Page, ZeroPages), vCPU index (VcpuState), else 0 |
//! | 24     | 4    | epoch: the pre-copy round the record belongs to             |
//! | 28     | 4    | reserved, 0                                                 |
//!
//! - nonce (12 bytes) = (stream id | lane << 16) (u32 LE) ‖ sequence (u64 LE)
//! - AAD (48 bytes) = session id (16) ‖ header (32)
//!
//! Module [`payload`] defines each type's payload; the private `stream` holds the
//! sealer and opener of one stream. A page record is 4144 bytes for 4096
//! bytes of guest memory: 48 bytes (1.17 %) of overhead, header fixed so
//! a page is sealed in place at a fixed offset.

pub mod payload;
pub(crate) mod round_lanes;
pub(crate) mod stream;

pub use stream::{RecordCipher, MAX_LANES};

use crate::error::{Error, Result};
use crate::suite::PROTOCOL_VERSION;
use crate::wire::{Reader, Writer};

/// Bytes of a record header.
pub const HEADER_LEN: usize = 32;
/// Bytes of the GCM tag that ends every record.
pub const TAG_LEN: usize = 16;
/// Bytes every record adds to its payload.
pub const RECORD_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Bytes of a guest page.
pub const PAGE_SIZE: usize = 4096;
/// Bytes of a Page record.
pub const PAGE_RECORD_LEN: usize = PAGE_SIZE + RECORD_OVERHEAD;
/// Bytes of a ZeroPages or RoundEnd record (8-byte count).
pub const COUNT_RECORD_LEN: usize = payload::COUNT_LEN + RECORD_OVERHEAD;
/// Bytes of a Final record.
pub const FINAL_RECORD_LEN: usize = payload::SUMMARY_LEN + RECORD_OVERHEAD;
/// Bytes of a Commit record (it echoes the Final's payload).
pub const COMMIT_RECORD_LEN: usize = payload::SUMMARY_LEN + RECORD_OVERHEAD;
/// Bytes of an AbortToken record.
pub const ABORT_RECORD_LEN: usize = payload::ABORT_LEN + RECORD_OVERHEAD;
/// Largest vCPU state one VcpuState record carries.
pub const MAX_VCPU_STATE_LEN: usize = 64 * 1024;
/// Largest record of any type.
pub const MAX_RECORD_LEN: usize = MAX_VCPU_STATE_LEN + RECORD_OVERHEAD;

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// S → D: one 4 KiB guest page; address = its guest-physical address.
    Page = 1,
    /// S → D: a run of pages that are all zero; address = the first page,
    /// payload = the page count (u64).
    ZeroPages = 2,
    /// S → D: the end of round `epoch`; payload = pages sent in it (u64).
    RoundEnd = 3,
    /// S → D: one vCPU's state (opaque to the protocol); address = the
    /// vCPU index.
    VcpuState = 4,
    /// S → D: totals of the whole migration ([`payload::Summary`]).
    Final = 5,
    /// D → S, control stream: "I committed": echoes the Final's payload.
    Commit = 6,
    /// D → S, abort stream: the destination gives up before committing;
    /// the source may resume.
    AbortToken = 7,
}

impl RecordType {
    /// The type with this code.
    pub fn from_u8(code: u8) -> Result<RecordType> {
        use RecordType::*;
        [Page, ZeroPages, RoundEnd, VcpuState, Final, Commit, AbortToken]
            .into_iter()
            .find(|t| *t as u8 == code)
            .ok_or(Error::UnknownRecordType(code))
    }

    /// The payload lengths this type allows (inclusive).
    pub fn payload_len_range(self) -> (usize, usize) {
        match self {
            RecordType::Page => (PAGE_SIZE, PAGE_SIZE),
            RecordType::ZeroPages | RecordType::RoundEnd => (payload::COUNT_LEN, payload::COUNT_LEN),
            RecordType::VcpuState => (1, MAX_VCPU_STATE_LEN),
            RecordType::Final | RecordType::Commit => (payload::SUMMARY_LEN, payload::SUMMARY_LEN),
            RecordType::AbortToken => (payload::ABORT_LEN, payload::ABORT_LEN),
        }
    }

    fn check_payload_len(self, len: usize) -> Result<()> {
        let (min, max) = self.payload_len_range();
        if len < min || len > max {
            return Err(Error::Length {
                what: "record payload",
                expected: if len < min { min } else { max },
                got: len,
            });
        }
        Ok(())
    }
}

/// A record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the record carries.
    pub record_type: RecordType,
    /// The lane of its stream (0 for a stream without lanes).
    pub lane: u16,
    /// Payload bytes (plaintext; the record is this plus [`RECORD_OVERHEAD`]).
    pub length: u32,
    /// Position in its stream.
    pub sequence: u64,
    /// Guest-physical address, vCPU index or 0, by type.
    pub address: u64,
    /// Pre-copy round.
    pub epoch: u32,
}

impl RecordHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.write(&mut Writer::new(&mut out))
            .expect("the fields add up to HEADER_LEN");
        out
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<()> {
        w.u8(self.record_type as u8)?;
        w.u8(PROTOCOL_VERSION as u8)?;
        w.u16(self.lane)?;
        w.u32(self.length)?;
        w.u64(self.sequence)?;
        w.u64(self.address)?;
        w.u32(self.epoch)?;
        w.u32(0)
    }

    /// Reads a header from the first [`HEADER_LEN`] bytes of `record`,
    /// checking everything that does not need the key: type, version,
    /// reserved fields, and the payload length the type allows.
    pub fn decode(record: &[u8]) -> Result<RecordHeader> {
        let head = record.get(..HEADER_LEN).ok_or(Error::Length {
            what: "record header",
            expected: HEADER_LEN,
            got: record.len(),
        })?;
        let mut r = Reader::new(head, "record header");
        let record_type = RecordType::from_u8(r.u8()?)?;
        let version = r.u8()?;
        if u16::from(version) != PROTOCOL_VERSION {
            return Err(Error::RecordVersion(version));
        }
        let lane = r.u16()?;
        let length = r.u32()?;
        let sequence = r.u64()?;
        let address = r.u64()?;
        let epoch = r.u32()?;
        r.reserved(4, "record header")?;
        r.finish()?;
        record_type.check_payload_len(length as usize)?;
        Ok(RecordHeader {
            record_type,
            lane,
            length,
            sequence,
            address,
            epoch,
        })
    }

    /// Bytes of the whole record.
    pub fn record_len(&self) -> usize {
        self.length as usize + RECORD_OVERHEAD
    }
}

/// Bytes of the record that starts `buf`, read from its header: how a
/// caller splits a buffer holding several records back to back.
pub fn record_len(buf: &[u8]) -> Result<usize> {
    Ok(RecordHeader::decode(buf)?.record_len())
}
