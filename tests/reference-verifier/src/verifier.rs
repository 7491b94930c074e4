//! SEV-SNP evidence for the migration protocol's policy check.
//!
//! `covm_agent_protocol::check_peer` asks an [`EvidenceVerifier`] whether
//! a peer's evidence is genuine before it judges measurement, TCB and
//! policy. [`SnpVerifier`] answers for `sev_snp` evidence with this
//! crate's full check ([`crate::verify_snp`]). The chain comes with the
//! evidence (its certificate table, as the guest's extended report request
//! returns it) or from chains the verifier holds (a certificate cache or
//! AMD's KDS). Neither needs trust: every chain must end at one of AMD's
//! ARKs and the report must verify under its VCEK. The in-guest agent's
//! verifier (`covm-snp-verify`) reads the same table.

use crate::{verify_snp, SnpChain};
use covm_agent_protocol::{Error, Evidence, EvidenceVerifier, Platform, Policy};
use covm_snp_verify::{CertTable, SigningKey};

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
        let carried = carried_chain(evidence)?;
        if self.chains.is_empty() && carried.is_none() {
            return Err(Error::NoTrustedRoot);
        }
        let report = evidence.raw_report();
        if carried
            .iter()
            .chain(&self.chains)
            .any(|chain| verify_snp(report, chain).is_ok())
        {
            Ok(())
        } else {
            Err(Error::BadSignature)
        }
    }
}

/// The chain in the evidence's certificate table, ending in the key the
/// report's KEY_INFO names, if it has a table (an empty table is none; a
/// malformed or incomplete one is refused).
fn carried_chain(evidence: &Evidence) -> Result<Option<SnpChain>, Error> {
    if evidence.certs().is_empty() {
        return Ok(None);
    }
    let leaf = SigningKey::from_key_info(evidence.report().key_info)?;
    let der = CertTable::parse(evidence.certs())?.chain(leaf)?;
    SnpChain::from_bytes(der.ark, der.ask, der.vek)
        .map(Some)
        .map_err(|_| Error::Endorsement {
            what: "a certificate in the table does not parse",
        })
}
