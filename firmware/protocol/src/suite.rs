//! Protocol versions and cipher suites, and how the two ends agree on them.
//!
//! The source offers lists, the destination chooses. Both lists and the
//! choice travel in handshake messages that enter the transcript, which
//! both sides' evidence and both Finished MACs cover: a relay that strips
//! an offer to force an older version makes the two transcripts differ and
//! the handshake fail (property 7, no downgrade).

use crate::error::{Error, Result};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Versions this crate speaks, most preferred first.
pub const SUPPORTED_VERSIONS: &[u16] = &[PROTOCOL_VERSION];

/// Most versions or suites a SrcHello may list.
pub const MAX_OFFERS: usize = 8;

/// A cipher suite: every algorithm a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Suite {
    /// X25519 key agreement, HKDF-SHA256 key schedule and transcript
    /// SHA-256, AES-256-GCM records, HMAC-SHA256 Finished MACs, evidence
    /// signed with ECDSA P-384 over SHA-384.
    X25519Sha256Aes256GcmP384 = 1,
}

/// Suites this crate supports, most preferred first.
pub const SUPPORTED_SUITES: &[Suite] = &[Suite::X25519Sha256Aes256GcmP384];

impl Suite {
    /// The suite's code on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The suite with this code, if supported.
    pub fn from_code(code: u16) -> Option<Suite> {
        SUPPORTED_SUITES.iter().copied().find(|s| s.code() == code)
    }
}

/// The destination's choice: the highest version both speak.
pub(crate) fn choose_version(offered: &[u16]) -> Result<u16> {
    offered
        .iter()
        .copied()
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .max()
        .ok_or(Error::NoCommonVersion)
}

/// The destination's choice: the source's most preferred suite that this
/// side supports (the source owns the guest, so its preference wins).
pub(crate) fn choose_suite(offered: &[u16]) -> Result<Suite> {
    offered
        .iter()
        .find_map(|&c| Suite::from_code(c))
        .ok_or(Error::NoCommonSuite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(choose_version(&[7, 1, 3]), Ok(1));
        assert_eq!(choose_version(&[2, 3]), Err(Error::NoCommonVersion));
        assert_eq!(choose_suite(&[9, 1]), Ok(Suite::X25519Sha256Aes256GcmP384));
        assert_eq!(choose_suite(&[9]), Err(Error::NoCommonSuite));
    }
}
