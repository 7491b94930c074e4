//! The report's signature check: one function for every root.
//!
//! An SEV-SNP report signed by a VCEK or VLEK and an emulated report
//! signed by covm's emulated root are checked by this same code, so the
//! emulated platform exercises exactly the path real hardware takes: ECDSA
//! P-384 with SHA-384 over the report's first 0x2A0 bytes *as received*
//! (never over a re-encoding, which would drop reserved bytes the
//! signature covers).

use crate::error::{AttestationError, Result};
use crate::report::SigningKey;
use covm_agent_protocol::evidence::report::{
    ReportSignature, REPORT_LEN, SIGNATURE_ALGO_ECDSA_P384_SHA384, SIGNED_LEN,
};
use covm_agent_protocol::AttestationReport;
use p384::ecdsa::signature::Verifier;
use p384::ecdsa::VerifyingKey;

/// Bytes of a P-384 scalar; the report stores r and s in 72-byte fields.
const SCALAR_LEN: usize = 48;

/// Checks that `raw` (whose parsed fields are `fields`) is signed by `key`,
/// named `signer` in errors.
pub(crate) fn verify_report(
    key: &VerifyingKey,
    signer: SigningKey,
    raw: &[u8; REPORT_LEN],
    fields: &AttestationReport,
) -> Result<()> {
    if fields.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384 {
        return Err(AttestationError::SignatureAlgorithm(fields.signature_algo));
    }
    let signature = to_p384(&fields.signature, signer)?;
    key.verify(&raw[..SIGNED_LEN], &signature)
        .map_err(|_| AttestationError::ReportSignature { key: signer })
}

fn to_p384(signature: &ReportSignature, signer: SigningKey) -> Result<p384::ecdsa::Signature> {
    // The bytes above the scalar are outside what ECDSA checks; unless
    // they are zero, one signature would have many encodings.
    for (component, bytes) in [("R", &signature.r), ("S", &signature.s)] {
        if bytes[SCALAR_LEN..].iter().any(|&b| b != 0) {
            return Err(AttestationError::SignatureEncoding { component });
        }
    }
    // The little-endian to big-endian conversion is the sev crate's.
    let sev_signature = sev::certs::snp::ecdsa::Signature::new(signature.r, signature.s);
    p384::ecdsa::Signature::try_from(&sev_signature).map_err(|_| AttestationError::ReportSignature { key: signer })
}
