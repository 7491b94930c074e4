//! covm's emulated platform: a report in the SEV-SNP layout, signed by an
//! emulated P-384 root instead of a VCEK (see `docs/platforms.md`). There
//! is no chain and no TCB or chip to cross-check: only the signature,
//! with the same code as for SEV-SNP.

use crate::error::{AttestationError, Result};
use crate::report::{parse, SigningKey, Tcb, VerifiedReport};
use crate::signature::verify_report;
use covm_agent_protocol::policy::ROOT_KEY_LEN;
use p384::ecdsa::VerifyingKey;

/// The public half of an emulated root, as a migration policy's
/// `trusted_roots` lists it and `EmulatedRoot::public_key` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedRootKey(VerifyingKey);

impl EmulatedRootKey {
    /// The key from its SEC1 compressed encoding (49 bytes). Compressed
    /// only, as the protocol's policies require: one key, one encoding.
    pub fn from_sec1(key: &[u8; ROOT_KEY_LEN]) -> Result<Self> {
        if !matches!(key[0], 0x02 | 0x03) {
            return Err(AttestationError::EmulatedRootKey);
        }
        VerifyingKey::from_sec1_bytes(key)
            .map(EmulatedRootKey)
            .map_err(|_| AttestationError::EmulatedRootKey)
    }
}

/// Verifies an emulated-platform report: its ECDSA P-384 signature by
/// `root` over bytes 0..0x2A0. The TCB is decoded with the Milan/Genoa
/// layout the protocol writes.
pub fn verify_emulated(report: &[u8], root: &EmulatedRootKey) -> Result<VerifiedReport> {
    let (raw, fields) = parse(report)?;
    verify_report(&root.0, SigningKey::EmulatedRoot, raw, &fields)?;
    Ok(VerifiedReport {
        reported_tcb: Tcb::decode(fields.reported_tcb, None),
        report: fields,
        signing_key: SigningKey::EmulatedRoot,
        product: None,
    })
}
