//! The handshake transcript and the report_data that binds evidence to it.
//!
//! Every handshake message enters one running SHA-256, in the order sent,
//! each as `role ‖ length ‖ bytes` so no two sequences of messages hash
//! alike. A snapshot of that hash at a fixed point is what each side's
//! evidence must carry (its report_data) and what the key schedule's
//! salt and the Finished MACs cover: evidence from another session, a
//! replayed message or a stripped offer all change the hash.

use sha2::{Digest, Sha256, Sha512};

/// The transcript hash starts with this label, then the entries.
pub const TRANSCRIPT_LABEL: &[u8] = b"covm confidential migration transcript";
/// Label of the destination's report_data.
pub const DST_EVIDENCE_LABEL: &[u8] = b"covm-cm v1 destination evidence";
/// Label of the source's report_data.
pub const SRC_EVIDENCE_LABEL: &[u8] = b"covm-cm v1 source evidence";

/// Which side sent a message: the entry's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// The migration source (initiator), `b'S'`.
    Source = b'S',
    /// The migration destination (responder), `b'D'`.
    Destination = b'D',
}

/// The running transcript hash.
#[derive(Clone)]
pub(crate) struct Transcript {
    hash: Sha256,
}

impl Transcript {
    pub(crate) fn new() -> Self {
        let mut hash = Sha256::new();
        hash.update(TRANSCRIPT_LABEL);
        Transcript { hash }
    }

    /// Adds one message: role byte, its length as u32 LE, its bytes.
    pub(crate) fn add(&mut self, role: Role, message: &[u8]) {
        self.hash.update([role as u8]);
        self.hash.update((message.len() as u32).to_le_bytes());
        self.hash.update(message);
    }

    /// The hash of everything added so far.
    pub(crate) fn hash(&self) -> [u8; 32] {
        self.hash.clone().finalize().into()
    }
}

/// The 64-byte report_data for evidence bound to transcript hash `th`:
/// SHA-512(label ‖ th). SNP's REPORT_DATA is exactly 64 bytes.
pub fn report_data(label: &[u8], th: &[u8; 32]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(label);
    h.update(th);
    h.finalize().into()
}
