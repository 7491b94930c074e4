//! SEV-SNP: a report signed by a VCEK or VLEK that AMD's chain certifies.

use crate::chain::{verify_chain, SnpChain};
use crate::error::{AttestationError, Result};
use crate::report::{parse, product_from_cpuid, Product, SigningKey, Tcb, VerifiedReport};
use crate::signature::verify_report;

/// Verifies an SEV-SNP report against its certificate chain.
///
/// In order, each failure returning at once:
/// 1. the report is 1184 bytes and the protocol's parser takes it;
/// 2. the chain: ARK self-signed, ARK one of AMD's (pinned), ARK signs
///    ASK/ASVK, ASK/ASVK signs VCEK/VLEK (RSA-PSS SHA-384, the `sev`
///    crate's check);
/// 3. KEY_INFO.SIGNING_KEY names the key the chain ends in;
/// 4. the report's ECDSA P-384 signature by that key over bytes
///    0..0x2A0 (the same code checks emulated reports);
/// 5. sanity of the now-authentic fields against the certificate: CPUID
///    product (report version 3+) against the ARK's, REPORTED_TCB
///    against the certificate's TCB extensions, CHIP_ID against a VCEK's
///    hwID.
pub fn verify_snp(report: &[u8], chain: &SnpChain) -> Result<VerifiedReport> {
    let (raw, fields) = parse(report)?;
    let endorsement = verify_chain(chain)?;

    let named = SigningKey::from_key_info(fields.key_info)?;
    if named != endorsement.kind {
        return Err(AttestationError::SigningKeyMismatch {
            report: named,
            certificate: endorsement.kind,
        });
    }
    verify_report(&endorsement.key, endorsement.kind, raw, &fields)?;

    check_product(
        endorsement.product,
        fields.version,
        fields.cpuid_fam_id,
        fields.cpuid_mod_id,
    )?;
    let reported_tcb = Tcb::decode(fields.reported_tcb, Some(endorsement.product));
    endorsement.extensions.check_tcb(&reported_tcb, endorsement.kind)?;
    endorsement.extensions.check_chip_id(&fields.chip_id)?;

    Ok(VerifiedReport {
        report: fields,
        signing_key: endorsement.kind,
        product: Some(endorsement.product),
        reported_tcb,
    })
}

/// Reports from version 3 on carry the CPU's family and model; they must
/// be the ARK's product line, or the TCB would be decoded with the wrong
/// layout. Version 2 reports do not, and the ARK alone decides.
fn check_product(chain: Product, version: u32, family: u8, model: u8) -> Result<()> {
    if version >= 3 && product_from_cpuid(family, model) != Some(chain) {
        return Err(AttestationError::ProductMismatch { chain, family, model });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_must_name_the_arks_product_from_version_3() {
        assert!(check_product(Product::Genoa, 3, 0x19, 0x11).is_ok());
        assert!(check_product(Product::Milan, 3, 0x19, 0x01).is_ok());
        assert!(check_product(Product::Turin, 5, 0x1A, 0x02).is_ok());
        assert!(matches!(
            check_product(Product::Milan, 3, 0x19, 0x11),
            Err(AttestationError::ProductMismatch {
                chain: Product::Milan,
                ..
            })
        ));
        // Unknown CPUIDs are not taken on trust either.
        assert!(check_product(Product::Genoa, 3, 0, 0).is_err());
        // Version 2 has no CPUID fields: the ARK decides.
        assert!(check_product(Product::Milan, 2, 0, 0).is_ok());
    }
}
