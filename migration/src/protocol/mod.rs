//! covm's migration wire protocol, versions 1 (plain) and 2 (confidential).
//! This module doc is the spec.
//!
//! # Frames
//!
//! Every message travels in one frame: a fixed 24-byte little-endian header
//! followed by the payload.
//!
//! | offset | size | field    | rule                                                        |
//! |-------:|-----:|----------|-------------------------------------------------------------|
//! | 0      | 4    | magic    | `b"CVMG"`; anything else: not a covm peer                   |
//! | 4      | 2    | version  | the connection's version (see Versioning), in every frame   |
//! | 6      | 2    | kind     | a [`MessageKind`] of that version; `0` (`Invalid`) never    |
//! | 8      | 4    | flags    | none defined in versions 1 and 2: must be 0                 |
//! | 12     | 4    | length   | payload bytes; at most the kind's cap ([`MessageKind::cap`]) |
//! | 16     | 8    | sequence | 0 for a direction's first frame, then exactly +1 per frame  |
//!
//! The receiver checks, in order: magic, version, sequence, kind (known,
//! and part of the connection's version), flags, length against the
//! kind's cap (*before* allocating anything), then reads the payload and
//! decodes it strictly (exact sizes, valid UTF-8, no trailing bytes).
//! Every failure is a typed [`ProtocolError`]. The two directions have
//! independent sequence counters; a dropped, duplicated or reordered frame
//! is an out-of-order sequence.
//!
//! # Messages
//!
//! | kind | name       | versions | direction | payload (little-endian)                                     | cap |
//! |-----:|------------|----------|-----------|-------------------------------------------------------------|-----|
//! | 1    | Hello      | 1, 2     | S → D     | version u16, VM config (opaque JSON from the VMM)           | 1 MiB + 2 |
//! | 2    | HelloAck   | 1, 2     | D → S     | empty                                                       | 0 |
//! | 3    | Refuse     | 1, 2     | D → S     | reason, UTF-8                                               | 4 KiB |
//! | 4    | Pages      | 1, 2 (\*) | S → D    | round u32, n u32, n × gpa u64, n × 4096 data bytes (n ≥ 1)  | 256 pages |
//! | 5    | ZeroPages  | 1, 2 (\*) | S → D    | round u32, gpa u64, count u64 (count ≥ 1): pages of zeros   | 20 |
//! | 6    | RoundEnd   | 1, 2     | S → D     | round u32, pages u64, zero pages u64, bytes u64             | 28 |
//! | 7    | State      | 1, 2     | S → D     | the VMM's serialised non-memory state (2: host-owned device state only) | 64 MiB |
//! | 8    | Complete   | 1, 2     | S → D     | pages u64 (all rounds, zero pages included), rounds u32     | 12 |
//! | 9    | Commit     | 1        | D → S     | empty: "I have everything and I am running it now"          | 0 |
//! | 10   | Abort      | 1, 2     | both      | reason, UTF-8                                               | 4 KiB |
//! | 11   | Handshake  | 2        | both      | one agent handshake message, opaque (≥ 1 byte)              | 16 KiB |
//! | 12   | Sealed     | 2        | S → D     | round u32, then the agent's sealed records, opaque (≥ 1 byte) | 4 MiB + 4 |
//! | 13   | Control    | 2        | D → S     | one sealed control record: the agent's Commit or abort token, opaque (≥ 1 byte) | 4 KiB |
//! | 14   | Sync       | 2        | S → D     | round u32: the last round ended                             | 4 |
//! | 15   | Synced     | 2        | D → S     | round u32, the Sync's: everything before it is applied       | 4 |
//!
//! (\*) In version 2 only for the pages the guest shares with the host
//! (its devices' window on covm's emulated platform): the host may read and
//! write those anyway, so the source's VMM sends them itself, in the clear;
//! a confidential destination writes them only inside the memory the guest
//! can share, checks them against what the restored state says it shares,
//! and its agent checks that against the guest's own sealed map before it
//! commits. Private memory travels only sealed. A kind outside the connection's version is a
//! [`ProtocolError::NotInVersion`], on receipt and (as
//! [`ProtocolError::Unsendable`]) before sending.
//!
//! `RoundEnd` counts what the round carried: `pages` every page (data and
//! zero), `zero_pages` those sent as zero-page markers (version 1:
//! `ZeroPages`; version 2: what the agents count as zero-page records),
//! `bytes` the payload bytes of the round's *record frames*: version 1 its
//! `Pages` and `ZeroPages` frames, version 2 its `Sealed` frames,
//! including the `Sealed` frame that carries the agent's own sealed
//! round-end record just before the engine's `RoundEnd` (that frame
//! carries no page, and its bytes count on both sides). The destination
//! recounts and fails on any difference, so a lost record frame is
//! detected. Rounds are numbered from 0 (the full pass) and never go
//! backwards: a record frame carries the round it belongs to, which must
//! be the open round. Records sent after the final `RoundEnd` (version 2:
//! the sealed vCPU states and the agent's Final) belong to the round
//! after it, numbered like `Complete`'s `rounds`, which never ends.
//!
//! `Sync` is a barrier. The destination's agent opens records more slowly
//! than the source's seals them, so a converged source would pause with a
//! backlog of its earlier rounds still queued in the sockets, and the
//! guest's downtime would include it. So a version-2 source, when
//! pre-copy has converged and it would pause, first sends `Sync{r}` (r:
//! the round that just ended) and waits for `Synced{r}`, which the
//! destination writes when it reads the `Sync`, after applying every frame
//! before it; then it evaluates the dirty log again (what the guest wrote
//! meanwhile) and pauses or runs another round as usual. It syncs at most
//! once per round and three times in all (`engine::MAX_SYNCS`). A `Sync`
//! whose round is not the last ended one, or after the state, is a stream
//! error.
//!
//! In version 2 the payloads of `Handshake`, `Sealed` and `Control` are
//! the in-guest agents' messages and records (docs/confidential-protocol.md):
//! encrypted and authenticated end to end between the agents, opaque to
//! both hosts. The hosts' `RoundEnd` and `Complete` counts are kept as in
//! version 1 (they catch a lost frame early); the agents check their own.
//!
//! # A migration (version 1, plain)
//!
//! ```text
//!  source                                          destination
//!    │ Hello{1, config} ─────────────────────────────► │ build the incoming VM
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
//! protocol cannot close that window (version 2 does, with an abort token
//! only the destination's agent can mint before it commits). A
//! destination that cannot write its `Commit` drops the VM: the source,
//! without it, resumes.
//!
//! # A migration (version 2, confidential)
//!
//! The hosts relay; the agents inside the two guests decide.
//!
//! ```text
//!  source                                          destination
//!    │ Hello{2, config} ─────────────────────────────► │ build the VM and its opener
//!    │ ◄─────────────────────────────────── HelloAck   │ (or Refuse{reason}: end)
//!    │ Handshake{agent message} ──────────────────────►│ the agents' attested
//!    │ ◄────────────────────── Handshake{agent message}│ handshake, relayed as is
//!    │   … until both agents confirmed the keys        │
//!    │ start dirty tracking                            │
//!    │ Sealed{0, sealed pages} … (every page) ────────►│ agent opens, writes memory
//!    │ Sealed{0, sealed round end} ───────────────────►│ agent checks its count
//!    │ RoundEnd{0, pages, zero, bytes} ───────────────►│ engine checks its counts
//!    │   … rounds 1..k as round 0, the source throttling
//!    │ Sync{k} (converged) ───────────────────────────►│ (after applying all of it)
//!    │ ◄──────────────────────────────────── Synced{k} │
//!    │   … more rounds only if the dirty log needs them
//!    │ pause vCPUs                                     │
//!    │ Sealed{k+1, last pages}, Sealed{k+1, round end}, RoundEnd{k+1} ─►│
//!    │ Sealed{k+2, sealed vCPU states, Final} ────────►│ agent checks totals
//!    │   (from here the source agent refuses to resume │
//!    │    without a valid abort token)                 │
//!    │ State{device state} ───────────────────────────►│ restore devices
//!    │ Complete{pages, rounds = k+2} ─────────────────►│ check totals, agent commits
//!    │ ◄──────────────────────── Control{sealed Commit}│ (abort key destroyed), run
//!    │ agent checks it: exit, never resume             │
//!
//!  any failure at the destination before its agent commits:
//!    │ ◄─ Control{abort token}, then Abort{reason} ─── │ drop the VM
//!    │ agent checks the token: resume                  │
//!  any failure at the source:
//!    │ Abort{reason} ─────────────────────────────────►│ mints its token, answers
//!    │ ◄──────────────────────── Control{abort token}  │ with it (best effort)
//!    │ resume only while the agent allows it: before Final, or with a valid token
//! ```
//!
//! A plain `Abort` never frees a source whose agent sealed its Final: only
//! the destination agent's token does, and that agent cannot mint one
//! once it committed, nor commit once it minted one. A source that reads
//! neither keeps the guest paused (it may be running at the destination).
//! A destination whose agent committed runs the VM even if it cannot write
//! the `Control`: the commit cannot be undone.
//!
//! # Versioning
//!
//! - The version is the layout of the header and of every payload, and the
//!   set of kinds. Any change (a new kind, a new flag, a field added, a
//!   cap's meaning) is a new version; there are no optional fields and
//!   unknown kinds or flags are never skipped, they are errors.
//! - The first 8 header bytes (magic, version), the `Hello`, `Refuse` and
//!   `Abort` payloads are frozen forever, so any two covm releases can tell
//!   each other which version they speak and refuse clearly.
//! - The source opens with `Hello` in the version its session needs (1
//!   plain, 2 confidential), in a frame of that version: the `Hello`'s
//!   version is the connection's version. A destination answers in that
//!   version: `HelloAck` if it speaks it and the VM may arrive that way,
//!   otherwise `Refuse` naming what it accepts. This covm accepts 1 and 2
//!   ([`SUPPORTED_VERSIONS`]). From the `Hello` on, every frame of both
//!   directions carries the connection's version, and only its kinds.
//! - A [`Wire`] learns its version from the first frame it reads, or is
//!   told it by the first `Hello` it sends.

