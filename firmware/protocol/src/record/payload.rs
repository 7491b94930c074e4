//! The payloads of the fixed-size record types.
//!
//! | type       | payload (little-endian)                                          |
//! |------------|------------------------------------------------------------------|
//! | Page       | the 4096 bytes of the page                                       |
//! | ZeroPages  | count u64 (≥ 1): pages from the header's address on, all zero    |
//! | RoundEnd   | pages u64: pages (Page + ZeroPages counts) sent in the round     |
//! | VcpuState  | 1 to 65536 opaque bytes                                          |
//! | Final      | [`Summary`], 56 bytes                                            |
//! | Commit     | the Final's 56 bytes, echoed                                     |
//! | AbortToken | reason u32, reserved u32 (0)                                     |
//!
//! [`Summary`]: rounds u32, vCPUs u32, total pages u64, verified u8 (0/1),
//! extra lanes u16 (lanes of the record stream besides lane 0, so a
//! stream without lanes encodes as before), 5 reserved bytes (0), memory
//! digest 32 bytes (all zero unless verified).

use crate::error::{Error, Result};
use crate::record::MAX_LANES;
use crate::wire::{Reader, Writer};

/// Bytes of a ZeroPages or RoundEnd payload.
pub const COUNT_LEN: usize = 8;
/// Bytes of a Final or Commit payload.
pub const SUMMARY_LEN: usize = 56;
/// Bytes of an AbortToken payload.
pub const ABORT_LEN: usize = 8;

/// Reads an 8-byte count payload.
pub(crate) fn decode_count(payload: &[u8]) -> Result<u64> {
    let mut r = Reader::new(payload, "count payload");
    let n = r.u64()?;
    r.finish()?;
    Ok(n)
}

/// The totals of a migration, as the source's Final states them and the
/// destination's Commit echoes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Rounds ended (RoundEnd records).
    pub rounds: u32,
    /// vCPU states sent, indices `0..vcpus`.
    pub vcpus: u32,
    /// Pages sent in all rounds (Page records plus ZeroPages counts).
    pub total_pages: u64,
    /// Lanes of the record stream, 1..=[`MAX_LANES`].
    pub lanes: u16,
    /// Verified mode: the source's [`crate::MemoryDigest`] of its final memory.
    pub memory_digest: Option<[u8; 32]>,
}

impl Summary {
    /// The payload bytes.
    pub fn encode(&self) -> [u8; SUMMARY_LEN] {
        let mut out = [0u8; SUMMARY_LEN];
        self.write(&mut Writer::new(&mut out))
            .expect("the fields add up to SUMMARY_LEN");
        out
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<()> {
        w.u32(self.rounds)?;
        w.u32(self.vcpus)?;
        w.u64(self.total_pages)?;
        w.u8(self.memory_digest.is_some() as u8)?;
        w.u16(self.lanes.saturating_sub(1))?;
        w.zeros(5)?;
        w.bytes(&self.memory_digest.unwrap_or([0; 32]))
    }

    /// Reads the payload; the flag must be 0 or 1 and, without a digest,
    /// the digest field zero (one summary, one encoding).
    pub fn decode(payload: &[u8]) -> Result<Summary> {
        let mut r = Reader::new(payload, "final payload");
        let rounds = r.u32()?;
        let vcpus = r.u32()?;
        let total_pages = r.u64()?;
        let verified = r.u8()?;
        let lanes = r.u16()?.checked_add(1).filter(|&l| usize::from(l) <= MAX_LANES);
        r.reserved(5, "final payload")?;
        let digest: [u8; 32] = r.array()?;
        r.finish()?;
        let memory_digest = match verified {
            0 if digest == [0; 32] => None,
            0 => return Err(Error::Reserved { what: "final digest" }),
            1 => Some(digest),
            _ => {
                return Err(Error::Invalid {
                    what: "final verified flag",
                })
            }
        };
        Ok(Summary {
            rounds,
            vcpus,
            total_pages,
            lanes: lanes.ok_or(Error::Invalid {
                what: "final lane count (1 to 64)",
            })?,
            memory_digest,
        })
    }
}

/// An abort token's payload: why the destination gave up (informational;
/// the reason codes are the caller's).
pub(crate) fn encode_abort(reason: u32) -> [u8; ABORT_LEN] {
    let mut out = [0u8; ABORT_LEN];
    out[..4].copy_from_slice(&reason.to_le_bytes());
    out
}

/// Reads an abort token's payload; returns the reason.
pub(crate) fn decode_abort(payload: &[u8]) -> Result<u32> {
    let mut r = Reader::new(payload, "abort payload");
    let reason = r.u32()?;
    r.reserved(4, "abort payload")?;
    r.finish()?;
    Ok(reason)
}
