//! covm's migration wire protocol, version 1. This module doc is the spec.
//!
//! # Frames
//!
//! Every message travels in one frame: a fixed 24-byte little-endian header
//! followed by the payload.
//!
//! | offset | size | field    | rule                                                        |
//! |-------:|-----:|----------|-------------------------------------------------------------|
//! | 0      | 4    | magic    | `b"CVMG"`; anything else: not a covm peer                   |
//! | 4      | 2    | version  | [`PROTOCOL_VERSION`] for the whole connection               |
//! | 6      | 2    | kind     | a [`MessageKind`]; `0` (`Invalid`) is never valid           |
//! | 8      | 4    | flags    | none defined in version 1: must be 0                        |
//! | 12     | 4    | length   | payload bytes; at most the kind's cap ([`MessageKind::cap`]) |
//! | 16     | 8    | sequence | 0 for a direction's first frame, then exactly +1 per frame  |
//!
//! The receiver checks, in order: magic, version, sequence, kind, flags,
//! length against the kind's cap (*before* allocating anything), then
//! reads the payload and decodes it strictly (exact sizes, valid UTF-8, no
//! trailing bytes). Every failure is a typed [`ProtocolError`]. The two
//! directions have independent sequence counters; a dropped, duplicated or
//! reordered frame is an out-of-order sequence.
//!
//! # Messages
//!
//! | kind | name       | direction | payload (little-endian)                                     | cap |
//! |-----:|------------|-----------|-------------------------------------------------------------|-----|
//! | 1    | Hello      | S → D     | version u16, VM config (opaque JSON from the VMM)           | 1 MiB + 2 |
//! | 2    | HelloAck   | D → S     | empty                                                       | 0 |
//! | 3    | Refuse     | D → S     | reason, UTF-8                                               | 4 KiB |
//! | 4    | Pages      | S → D     | round u32, n u32, n × gpa u64, n × 4096 data bytes (n ≥ 1)  | 256 pages |
//! | 5    | ZeroPages  | S → D     | round u32, gpa u64, count u64 (count ≥ 1): pages of zeros   | 20 |
//! | 6    | RoundEnd   | S → D     | round u32, pages u64, zero pages u64, bytes u64             | 28 |
//! | 7    | State      | S → D     | the VMM's serialised non-memory state                       | 64 MiB |
//! | 8    | Complete   | S → D     | pages u64 (all rounds, zero pages included), rounds u32     | 12 |
//! | 9    | Commit     | D → S     | empty: "I have everything and I am running it now"          | 0 |
//! | 10   | Abort      | both      | reason, UTF-8                                               | 4 KiB |
//!
//! `RoundEnd` counts what the round carried: `pages` every page (data and
//! zero), `zero_pages` those sent as `ZeroPages`, `bytes` the payload bytes
//! of the round's `Pages` and `ZeroPages` frames. The destination recounts
//! and fails on any difference, so a lost page record is detected. Rounds
//! are numbered from 0 (the full pass) and never go backwards: a page
//! record carries the round it belongs to, which must be the open round.
//!
//! # A migration
//!
//! ```text
//!  source                                          destination
//!    │ Hello{version, config} ───────────────────────► │ build the incoming VM
//!    │ ◄─────────────────────────────────── HelloAck   │ (or Refuse{reason}: end)
//!    │ start dirty tracking                            │
//!    │ Pages/ZeroPages{round 0} … (every page) ───────►│ write memory
//!    │ RoundEnd{0, pages, zero, bytes} ───────────────►│ check counts
//!    │ Pages/ZeroPages{round r} … (dirty pages) ──────►│   … rounds 1..k, the
//!    │ RoundEnd{r, …} ────────────────────────────────►│   source throttling
//!    │        (converged: dirty bytes / bandwidth ≤ downtime target)
//!    │ pause vCPUs                                     │
//!    │ Pages/ZeroPages{k+1} (last dirty pages) ───────►│
//!    │ RoundEnd{k+1, …} ──────────────────────────────►│
//!    │ State{bytes} ──────────────────────────────────►│ restore state
//!    │ Complete{pages, rounds} ───────────────────────►│ check totals
//!    │ ◄───────────────────────────────────── Commit   │ run the VM
//!    │ exit, never resume                              │
//!
//!  any failure before Commit, either side:
//!    │ ◄──────────── Abort{reason} ─────────────────► │ (best effort), close
//!    │ source: throttle 0, stop tracking, resume       │ destination: drop the VM
//! ```
//!
//! The source releases the guest only when it has read `Commit`. If the
//! connection is lost after the destination wrote `Commit` but before the
//! source read it, the source resumes and both could run; this plain
//! protocol cannot close that window (the confidential session does, with
//! an abort token only the destination can mint before it commits).
//!
//! # Versioning
//!
//! - The version is the layout of the header and of every payload. Any
//!   change (a new kind, a new flag, a field added, a cap's meaning) is a
//!   new version; there are no optional fields and unknown kinds or flags
//!   are never skipped, they are errors.
//! - The first 8 header bytes (magic, version), the `Hello`, `Refuse` and
//!   `Abort` payloads are frozen forever, so any two covm releases can tell
//!   each other which version they speak and refuse clearly.
//! - The source opens with `Hello` in its version; a destination that
//!   speaks it answers `HelloAck` and both use it to the end, otherwise it
//!   answers `Refuse` naming the version it speaks.

