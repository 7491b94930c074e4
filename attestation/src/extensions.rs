//! AMD's X.509 extensions in a VCEK or VLEK certificate.
//!
//! AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
//! Interface Specification" (57230) puts the TCB the key was derived for
//! and, for a VCEK, the chip's ID into private extensions under
//! 1.3.6.1.4.1.3704.1. The `sev` crate verifies certificates but does not
//! read these, so this module does, with the `der` decoder x509-cert uses.

use crate::error::{AttestationError, Result};
use crate::report::{SigningKey, Tcb};
use sev::certs::snp::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;

/// One extension: its name in the specification and its OID.
struct Ext {
    name: &'static str,
    oid: &'static str,
}

impl Ext {
    const fn new(name: &'static str, oid: &'static str) -> Self {
        Ext { name, oid }
    }
}

const BL_SPL: Ext = Ext::new("blSPL", "1.3.6.1.4.1.3704.1.3.1");
const TEE_SPL: Ext = Ext::new("teeSPL", "1.3.6.1.4.1.3704.1.3.2");
const SNP_SPL: Ext = Ext::new("snpSPL", "1.3.6.1.4.1.3704.1.3.3");
const UCODE_SPL: Ext = Ext::new("ucodeSPL", "1.3.6.1.4.1.3704.1.3.8");
/// Turin and later.
const FMC_SPL: Ext = Ext::new("fmcSPL", "1.3.6.1.4.1.3704.1.3.9");
/// VCEK only: the CHIP_ID (64 bytes before Turin, 8 from Turin on).
const HW_ID: Ext = Ext::new("hwID", "1.3.6.1.4.1.3704.1.4");
/// VLEK only: the cloud provider the key was loaded for.
const CSP_ID: Ext = Ext::new("cspId", "1.3.6.1.4.1.3704.1.5");

/// What the VCEK/VLEK certificate says about the key.
#[derive(Debug, Clone)]
pub(crate) struct VekExtensions {
    pub boot_loader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    pub fmc: Option<u8>,
    pub hw_id: Option<Vec<u8>>,
    pub csp_id: bool,
}

impl VekExtensions {
    pub(crate) fn read(vek: &Certificate) -> Result<Self> {
        let cert: x509_cert::Certificate = vek.clone().into();
        let extensions = cert.tbs_certificate.extensions.unwrap_or_default();
        let value = |ext: &Ext| -> Option<Vec<u8>> {
            let oid = ObjectIdentifier::new_unwrap(ext.oid);
            extensions
                .iter()
                .find(|e| e.extn_id == oid)
                .map(|e| e.extn_value.as_bytes().to_vec())
        };
        // An SPL is a DER INTEGER inside the extension's OCTET STRING.
        let spl = |ext: &Ext| -> Result<Option<u8>> {
            value(ext)
                .map(|der| u8::from_der(&der).map_err(|e| malformed(ext, e.to_string())))
                .transpose()
        };
        let required = |ext: &Ext| spl(ext)?.ok_or_else(|| malformed(ext, "missing".into()));
        // hwID is the raw chip ID as the OCTET STRING's contents.
        let hw_id = value(&HW_ID);
        if let Some(id) = &hw_id {
            if !matches!(id.len(), 8 | 64) {
                return Err(malformed(&HW_ID, format!("{} bytes, expected 64 or 8", id.len())));
            }
        }
        Ok(VekExtensions {
            boot_loader: required(&BL_SPL)?,
            tee: required(&TEE_SPL)?,
            snp: required(&SNP_SPL)?,
            microcode: required(&UCODE_SPL)?,
            fmc: spl(&FMC_SPL)?,
            hw_id,
            csp_id: value(&CSP_ID).is_some(),
        })
    }

    /// A VCEK names its chip, a VLEK its cloud provider; never both.
    pub(crate) fn kind(&self) -> Result<SigningKey> {
        match (self.hw_id.is_some(), self.csp_id) {
            (true, false) => Ok(SigningKey::Vcek),
            (false, true) => Ok(SigningKey::Vlek),
            (hw_id, csp_id) => Err(AttestationError::LeafKind { hw_id, csp_id }),
        }
    }

    /// Fails unless `reported` is the TCB this key was issued for: a VCEK
    /// is derived from the TCB, so a mismatch means the wrong certificate
    /// (or a report claiming a TCB its key does not have).
    pub(crate) fn check_tcb(&self, reported: &Tcb, key: SigningKey) -> Result<()> {
        let mut pairs = vec![
            ("boot_loader", reported.boot_loader, self.boot_loader),
            ("tee", reported.tee, self.tee),
            ("snp", reported.snp, self.snp),
            ("microcode", reported.microcode, self.microcode),
        ];
        // Only a Turin-layout TCB has an FMC component to compare.
        if let (Some(report), Some(certificate)) = (reported.fmc, self.fmc) {
            pairs.push(("fmc", report, certificate));
        }
        for (component, report, certificate) in pairs {
            if report != certificate {
                return Err(AttestationError::TcbMismatch {
                    component,
                    report,
                    certificate,
                    key,
                });
            }
        }
        Ok(())
    }

    /// Fails unless `chip_id` is the VCEK's hwID. A zero CHIP_ID (the
    /// host set MASK_CHIP_ID) cannot be compared and is let through: the
    /// signature already binds the report to this chip's key.
    pub(crate) fn check_chip_id(&self, chip_id: &[u8; 64]) -> Result<()> {
        let Some(hw_id) = &self.hw_id else {
            return Ok(());
        };
        if chip_id.iter().all(|&b| b == 0) {
            return Ok(());
        }
        // Turin's hwID is the 8 significant bytes of its CHIP_ID.
        if chip_id[..hw_id.len()] != hw_id[..] || chip_id[hw_id.len()..].iter().any(|&b| b != 0) {
            return Err(AttestationError::ChipIdMismatch);
        }
        Ok(())
    }
}

fn malformed(ext: &Ext, reason: String) -> AttestationError {
    AttestationError::Extension {
        name: ext.name,
        oid: ext.oid,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{verify_chain, SnpChain};
    use crate::report::Product;
    use sev::certs::snp::builtin;

    const MILAN_VCEK: &[u8] = include_bytes!("../../resources/attestation/snp/milan-virtee-sev/vcek.der");
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
            (ext.boot_loader, ext.tee, ext.snp, ext.microcode, ext.fmc),
            (3, 0, 8, 0x73, None)
        );
        assert_eq!(ext.hw_id.as_ref().map(Vec::len), Some(64));
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
        chip_id.copy_from_slice(ext.hw_id.as_ref().unwrap());
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
        assert_eq!(ext.fmc, Some(0));
        let hw_id = ext.hw_id.clone().unwrap();
        assert_eq!(hw_id.len(), 8);

        let mut chip_id = [0u8; 64];
        chip_id[..8].copy_from_slice(&hw_id);
        assert!(ext.check_chip_id(&chip_id).is_ok());
        chip_id[8] = 1; // Turin's CHIP_ID is zero past the hwID
        assert!(matches!(
            ext.check_chip_id(&chip_id),
            Err(AttestationError::ChipIdMismatch)
        ));

        let reported = tcb(Some(0), ext.boot_loader, ext.tee, ext.snp, ext.microcode);
        assert!(ext.check_tcb(&reported, SigningKey::Vcek).is_ok());
        let reported = tcb(Some(1), ext.boot_loader, ext.tee, ext.snp, ext.microcode);
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
