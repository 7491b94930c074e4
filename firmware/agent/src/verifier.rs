//! Which code judges a peer's evidence: the verifier of the platform the
//! evidence names. Each verifier refuses every other platform's evidence,
//! so an emulated root can never pass for SEV-SNP hardware, nor the
//! reverse; whether the platform is allowed at all is the policy's
//! question, asked by `check_peer` after the evidence proved genuine.

use covm_agent_protocol::{EmulatedRootVerifier, Error, Evidence, EvidenceVerifier, Platform, Policy};
use covm_snp_verify::SnpChainVerifier;

/// Dispatches on the evidence's platform.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PeerVerifier;

impl EvidenceVerifier for PeerVerifier {
    fn verify(&self, evidence: &Evidence, policy: &Policy) -> Result<(), Error> {
        match evidence.platform() {
            Platform::EmulatedCvm => EmulatedRootVerifier.verify(evidence, policy),
            // AMD's chain from the pinned ARKs (needs the agent's heap).
            Platform::SevSnp => SnpChainVerifier.verify(evidence, policy),
            // No TD quote verification yet (docs/platforms.md).
            Platform::Tdx => Err(Error::UnsupportedPlatform(Platform::Tdx)),
        }
    }
}
