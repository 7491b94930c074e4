//! The handshake: six messages that give both agents the same fresh keys
//! and each a verified picture of the other.
//!
//! ```text
//!  source (initiator)                          destination (responder)
//!    SrcHello    {versions, suites, nonce, ephemeral, policy} ─────►
//!    ◄───── DstHello    {version, suite, nonce, ephemeral, policy}
//!    ◄───── DstEvidence {evidence, report_data = H(label_d ‖ TH2)}
//!  check_peer(dst)                                              
//!    SrcEvidence {evidence, report_data = H(label_s ‖ TH3)} ─────►
//!    SrcFinished {HMAC(k_sfin, TH4)} ──────────────────────────►
//!                                                   check_peer(src)
//!                                                   keys from TH4
//!    ◄───── DstFinished {HMAC(k_dfin, TH5)}
//!  confirmed: records may flow
//! ```
//!
//! `THn` is the transcript hash over the first n messages; H is SHA-512.
//! Message layouts are in the submodule docs of [`messages`]; the state
//! machines are [`SourceHandshake`] and [`DestinationHandshake`]. Both are
//! sans-I/O: each `write_*` fills a caller buffer, each `read_*` takes
//! the bytes the caller received. Any failure poisons the handshake.
//!
//! The two sides mirror each other: what both keep and the steps they
//! take alike (evidence, key derivation, Finished) are written once in
//! `exchange`, told apart by `side` (labels, message types, keys), and
//! both advance through the guard in `step`.

mod destination;
mod exchange;
pub mod messages;
mod side;
mod source;
mod step;

pub use destination::{DestinationHandshake, DestinationSession};
pub use source::SourceHandshake;

/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;
