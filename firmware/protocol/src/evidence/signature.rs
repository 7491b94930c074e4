//! ECDSA P-384 over SHA-384 in the report's encoding.
//!
//! SNP stores r and s little-endian in 72-byte fields; the `p384` crate
//! wants 48-byte big-endian scalars. Only the conversion lives here; the
//! signing and verifying are the `p384`/`ecdsa` crates'.

use super::report::{
    AttestationReport, ReportSignature, REPORT_LEN, SIGNATURE_ALGO_ECDSA_P384_SHA384, SIGNATURE_COMPONENT_LEN,
    SIGNED_LEN,
};
use crate::error::{Error, Result};
use p384::ecdsa::signature::{Signer, Verifier};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};

const SCALAR_LEN: usize = 48;

fn to_be(le: &[u8; SIGNATURE_COMPONENT_LEN]) -> Result<p384::FieldBytes> {
    // The 24 bytes above a P-384 scalar must be zero, or one signature
    // would have many encodings.
    if le[SCALAR_LEN..].iter().any(|&b| b != 0) {
        return Err(Error::BadSignature);
    }
    let mut be = p384::FieldBytes::default();
    for (dst, src) in be.iter_mut().zip(le[..SCALAR_LEN].iter().rev()) {
        *dst = *src;
    }
    Ok(be)
}

fn to_le(be: &[u8]) -> [u8; SIGNATURE_COMPONENT_LEN] {
    let mut le = [0u8; SIGNATURE_COMPONENT_LEN];
    for (dst, src) in le.iter_mut().zip(be.iter().rev()) {
        *dst = *src;
    }
    le
}

/// Signs the report's signed bytes.
pub(super) fn sign(key: &SigningKey, signed: &[u8]) -> ReportSignature {
    debug_assert_eq!(signed.len(), SIGNED_LEN);
    let sig: Signature = key.sign(signed);
    let (r, s) = sig.split_bytes();
    ReportSignature {
        r: to_le(&r),
        s: to_le(&s),
    }
}

/// Whether `sig` is `key`'s signature over `signed`.
pub(super) fn verify(key: &VerifyingKey, signed: &[u8], sig: &ReportSignature) -> Result<()> {
    let sig = Signature::from_scalars(to_be(&sig.r)?, to_be(&sig.s)?).map_err(|_| Error::BadSignature)?;
    key.verify(signed, &sig).map_err(|_| Error::BadSignature)
}

/// Whether `raw` (a report as received) carries `key`'s ECDSA P-384
/// signature over its first [`SIGNED_LEN`] bytes: the one report signature
/// check, for an emulated root and for a VCEK or VLEK alike.
pub fn verify_report_signature(key: &VerifyingKey, raw: &[u8; REPORT_LEN]) -> Result<()> {
    let report = AttestationReport::from_bytes(raw)?;
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384 {
        return Err(Error::SignatureAlgorithm(report.signature_algo));
    }
    verify(key, &raw[..SIGNED_LEN], &report.signature)
}