mod codec;
mod error;
mod frame;
mod wire;

#[cfg(test)]
mod tests;

pub use error::ProtocolError;
pub use frame::{read_frame, read_frame_in, write_frame, write_frame_in, FrameHeader, HEADER_LEN, MAGIC};
pub use wire::Wire;

use std::fmt;

/// The plain protocol's version, and the version of the frames
/// [`write_frame`] writes and [`read_frame`] reads.
pub const PROTOCOL_VERSION: u16 = 1;

/// The confidential protocol's version: version 1 plus `Handshake`,
/// `Sealed` and `Control`, without `Commit`.
pub const PROTOCOL_VERSION_CONFIDENTIAL: u16 = 2;

/// The versions this covm speaks, oldest first.
pub const SUPPORTED_VERSIONS: [u16; 2] = [PROTOCOL_VERSION, PROTOCOL_VERSION_CONFIDENTIAL];

/// Bytes of one page on the wire ([`crate::vm::PAGE_SIZE`], as a length).
pub const PAGE_BYTES: usize = crate::vm::PAGE_SIZE as usize;

/// Most pages one `Pages` frame carries (1 MiB of data).
pub const MAX_PAGES_PER_FRAME: usize = 256;

/// Largest VM configuration a `Hello` carries.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Largest `Refuse` / `Abort` reason; longer reasons are cut by the sender.
pub const MAX_REASON_BYTES: usize = 4096;

