//! SEV-SNP evidence for the migration protocol's policy check.
//!
//! `covm_agent_protocol::check_peer` asks an [`EvidenceVerifier`] whether
//! a peer's evidence is genuine before it judges measurement, TCB and
//! policy. [`SnpVerifier`] answers for `sev_snp` evidence with this
//! crate's full check ([`crate::verify_snp`]). A report names its chip and
//! TCB but carries no certificate, so the verifier holds the VCEK (or VLEK)
//! chains it may need, from a certificate cache or AMD's KDS: handing it
//! chains needs no trust, since every chain must end at one of AMD's ARKs
//! and the report must verify under its VCEK.

use crate::{verify_snp, SnpChain};
use covm_agent_protocol::{Error, Evidence, EvidenceVerifier, Platform, Policy};

/// Verifies `sev_snp` evidence against a set of AMD certificate chains.
pub struct SnpVerifier {
    chains: Vec<SnpChain>,
}

impl SnpVerifier {
    /// A verifier that tries `chains` in order.
    pub fn new(chains: Vec<SnpChain>) -> Self {
        SnpVerifier { chains }
    }
}

impl EvidenceVerifier for SnpVerifier {
    /// `Ok` when some chain verifies the report (chain, signature, TCB and
    /// chip cross-checks). The policy names no AMD key: AMD's ARKs are the
    /// roots. Failures read as the protocol's `BadSignature`; the detailed
    /// reason of each chain is logged by the caller's `verify_snp` use.
    fn verify(&self, evidence: &Evidence, _policy: &Policy) -> Result<(), Error> {
        if evidence.platform() != Platform::SevSnp {
            return Err(Error::UnsupportedPlatform(evidence.platform()));
        }
        if self.chains.is_empty() {
            return Err(Error::NoTrustedRoot);
        }
        let report = evidence.raw_report();
        if self.chains.iter().any(|chain| verify_snp(report, chain).is_ok()) {
            Ok(())
        } else {
            Err(Error::BadSignature)
        }
    }
}
