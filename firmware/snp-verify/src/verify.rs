//! The whole check, and the protocol's [`EvidenceVerifier`] for SEV-SNP.

use crate::chain::{self, Link};
use crate::extensions::VekExtensions;
use crate::product::{Product, SnpTcb};
use crate::table::CertTable;
use covm_agent_protocol::evidence::{verify_report_signature, REPORT_LEN};
use covm_agent_protocol::{AttestationReport, Error, Evidence, EvidenceVerifier, Platform, Policy};

fn bad(what: &'static str) -> Error {
    Error::Endorsement { what }
}

/// The kind of key that signed a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
}

impl SigningKey {
    /// The key KEY_INFO.SIGNING_KEY (bits 4:2) names.
    pub fn from_key_info(key_info: u32) -> Result<SigningKey, Error> {
        match (key_info >> 2) & 0b111 {
            0 => Ok(SigningKey::Vcek),
            1 => Ok(SigningKey::Vlek),
            _ => Err(bad("KEY_INFO names a signing key other than a VCEK or VLEK")),
        }
    }
}

/// What a verified report's endorsement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endorsed {
    /// The product line whose ARK anchors the chain.
    pub product: Product,
    /// VCEK or VLEK.
    pub signing_key: SigningKey,
    /// REPORTED_TCB read with the product's layout.
    pub reported_tcb: SnpTcb,
}

/// Verifies the SEV-SNP report `raw` (as received) against the
/// certificate table `certs`; the steps are the crate's documentation's.
pub fn verify_snp(raw: &[u8; REPORT_LEN], certs: &[u8]) -> Result<Endorsed, Error> {
    let report = AttestationReport::from_bytes(raw)?;
    let table = CertTable::parse(certs)?;
    let signing_key = SigningKey::from_key_info(report.key_info)?;
    let der = table.chain(signing_key)?;

    // Top down, so the first failure names the highest broken link.
    let ark = chain::parse(Link::Ark, der.ark)?;
    let product = chain::pinned_ark(&ark, der.ark)?;
    let ask = chain::parse(Link::Ask, der.ask)?;
    chain::check_link(&ark, &ask, Link::Ask)?;
    let vek = chain::parse(Link::Vek, der.vek)?;
    chain::check_link(&ask, &vek, Link::Vek)?;

    let extensions = VekExtensions::read(&vek)?;
    let is_vlek = extensions.is_vlek().ok_or(bad(
        "the VCEK/VLEK certificate carries neither or both of hwID and cspId",
    ))?;
    if is_vlek != (signing_key == SigningKey::Vlek) {
        return Err(bad(
            "KEY_INFO names another kind of key (VCEK or VLEK) than the certificate is",
        ));
    }
    verify_report_signature(&chain::report_key(&vek)?, raw)?;

    // Reports from version 3 on name the CPU; it must be the ARK's product
    // line, or the TCB would be read with the wrong layout.
    if report.version >= 3 && Product::from_cpuid(report.cpuid_fam_id, report.cpuid_mod_id) != Some(product) {
        return Err(bad(
            "the report's CPUID family and model are not the ARK's product line",
        ));
    }
    let reported_tcb = SnpTcb::decode(report.reported_tcb.0, product);
    if let Some(mismatch) = extensions.tcb_mismatch(&reported_tcb) {
        return Err(mismatch.into());
    }
    if !extensions.chip_id_matches(&report.chip_id) {
        return Err(bad("CHIP_ID is not the VCEK's hwID"));
    }
    Ok(Endorsed {
        product,
        signing_key,
        reported_tcb,
    })
}

/// The agent's verifier for `sev_snp` evidence: [`verify_snp`] on the
/// evidence's report and certificate table. AMD's pinned ARKs are the
/// roots; the policy's trusted emulated roots play no part.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnpChainVerifier;

impl EvidenceVerifier for SnpChainVerifier {
    fn verify(&self, evidence: &Evidence, _policy: &Policy) -> Result<(), Error> {
        if evidence.platform() != Platform::SevSnp {
            return Err(Error::UnsupportedPlatform(evidence.platform()));
        }
        verify_snp(evidence.raw_report(), evidence.certs()).map(|_| ())
    }
}
