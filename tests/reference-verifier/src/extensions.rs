//! AMD's X.509 extensions in a VCEK or VLEK certificate.
//!
//! AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
//! Interface Specification" (57230) puts the TCB the key was derived for
//! and, for a VCEK, the chip's ID into private extensions under
//! 1.3.6.1.4.1.3704.1. The `sev` crate verifies certificates but does not
//! read these. The agent's verifier (`covm-snp-verify`) has the one reader
//! and the comparisons with a report; this module gives their outcomes this
//! crate's errors.

use crate::error::{AttestationError, Result};
use crate::report::{SigningKey, Tcb};
use covm_snp_verify::extensions::VekExtensions as Read;
use covm_snp_verify::SnpTcb;
use sev::certs::snp::Certificate;

/// What the VCEK/VLEK certificate says about the key.
#[derive(Debug, Clone)]
pub(crate) struct VekExtensions(Read);

impl VekExtensions {
    pub(crate) fn read(vek: &Certificate) -> Result<Self> {
        let cert: x509_cert::Certificate = vek.clone().into();
        Read::read(&cert)
            .map(VekExtensions)
            .map_err(|e| AttestationError::Extension {
                name: e.name,
                oid: e.oid,
                reason: e.problem.to_string(),
            })
    }

    /// A VCEK names its chip, a VLEK its cloud provider; never both.
    pub(crate) fn kind(&self) -> Result<SigningKey> {
        match self.0.is_vlek() {
            Some(false) => Ok(SigningKey::Vcek),
            Some(true) => Ok(SigningKey::Vlek),
            None => Err(AttestationError::LeafKind {
                hw_id: self.0.hw_id.is_some(),
                csp_id: self.0.csp_id,
            }),
        }
    }

    /// Fails unless `reported` is the TCB this key was issued for.
    pub(crate) fn check_tcb(&self, reported: &Tcb, key: SigningKey) -> Result<()> {
        let reported = SnpTcb {
            fmc: reported.fmc,
            boot_loader: reported.boot_loader,
            tee: reported.tee,
            snp: reported.snp,
            microcode: reported.microcode,
        };
        match self.0.tcb_mismatch(&reported) {
            None => Ok(()),
            Some(m) => Err(AttestationError::TcbMismatch {
                component: m.component,
                report: m.report,
                certificate: m.certificate,
                key,
            }),
        }
    }

    /// Fails unless `chip_id` is the VCEK's hwID (or masked to zeros).
    pub(crate) fn check_chip_id(&self, chip_id: &[u8; 64]) -> Result<()> {
        if self.0.chip_id_matches(chip_id) {
            Ok(())
        } else {
            Err(AttestationError::ChipIdMismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{verify_chain, SnpChain};
    use crate::report::Product;
    use sev::certs::snp::builtin;

    const MILAN_VCEK: &[u8] = include_bytes!("../../../resources/attestation/snp/milan-virtee-sev/vcek.der");
    const TURIN_VCEK: &[u8] = include_bytes!("../tests/data/turin-vcek.der");

    fn milan() -> VekExtensions {
        VekExtensions::read(&Certificate::from_der(MILAN_VCEK).unwrap()).unwrap()
    }

    fn tcb(fmc: Option<u8>, boot_loader: u8, tee: u8, snp: u8, microcode: u8) -> Tcb {
        Tcb {
            fmc,
            boot_loader,
            tee,
            snp,
            microcode,
            raw: 0,
        }
    }

    #[test]
    fn milan_vcek_extensions() {
        let ext = milan();
        assert_eq!(
            (
                ext.0.tcb.boot_loader,
                ext.0.tcb.tee,
                ext.0.tcb.snp,
                ext.0.tcb.microcode,
                ext.0.tcb.fmc
            ),
            (3, 0, 8, 0x73, None)
        );
        assert_eq!(ext.0.hw_id.as_ref().map(Vec::len), Some(64));
        assert_eq!(ext.kind().unwrap(), SigningKey::Vcek);
    }

    #[test]
    fn each_tcb_component_must_match() {
        let ext = milan();
        assert!(ext.check_tcb(&tcb(None, 3, 0, 8, 0x73), SigningKey::Vcek).is_ok());
        for (reported, component) in [
            (tcb(None, 2, 0, 8, 0x73), "boot_loader"),
            (tcb(None, 3, 1, 8, 0x73), "tee"),
            (tcb(None, 3, 0, 9, 0x73), "snp"),
            (tcb(None, 3, 0, 8, 0x72), "microcode"),
        ] {
            match ext.check_tcb(&reported, SigningKey::Vcek) {
                Err(AttestationError::TcbMismatch { component: c, .. }) => assert_eq!(c, component),
                other => panic!("{component}: {other:?}"),
            }
        }
    }

    #[test]
    fn chip_id_must_be_the_hw_id_unless_masked() {
        let ext = milan();
        let mut chip_id = [0u8; 64];
        chip_id.copy_from_slice(ext.0.hw_id.as_ref().unwrap());
        assert!(ext.check_chip_id(&chip_id).is_ok());
        assert!(ext.check_chip_id(&[0; 64]).is_ok());
        chip_id[63] ^= 1;
        assert!(matches!(
            ext.check_chip_id(&chip_id),
            Err(AttestationError::ChipIdMismatch)
        ));
    }

    #[test]
    fn turin_vcek_has_an_fmc_spl_and_an_eight_byte_hw_id() {
        let chain = SnpChain::from_bytes(builtin::turin::ARK, builtin::turin::ASK, TURIN_VCEK).unwrap();
        let endorsement = verify_chain(&chain).unwrap();
        assert_eq!(endorsement.product, Product::Turin);
        assert_eq!(endorsement.kind, SigningKey::Vcek);
        let ext = endorsement.extensions;
        assert_eq!(ext.0.tcb.fmc, Some(0));
        let hw_id = ext.0.hw_id.clone().unwrap();
        assert_eq!(hw_id.len(), 8);

        let mut chip_id = [0u8; 64];
        chip_id[..8].copy_from_slice(&hw_id);
        assert!(ext.check_chip_id(&chip_id).is_ok());
        chip_id[8] = 1; // Turin's CHIP_ID is zero past the hwID
        assert!(matches!(
            ext.check_chip_id(&chip_id),
            Err(AttestationError::ChipIdMismatch)
        ));

        let reported = tcb(
            Some(0),
            ext.0.tcb.boot_loader,
            ext.0.tcb.tee,
            ext.0.tcb.snp,
            ext.0.tcb.microcode,
        );
        assert!(ext.check_tcb(&reported, SigningKey::Vcek).is_ok());
        let reported = tcb(
            Some(1),
            ext.0.tcb.boot_loader,
            ext.0.tcb.tee,
            ext.0.tcb.snp,
            ext.0.tcb.microcode,
        );
        assert!(matches!(
            ext.check_tcb(&reported, SigningKey::Vcek),
            Err(AttestationError::TcbMismatch { component: "fmc", .. })
        ));
    }

    #[test]
    fn a_turin_report_tcb_is_decoded_with_the_turin_layout() {
        let stored = covm_agent_protocol::TcbVersion(u64::from_le_bytes([1, 2, 3, 4, 0, 0, 0, 9]));
        assert_eq!(
            Tcb::decode(stored, Some(Product::Turin)),
            Tcb {
                raw: stored.0,
                ..tcb(Some(1), 2, 3, 4, 9)
            }
        );
        assert_eq!(
            Tcb::decode(stored, Some(Product::Genoa)),
            Tcb {
                raw: stored.0,
                ..tcb(None, 1, 2, 0, 9)
            }
        );
    }
}