mod codec;
mod error;
mod frame;
mod wire;

#[cfg(test)]
mod tests;

pub use error::ProtocolError;
pub use frame::{read_frame, write_frame, FrameHeader, HEADER_LEN, MAGIC};
pub use wire::Wire;

use std::fmt;

/// The protocol version this covm speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes of one page on the wire.
pub const PAGE_BYTES: usize = 4096;

/// Most pages one `Pages` frame carries (1 MiB of data).
pub const MAX_PAGES_PER_FRAME: usize = 256;

/// Largest VM configuration a `Hello` carries.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Largest `Refuse` / `Abort` reason; longer reasons are cut by the sender.
pub const MAX_REASON_BYTES: usize = 4096;

/// Largest `State` payload.
pub const MAX_STATE_BYTES: usize = 64 << 20;

/// What a frame carries. `Invalid = 0` is never sent nor accepted, so a
/// zeroed header cannot pass for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MessageKind {
    /// Never valid.
    Invalid = 0,
    /// Source opens: version and VM configuration.
    Hello = 1,
    /// Destination accepts the Hello.
    HelloAck = 2,
    /// Destination refuses the Hello.
    Refuse = 3,
    /// A run of page records.
    Pages = 4,
    /// A run of zero pages (a marker, not 4 KiB of zeros each).
    ZeroPages = 5,
    /// End of a round, with its counts.
    RoundEnd = 6,
    /// Non-memory state.
    State = 7,
    /// Everything was sent: totals.
    Complete = 8,
    /// Destination has everything and runs the VM.
    Commit = 9,
    /// Either side gives up.
    Abort = 10,
}

impl MessageKind {
    /// The kind numbered `value`, if it is a valid one.
    pub fn from_u16(value: u16) -> Option<Self> {
        use MessageKind::*;
        Some(match value {
            1 => Hello,
            2 => HelloAck,
            3 => Refuse,
            4 => Pages,
            5 => ZeroPages,
            6 => RoundEnd,
            7 => State,
            8 => Complete,
            9 => Commit,
            10 => Abort,
            _ => return None,
        })
    }

    /// Largest payload a frame of this kind may carry.
    pub fn cap(self) -> usize {
        use MessageKind::*;
        match self {
            Invalid | HelloAck | Commit => 0,
            Hello => 2 + MAX_CONFIG_BYTES,
            Refuse | Abort => MAX_REASON_BYTES,
            Pages => 8 + MAX_PAGES_PER_FRAME * (8 + PAGE_BYTES),
            ZeroPages => 20,
            RoundEnd => 28,
            State => MAX_STATE_BYTES,
            Complete => 12,
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One protocol message (see the table in the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Source opens the migration.
    Hello {
        /// Protocol version the source speaks.
        version: u16,
        /// The VM's configuration, opaque to the protocol (JSON from the VMM).
        config: Vec<u8>,
    },
    /// Destination accepts.
    HelloAck,
    /// Destination refuses the Hello.
    Refuse {
        /// Why, in words for a person.
        reason: String,
    },
    /// Page records of one round.
    Pages {
        /// Round the pages belong to.
        round: u32,
        /// Guest-physical address of each page.
        gpas: Vec<u64>,
        /// `gpas.len()` pages of data, in the same order.
        data: Vec<u8>,
    },
    /// `count` pages of zeros from `gpa`.
    ZeroPages {
        /// Round the pages belong to.
        round: u32,
        /// First page's guest-physical address.
        gpa: u64,
        /// Number of pages.
        count: u64,
    },
    /// End of a round and what it carried.
    RoundEnd {
        /// The round that ends.
        round: u32,
        /// Pages sent in the round, zero pages included.
        pages: u64,
        /// Of which sent as zero-page markers.
        zero_pages: u64,
        /// Payload bytes of the round's page frames.
        bytes: u64,
    },
    /// Non-memory state (vCPUs, interrupt controllers, devices).
    State {
        /// The VMM's serialised state, opaque to the protocol.
        state: Vec<u8>,
    },
    /// Everything was sent.
    Complete {
        /// Pages over all rounds, zero pages included.
        pages: u64,
        /// Number of rounds, the final one included.
        rounds: u32,
    },
    /// Destination has everything and runs the VM.
    Commit,
    /// Either side gives up.
    Abort {
        /// Why, in words for a person.
        reason: String,
    },
}

impl Message {
    /// The kind this message is sent as.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello { .. } => MessageKind::Hello,
            Message::HelloAck => MessageKind::HelloAck,
            Message::Refuse { .. } => MessageKind::Refuse,
            Message::Pages { .. } => MessageKind::Pages,
            Message::ZeroPages { .. } => MessageKind::ZeroPages,
            Message::RoundEnd { .. } => MessageKind::RoundEnd,
            Message::State { .. } => MessageKind::State,
            Message::Complete { .. } => MessageKind::Complete,
            Message::Commit => MessageKind::Commit,
            Message::Abort { .. } => MessageKind::Abort,
        }
    }

    /// Payload bytes this message takes on the wire.
    pub fn payload_len(&self) -> usize {
        codec::payload_len(self)
    }
}

/// Cuts `reason` to at most [`MAX_REASON_BYTES`] on a character boundary,
/// so a long error message still fits a `Refuse` or `Abort`.
pub fn fit_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_string();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}
