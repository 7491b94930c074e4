//! The fixed frame header, and reading/writing whole frames.

use super::codec;
use super::{Message, MessageKind, ProtocolError, PROTOCOL_VERSION};
use std::io::{self, Read, Write};

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 24;

/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"CVMG";

/// A decoded, checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload is.
    pub kind: MessageKind,
    /// Flag bits (none defined in version 1).
    pub flags: u32,
    /// Payload bytes that follow.
    pub len: u32,
    /// Sequence number in this direction.
    pub sequence: u64,
}

impl FrameHeader {
    /// The 24 header bytes (module doc of [`super`] for the layout).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        b
    }

    /// Checks header bytes in the spec's order: magic, version, sequence,
    /// kind, flags, length against the kind's cap.
    pub fn decode(b: &[u8; HEADER_LEN], expected_sequence: u64) -> Result<Self, ProtocolError> {
        let found: [u8; 4] = [b[0], b[1], b[2], b[3]];
        if found != MAGIC {
            return Err(ProtocolError::BadMagic { found });
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::WrongVersion {
                found: version,
                expected: PROTOCOL_VERSION,
            });
        }
        let sequence = u64::from_le_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]);
        if sequence != expected_sequence {
            return Err(ProtocolError::OutOfOrder {
                expected: expected_sequence,
                found: sequence,
            });
        }
        let raw_kind = u16::from_le_bytes([b[6], b[7]]);
        let kind = MessageKind::from_u16(raw_kind).ok_or(ProtocolError::UnknownKind(raw_kind))?;
        let flags = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if flags != 0 {
            return Err(ProtocolError::UnknownFlags { kind, flags });
        }
        let len = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if len as usize > kind.cap() {
            return Err(ProtocolError::TooLong {
                kind,
                len: len.into(),
                cap: kind.cap(),
            });
        }
        Ok(FrameHeader {
            kind,
            flags,
            len,
            sequence,
        })
    }
}

/// Writes `message` as frame number `sequence`. Large page data is written
/// straight from the message (no copy into a frame buffer).
pub fn write_frame<W: Write>(w: &mut W, sequence: u64, message: &Message) -> Result<(), ProtocolError> {
    let kind = message.kind();
    codec::check_sendable(message)?;
    let len = message.payload_len();
    let header = FrameHeader {
        kind,
        flags: 0,
        len: len as u32,
        sequence,
    };
    let mut head = Vec::with_capacity(HEADER_LEN + len.min(4096));
    head.extend_from_slice(&header.encode());
    let tail = codec::encode_payload(message, &mut head);
    w.write_all(&head).map_err(|e| ProtocolError::io("writing", e))?;
    if !tail.is_empty() {
        w.write_all(tail).map_err(|e| ProtocolError::io("writing", e))?;
    }
    Ok(())
}

/// Reads one frame that must be number `expected_sequence`; returns the
/// message and its payload length. A connection that ends exactly between
/// two frames is [`ProtocolError::Closed`], inside one `Truncated`.
pub fn read_frame<R: Read>(r: &mut R, expected_sequence: u64) -> Result<(Message, usize), ProtocolError> {
    let mut hb = [0u8; HEADER_LEN];
    let got = read_full(r, &mut hb)?;
    if got == 0 {
        return Err(ProtocolError::Closed);
    }
    if got < HEADER_LEN {
        return Err(ProtocolError::Truncated {
            what: "header".into(),
            got,
            want: HEADER_LEN,
        });
    }
    let header = FrameHeader::decode(&hb, expected_sequence)?;
    let message = codec::decode_payload(r, header.kind, header.len as usize)?;
    Ok((message, header.len as usize))
}

/// Reads until `buf` is full or the stream ends; returns bytes read.
/// Timeouts become [`ProtocolError::Stalled`].
pub(crate) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProtocolError::io("reading", e)),
        }
    }
    Ok(done)
}
