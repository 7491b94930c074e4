//! The fixed frame header, and reading/writing whole frames.

use super::codec;
use super::{Message, MessageKind, ProtocolError, PROTOCOL_VERSION, SUPPORTED_VERSIONS};
use std::io::{self, Read, Write};

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 24;

/// First bytes of every frame.
pub const MAGIC: [u8; 4] = *b"CVMG";

/// A decoded, checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version of the frame (the connection's).
    pub version: u16,
    /// What the payload is.
    pub kind: MessageKind,
    /// Flag bits (none defined in versions 1 and 2).
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
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        b
    }

    /// Checks header bytes in the spec's order: magic, version, sequence,
    /// kind (and that it is part of the version), flags, length against
    /// the kind's cap. `version` is the connection's version, or `None`
    /// before it is known (the first frame read): then any version this
    /// covm speaks ([`SUPPORTED_VERSIONS`]) is accepted.
    pub fn decode(b: &[u8; HEADER_LEN], version: Option<u16>, expected_sequence: u64) -> Result<Self, ProtocolError> {
        let found: [u8; 4] = [b[0], b[1], b[2], b[3]];
        if found != MAGIC {
            return Err(ProtocolError::BadMagic { found });
        }
        let found = u16::from_le_bytes([b[4], b[5]]);
        match version {
            Some(expected) if found != expected => return Err(ProtocolError::WrongVersion { found, expected }),
            None if !SUPPORTED_VERSIONS.contains(&found) => return Err(ProtocolError::UnknownVersion { found }),
            _ => {}
        }
        let version = found;
        let sequence = u64::from_le_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]);
        if sequence != expected_sequence {
            return Err(ProtocolError::OutOfOrder {
                expected: expected_sequence,
                found: sequence,
            });
        }
        let raw_kind = u16::from_le_bytes([b[6], b[7]]);
        let kind = MessageKind::from_u16(raw_kind).ok_or(ProtocolError::UnknownKind(raw_kind))?;
        if !kind.in_version(version) {
            return Err(ProtocolError::NotInVersion { kind, version });
        }
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
            version,
            kind,
            flags,
            len,
            sequence,
        })
    }
}

/// Writes `message` as frame number `sequence` of a version-1 (plain)
/// connection: [`write_frame_in`] with [`PROTOCOL_VERSION`].
pub fn write_frame<W: Write>(w: &mut W, sequence: u64, message: &Message) -> Result<(), ProtocolError> {
    write_frame_in(w, PROTOCOL_VERSION, sequence, message)
}

/// Writes `message` as frame number `sequence` of a `version` connection.
/// Large payloads (page data, sealed records, state) are written straight
/// from the message (no copy into a frame buffer).
pub fn write_frame_in<W: Write>(
    w: &mut W,
    version: u16,
    sequence: u64,
    message: &Message,
) -> Result<(), ProtocolError> {
    let kind = message.kind();
    codec::check_sendable(message, version)?;
    let len = message.payload_len();
    let header = FrameHeader {
        version,
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

/// Reads one frame of a version-1 (plain) connection that must be number
/// `expected_sequence`; returns the message and its payload length
/// ([`read_frame_in`] with [`PROTOCOL_VERSION`]).
pub fn read_frame<R: Read>(r: &mut R, expected_sequence: u64) -> Result<(Message, usize), ProtocolError> {
    read_frame_in(r, Some(PROTOCOL_VERSION), expected_sequence).map(|(header, message)| (message, header.len as usize))
}

/// Reads one frame that must be number `expected_sequence` of a `version`
/// connection (`None`: not known yet, any version this covm speaks);
/// returns its header (version, payload length) and message. A connection
/// that ends exactly between two frames is [`ProtocolError::Closed`],
/// inside one `Truncated`.
pub fn read_frame_in<R: Read>(
    r: &mut R,
    version: Option<u16>,
    expected_sequence: u64,
) -> Result<(FrameHeader, Message), ProtocolError> {
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
    let header = FrameHeader::decode(&hb, version, expected_sequence)?;
    let message = codec::decode_payload(r, header.kind, header.len as usize)?;
    Ok((header, message))
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
