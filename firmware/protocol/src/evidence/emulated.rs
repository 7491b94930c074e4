//! covm's emulated attestation root.
//!
//! On the emulated platform there is no PSP: covm (the host) holds a P-384
//! key, fills an SNP-layout report for the guest and signs it. The guest
//! owner's policy lists the public halves of the roots it trusts. This is
//! emulation: it shows the protocol working end to end, it does not make a
//! host trustworthy. [`EmulatedRootVerifier`] refuses any other platform's
//! evidence, so an emulated root can never pass for SEV-SNP hardware.

use super::report::{AttestationReport, SIGNATURE_ALGO_ECDSA_P384_SHA384, SIGNED_LEN};
use super::{signature, Evidence, EvidenceVerifier, Platform};
use crate::error::{Error, Result};
use crate::policy::{Policy, ROOT_KEY_LEN};
use p384::ecdsa::{SigningKey, VerifyingKey};

/// The signing half of an emulated root (host side).
pub struct EmulatedRoot {
    // Zeroized on drop by the p384 crate.
    key: SigningKey,
}

impl EmulatedRoot {
    /// The root whose secret scalar is `secret` (big-endian, as SEC1).
    pub fn from_secret(secret: &[u8; 48]) -> Result<Self> {
        let key = SigningKey::from_slice(secret).map_err(|_| Error::Invalid {
            what: "emulated root secret (not a P-384 scalar)",
        })?;
        Ok(EmulatedRoot { key })
    }

    /// A fresh root.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        EmulatedRoot {
            key: SigningKey::random(rng),
        }
    }

    /// The public key as a policy lists it: SEC1 compressed.
    pub fn public_key(&self) -> [u8; ROOT_KEY_LEN] {
        let point = self.key.verifying_key().to_encoded_point(true);
        let mut out = [0u8; ROOT_KEY_LEN];
        out.copy_from_slice(point.as_bytes());
        out
    }

    /// Sets `report`'s signature algorithm and signs it.
    pub fn sign(&self, report: &mut AttestationReport) {
        report.signature_algo = SIGNATURE_ALGO_ECDSA_P384_SHA384;
        let raw = report.to_bytes();
        report.signature = signature::sign(&self.key, &raw[..SIGNED_LEN]);
    }
}

/// Verifies emulated-platform evidence against the roots the verifying
/// side's own policy trusts.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmulatedRootVerifier;

impl EvidenceVerifier for EmulatedRootVerifier {
    fn verify(&self, evidence: &Evidence, policy: &Policy) -> Result<()> {
        if evidence.platform() != Platform::EmulatedCvm {
            return Err(Error::UnsupportedPlatform(evidence.platform()));
        }
        // No chain: a table here would be bytes nothing checks.
        if !evidence.certs().is_empty() {
            return Err(Error::Invalid {
                what: "emulated evidence: it carries a certificate table (only SEV-SNP evidence has one)",
            });
        }
        let report = evidence.report();
        if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384 {
            return Err(Error::SignatureAlgorithm(report.signature_algo));
        }
        let roots = policy.trusted_roots();
        if roots.is_empty() {
            return Err(Error::NoTrustedRoot);
        }
        for root in roots {
            // Policy::decode already checked every key is a valid point.
            let key = VerifyingKey::from_sec1_bytes(root).map_err(|_| Error::BadRootKey)?;
            if signature::verify_report_signature(&key, evidence.raw_report()).is_ok() {
                return Ok(());
            }
        }
        Err(Error::BadSignature)
    }
}
