//! Why a frame could not be read or written.

use super::MessageKind;
use std::io;

/// A frame that could not be read or written, naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The first four bytes are not covm's magic.
    #[error("bad frame magic {found:02x?} (expected \"CVMG\"): the peer is not a covm migration endpoint")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// A frame of another version than the connection's.
    #[error("the peer speaks migration protocol version {found}, this connection speaks version {expected}")]
    WrongVersion {
        /// Version in the frame.
        found: u16,
        /// The connection's version.
        expected: u16,
    },
    /// The first frame of a connection is of a version this covm does
    /// not speak.
    #[error("the peer speaks migration protocol version {found}, this covm speaks versions {} to {}",
        super::SUPPORTED_VERSIONS[0], super::SUPPORTED_VERSIONS[super::SUPPORTED_VERSIONS.len() - 1])]
    UnknownVersion {
        /// Version in the frame.
        found: u16,
    },
    /// A kind number no version defines (or `Invalid = 0`).
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    /// A kind that exists, but not in the connection's version (e.g. a
    /// `Sealed` in version 1, a plain `Commit` in version 2).
    #[error("{kind} (kind {}) is not part of migration protocol version {version}", *kind as u16)]
    NotInVersion {
        /// Kind of the frame.
        kind: MessageKind,
        /// The connection's version.
        version: u16,
    },
    /// Flag bits this version does not define.
    #[error("unknown flags {flags:#x} on a {kind} frame")]
    UnknownFlags {
        /// Kind of the frame.
        kind: MessageKind,
        /// The flags found.
        flags: u32,
    },
    /// The header announces a payload over the kind's cap.
    #[error("{kind} frame announces {len} payload bytes, over its cap of {cap}")]
    TooLong {
        /// Kind of the frame.
        kind: MessageKind,
        /// Announced payload length.
        len: u64,
        /// The kind's cap.
        cap: usize,
    },
    /// A frame was dropped, duplicated or reordered.
    #[error("frame sequence {found} out of order (expected {expected})")]
    OutOfOrder {
        /// The sequence number due.
        expected: u64,
        /// The sequence number found.
        found: u64,
    },
    /// The connection ended inside a frame.
    #[error("truncated frame: the connection ended after {got} of the {want} bytes of a {what}")]
    Truncated {
        /// "header" or the message kind whose payload was cut.
        what: String,
        /// Bytes read.
        got: usize,
        /// Bytes due.
        want: usize,
    },
    /// The payload does not decode as its kind.
    #[error("malformed {kind} payload: {what}")]
    Malformed {
        /// Kind of the frame.
        kind: MessageKind,
        /// What was wrong.
        what: String,
    },
    /// A message this side refuses to send (over a cap, inconsistent).
    #[error("cannot send {kind}: {what}")]
    Unsendable {
        /// Kind of the message.
        kind: MessageKind,
        /// What was wrong.
        what: String,
    },
    /// The peer closed the connection between two frames.
    #[error("the peer closed the connection")]
    Closed,
    /// A read or write made no progress within the I/O timeout.
    #[error("the peer stalled: no progress while {op} within the I/O timeout")]
    Stalled {
        /// "reading" or "writing".
        op: &'static str,
    },
    /// Any other I/O failure.
    #[error("{op} failed: {source}")]
    Io {
        /// "reading" or "writing".
        op: &'static str,
        /// The failure.
        source: io::Error,
    },
}

impl ProtocolError {
    /// Classifies an I/O error: timeouts are stalls, the rest is I/O.
    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ProtocolError::Stalled { op },
            _ => ProtocolError::Io { op, source },
        }
    }

    pub(crate) fn malformed(kind: MessageKind, what: impl Into<String>) -> Self {
        ProtocolError::Malformed {
            kind,
            what: what.into(),
        }
    }
}