/// Largest `State` payload.
pub const MAX_STATE_BYTES: usize = 64 << 20;

/// Largest agent handshake message a `Handshake` carries: an evidence
/// message with a full SEV-SNP certificate table is 9392 bytes
/// (`covm_agent_protocol::handshake::messages::MAX_HANDSHAKE_MSG_LEN`;
/// the VMM asserts it fits).
pub const MAX_HANDSHAKE_BYTES: usize = 16 << 10;

/// Largest batch of sealed records a `Sealed` carries (its round aside).
pub const MAX_SEALED_BYTES: usize = 4 << 20;

/// Largest sealed control record a `Control` carries.
pub const MAX_CONTROL_BYTES: usize = 4096;

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
    /// One agent handshake message (version 2).
    Handshake = 11,
    /// A batch of the source agent's sealed records (version 2).
    Sealed = 12,
    /// The destination agent's sealed Commit or abort token (version 2).
    Control = 13,
    /// Source: a barrier before pausing (version 2).
    Sync = 14,
    /// Destination: everything before the `Sync` is applied (version 2).
    Synced = 15,
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
            11 => Handshake,
            12 => Sealed,
            13 => Control,
            14 => Sync,
            15 => Synced,
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
            Handshake => MAX_HANDSHAKE_BYTES,
            Sealed => 4 + MAX_SEALED_BYTES,
            Control => MAX_CONTROL_BYTES,
            Sync | Synced => 4,
        }
    }

    /// Whether this kind is part of protocol `version` (the module doc's
    /// table). `Invalid` and unknown versions have no kinds.
    pub fn in_version(self, version: u16) -> bool {
        use MessageKind::*;
        match version {
            PROTOCOL_VERSION => !matches!(self, Invalid | Handshake | Sealed | Control | Sync | Synced),
            PROTOCOL_VERSION_CONFIDENTIAL => !matches!(self, Invalid | Commit),
            _ => false,
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
    /// One agent handshake message, relayed as is (version 2).
    Handshake {
        /// The agent's message, opaque to the hosts.
        message: Vec<u8>,
    },
    /// A batch of the source agent's sealed records (version 2).
    Sealed {
        /// Round the records belong to.
        round: u32,
        /// The agent's records back to back, opaque to the hosts.
        records: Vec<u8>,
    },
    /// The destination agent's decision (version 2): its sealed Commit, or
    /// its abort token.
    Control {
        /// The sealed record, opaque to the hosts.
        record: Vec<u8>,
    },
    /// Source: answer once everything before this is applied (version 2).
    Sync {
        /// The last round the source ended.
        round: u32,
    },
    /// Destination: the answer to `Sync` (version 2).
    Synced {
        /// The `Sync`'s round.
        round: u32,
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
            Message::Handshake { .. } => MessageKind::Handshake,
            Message::Sealed { .. } => MessageKind::Sealed,
            Message::Control { .. } => MessageKind::Control,
            Message::Sync { .. } => MessageKind::Sync,
            Message::Synced { .. } => MessageKind::Synced,
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
