//! The crate's one error type.
//!
//! Every failure is a value the caller can match on and a sentence an
//! operator can read. Variants carry only `Copy` data (numbers, static
//! strings): the agent has no allocator, and an error must never hold on
//! to secret bytes.

use crate::evidence::Platform;
use core::fmt;

/// Everything that can go wrong in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    // ---- encoding -------------------------------------------------------
    /// A message, record or structure has the wrong length.
    Length {
        /// What was being decoded.
        what: &'static str,
        /// Bytes expected (the minimum when `got` is smaller).
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// An output buffer cannot hold what must be written into it.
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A reserved field is not zero.
    Reserved {
        /// Which field.
        what: &'static str,
    },
    /// A field holds a value the protocol does not allow.
    Invalid {
        /// Which field, and the rule it broke.
        what: &'static str,
    },
    /// A handshake message of another type arrived.
    UnexpectedMessage {
        /// The message type the state machine waits for.
        expected: u8,
        /// The type byte that arrived.
        got: u8,
    },
    /// A method was called in a state where it makes no sense.
    State {
        /// The operation attempted.
        op: &'static str,
        /// The state the object was in.
        state: &'static str,
    },
    /// An earlier failure poisoned this object; start a new session.
    Poisoned,

    // ---- negotiation ----------------------------------------------------
    /// The peer offers no protocol version this side speaks.
    NoCommonVersion,
    /// The peer offers no cipher suite this side supports.
    NoCommonSuite,
    /// The destination chose a version or suite the source never offered
    /// (a downgrade attempt or a broken peer).
    NotOffered {
        /// `"version"` or `"suite"`.
        what: &'static str,
        /// The value chosen.
        value: u16,
    },

    // ---- key agreement and confirmation ---------------------------------
    /// The X25519 shared secret is all zeros (the peer sent a low-order point).
    WeakSharedSecret,
    /// A Finished MAC is wrong: the two sides do not hold the same keys
    /// or did not see the same handshake.
    KeyConfirmation,
    /// Our own evidence does not carry the report_data this handshake asked for.
    OwnEvidenceNotBound,

    // ---- evidence -------------------------------------------------------
    /// A platform code this version does not know.
    UnknownPlatform(u16),
    /// The verifier in use cannot check evidence of this platform.
    UnsupportedPlatform(Platform),
    /// The report's SIGNATURE_ALGO is not ECDSA P-384 with SHA-384.
    SignatureAlgorithm(u32),
    /// The report's signature is malformed or does not verify under any
    /// trusted key.
    BadSignature,
    /// The policy names no key that could have signed emulated evidence.
    NoTrustedRoot,
    /// A trusted root key in a policy is not a valid P-384 point.
    BadRootKey,
    /// SEV-SNP evidence whose AMD endorsement does not hold: a malformed
    /// or incomplete certificate table, a certificate that does not parse,
    /// an ARK that is not AMD's, a broken chain link, or a report that
    /// contradicts its VCEK/VLEK certificate.
    Endorsement {
        /// What failed, as a sentence fragment.
        what: &'static str,
    },

    // ---- policy ---------------------------------------------------------
    /// The policy encoding does not start with its magic.
    PolicyMagic,
    /// A policy encoding format this version cannot read.
    PolicyFormat(u16),
    /// A policy list exceeds its bound.
    PolicyTooMany {
        /// `"measurements"` or `"trusted roots"`.
        what: &'static str,
        /// The bound.
        max: usize,
    },
    /// A policy list is not in strictly ascending byte order (the encoding
    /// is canonical, so that one policy has exactly one host_data).
    PolicyNotCanonical {
        /// Which list.
        what: &'static str,
    },
    /// The peer runs on a platform our policy does not allow.
    PlatformNotAllowed(Platform),
    /// The peer's launch measurement is not in our policy.
    MeasurementNotAllowed,
    /// A component of the peer's reported TCB is below our minimum.
    TcbTooLow {
        /// `"boot_loader"`, `"tee"`, `"snp"` or `"microcode"`.
        component: &'static str,
        /// The peer's value.
        have: u8,
        /// Our minimum.
        min: u8,
    },
    /// The peer's guest SVN is below our minimum.
    GuestSvnTooLow {
        /// The peer's value.
        have: u32,
        /// Our minimum.
        min: u32,
    },
    /// The peer's guest policy allows debugging (its memory is readable by the host).
    DebugAllowed,
    /// The peer presents an older policy version than ours (anti-downgrade).
    PeerPolicyOlder {
        /// The peer's policy version.
        peer: u32,
        /// Ours.
        own: u32,
    },
    /// The peer runs a policy of our version but with other content (a
    /// host that launched the peer with a policy of its own choosing).
    PolicyMismatch {
        /// The version both policies claim.
        version: u32,
    },
    /// The peer's policy bytes do not hash to its report's HOST_DATA.
    HostDataMismatch,
    /// The peer's report_data does not bind this handshake's transcript
    /// (relayed or replayed evidence).
    ReportDataMismatch,

    // ---- records --------------------------------------------------------
    /// A record type this version does not know.
    UnknownRecordType(u8),
    /// A record type that does not belong on this stream or at this point.
    UnexpectedRecord {
        /// The record's type byte.
        got: u8,
        /// Where it arrived.
        during: &'static str,
    },
    /// A record's version byte is not the session's.
    RecordVersion(u8),
    /// The sequence number is not the next one (a dropped, replayed,
    /// duplicated or reordered record).
    Sequence {
        /// The number expected.
        expected: u64,
        /// The number in the record.
        got: u64,
    },
    /// A record on a lane the stream does not have.
    Lane {
        /// The record's lane.
        lane: u16,
        /// The stream's lanes.
        lanes: u16,
    },
    /// A record on a lane that already ended the open round, while other
    /// lanes have not: the round's records are not all in yet.
    LaneEnded {
        /// The lane.
        lane: u16,
        /// The open round.
        epoch: u32,
    },
    /// The record's authentication tag does not verify (altered bytes,
    /// another session's key, or a moved/relabelled record).
    RecordAuthentication,
    /// The sealer's counter is exhausted; it never wraps.
    CounterExhausted,
    /// A record's epoch is not the open round's.
    Epoch {
        /// The open round.
        open: u32,
        /// The record's epoch.
        got: u32,
    },
    /// A guest-physical address that is not 4 KiB aligned.
    Unaligned(u64),
    /// A guest-physical address beyond the destination's epoch table.
    OutOfRange(u64),
    /// A page already imported in this or a newer round (a stale or
    /// duplicated page).
    StalePage {
        /// The page's address.
        gpa: u64,
        /// The record's epoch.
        epoch: u32,
    },
    /// A RoundEnd's page count differs from the pages received in that round.
    RoundCount {
        /// The round.
        epoch: u32,
        /// Pages the RoundEnd claims.
        claimed: u64,
        /// Pages received.
        received: u64,
    },
    /// A Final record's totals differ from what was received.
    FinalMismatch {
        /// `"rounds"`, `"pages"` or `"vcpus"`.
        what: &'static str,
        /// The Final's value.
        claimed: u64,
        /// What was received.
        received: u64,
    },
    /// A vCPU index at or beyond [`crate::MAX_VCPUS`].
    VcpuIndex(u64),
    /// A vCPU's state arrived twice.
    DuplicateVcpu(u32),
    /// Commit was asked for before the Final record was checked.
    Incomplete,
    /// Verified mode: the destination's memory digest differs from the source's.
    DigestMismatch,
    /// Verified mode is on at one end only.
    DigestMode {
        /// Whether the source's Final carried a digest.
        source_verified: bool,
    },
    /// The Commit record does not echo the Final this source sealed.
    CommitMismatch,
    /// An abort token cannot be minted or accepted after commit.
    AlreadyCommitted,
    /// The session was aborted; nothing more can be sealed or imported.
    Aborted,
    /// Memory-digest pages must come in strictly ascending address order.
    DigestOrder {
        /// The previous page's address.
        previous: u64,
        /// The offending address.
        gpa: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match *self {
            Length { what, expected, got } => write!(f, "{what}: {got} bytes, expected {expected}"),
            BufferTooSmall { need, have } => write!(f, "output buffer of {have} bytes, {need} needed"),
            Reserved { what } => write!(f, "{what}: reserved field is not zero"),
            Invalid { what } => write!(f, "invalid {what}"),
            UnexpectedMessage { expected, got } => {
                write!(f, "handshake message type {got} arrived, expected type {expected}")
            }
            State { op, state } => write!(f, "cannot {op} in state {state}"),
            Poisoned => f.write_str("an earlier failure ended this session; start a new one"),
            NoCommonVersion => f.write_str("the peer offers no protocol version this side speaks"),
            NoCommonSuite => f.write_str("the peer offers no cipher suite this side supports"),
            NotOffered { what, value } => {
                write!(
                    f,
                    "the destination chose {what} {value}, which the source never offered"
                )
            }
            WeakSharedSecret => f.write_str("the X25519 shared secret is all zeros (low-order public key)"),
            KeyConfirmation => f.write_str("key confirmation failed: the Finished MAC is wrong"),
            OwnEvidenceNotBound => f.write_str("our own evidence does not carry this handshake's report_data"),
            UnknownPlatform(code) => write!(f, "unknown platform code {code}"),
            UnsupportedPlatform(p) => write!(f, "no verifier for {p} evidence in use"),
            SignatureAlgorithm(a) => {
                write!(
                    f,
                    "report signature algorithm {a}, expected 1 (ECDSA P-384 with SHA-384)"
                )
            }
            BadSignature => f.write_str("the report signature does not verify under any trusted key"),
            NoTrustedRoot => f.write_str("the policy trusts no emulated attestation root"),
            BadRootKey => f.write_str("a trusted root key is not a valid compressed P-384 point"),
            Endorsement { what } => write!(f, "SEV-SNP endorsement refused: {what}"),
            PolicyMagic => f.write_str("not a covm migration policy (bad magic)"),
            PolicyFormat(v) => write!(f, "policy encoding format {v} is not supported"),
            PolicyTooMany { what, max } => write!(f, "policy lists more than {max} {what}"),
            PolicyNotCanonical { what } => {
                write!(f, "policy {what} are not in strictly ascending order (not canonical)")
            }
            PlatformNotAllowed(p) => write!(f, "the policy does not allow platform {p}"),
            MeasurementNotAllowed => f.write_str("the peer's launch measurement is not allowed by the policy"),
            TcbTooLow { component, have, min } => {
                write!(
                    f,
                    "the peer's reported TCB {component} is {have}, the policy wants at least {min}"
                )
            }
            GuestSvnTooLow { have, min } => {
                write!(f, "the peer's guest SVN is {have}, the policy wants at least {min}")
            }
            DebugAllowed => f.write_str("the peer's guest policy allows debugging"),
            PeerPolicyOlder { peer, own } => {
                write!(f, "the peer's policy version {peer} is older than ours ({own})")
            }
            PolicyMismatch { version } => {
                write!(f, "the peer's policy version {version} differs from ours in content")
            }
            HostDataMismatch => f.write_str("the peer's policy does not hash to its report's HOST_DATA"),
            ReportDataMismatch => {
                f.write_str("the peer's report_data does not bind this handshake (relayed or replayed evidence)")
            }
            UnknownRecordType(t) => write!(f, "unknown record type {t}"),
            UnexpectedRecord { got, during } => write!(f, "record type {got} is not allowed {during}"),
            RecordVersion(v) => write!(f, "record version {v}, the session speaks 1"),
            Sequence { expected, got } => {
                write!(
                    f,
                    "record sequence {got}, expected {expected} (dropped, replayed or reordered record)"
                )
            }
            Lane { lane, lanes } => write!(f, "record on lane {lane}, the stream has {lanes} lanes"),
            LaneEnded { lane, epoch } => {
                write!(f, "lane {lane} already ended round {epoch}, which other lanes have not")
            }
            RecordAuthentication => f.write_str("record authentication failed"),
            CounterExhausted => f.write_str("the record counter is exhausted"),
            Epoch { open, got } => write!(f, "record of round {got} while round {open} is open"),
            Unaligned(gpa) => write!(f, "guest address {gpa:#x} is not 4 KiB aligned"),
            OutOfRange(gpa) => write!(f, "guest address {gpa:#x} is beyond the epoch table"),
            StalePage { gpa, epoch } => {
                write!(
                    f,
                    "page {gpa:#x} of round {epoch} is not newer than the copy already imported"
                )
            }
            RoundCount {
                epoch,
                claimed,
                received,
            } => {
                write!(f, "round {epoch} claims {claimed} pages, {received} were received")
            }
            FinalMismatch {
                what,
                claimed,
                received,
            } => {
                write!(f, "final record claims {claimed} {what}, {received} were received")
            }
            VcpuIndex(i) => write!(f, "vCPU index {i} is out of range"),
            DuplicateVcpu(i) => write!(f, "vCPU {i}'s state arrived twice"),
            Incomplete => f.write_str("cannot commit: the migration is not complete (no checked final record)"),
            DigestMismatch => f.write_str("verified mode: the memory digests differ"),
            DigestMode { source_verified: true } => {
                f.write_str("the source sent a memory digest but the destination gave none")
            }
            DigestMode { source_verified: false } => {
                f.write_str("the destination wants verified mode but the source sent no memory digest")
            }
            CommitMismatch => f.write_str("the commit record does not match the final record sealed"),
            AlreadyCommitted => f.write_str("the destination committed: no abort is possible"),
            Aborted => f.write_str("the session was aborted"),
            DigestOrder { previous, gpa } => {
                write!(f, "memory digest: page {gpa:#x} after {previous:#x} (must ascend)")
            }
        }
    }
}

/// The crate's result type.
pub type Result<T> = core::result::Result<T, Error>;

impl core::error::Error for Error {}
