//! AMD's X.509 extensions in a VCEK or VLEK certificate.
//!
//! AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
//! Interface Specification" (57230) puts the TCB the key was derived for
//! and, for a VCEK, the chip's ID into private extensions under
//! 1.3.6.1.4.1.3704.1: each SPL a DER INTEGER inside the extension's OCTET
//! STRING, the hwID the raw chip ID as the OCTET STRING's contents, a
//! VLEK's cspId the cloud provider's name.

use crate::product::SnpTcb;
use alloc::vec::Vec;
use covm_agent_protocol::Error;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::Certificate;

const BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
/// Turin and later.
const FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
/// VCEK only: the CHIP_ID (64 bytes before Turin, 8 from Turin on).
const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
/// VLEK only.
const CSP_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.5");

fn bad(what: &'static str) -> Error {
    Error::Endorsement { what }
}

/// What a VCEK/VLEK certificate says about its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VekExtensions {
    /// The TCB the key was issued for.
    pub tcb: SnpTcb,
    /// A VCEK's chip ID.
    pub hw_id: Option<Vec<u8>>,
    /// Whether a VLEK's cspId is present.
    pub csp_id: bool,
}

impl VekExtensions {
    /// Reads the extensions of `vek`.
    pub fn read(vek: &Certificate) -> Result<Self, Error> {
        let extensions = vek.tbs_certificate.extensions.as_deref().unwrap_or_default();
        let value = |oid: ObjectIdentifier| {
            extensions
                .iter()
                .find(|e| e.extn_id == oid)
                .map(|e| e.extn_value.as_bytes())
        };
        let spl = |oid: ObjectIdentifier, name: &'static str| -> Result<Option<u8>, Error> {
            value(oid)
                .map(|der| u8::from_der(der).map_err(|_| bad(name)))
                .transpose()
        };
        let required = |oid, name| spl(oid, name)?.ok_or(bad(name));
        let hw_id = value(HW_ID).map(<[u8]>::to_vec);
        if hw_id.as_ref().is_some_and(|id| !matches!(id.len(), 8 | 64)) {
            return Err(bad("the VCEK's hwID extension is neither 64 nor 8 bytes"));
        }
        Ok(VekExtensions {
            tcb: SnpTcb {
                boot_loader: required(
                    BL_SPL,
                    "the VCEK/VLEK's blSPL extension is missing or not a small INTEGER",
                )?,
                tee: required(
                    TEE_SPL,
                    "the VCEK/VLEK's teeSPL extension is missing or not a small INTEGER",
                )?,
                snp: required(
                    SNP_SPL,
                    "the VCEK/VLEK's snpSPL extension is missing or not a small INTEGER",
                )?,
                microcode: required(
                    UCODE_SPL,
                    "the VCEK/VLEK's ucodeSPL extension is missing or not a small INTEGER",
                )?,
                fmc: spl(FMC_SPL, "the VCEK/VLEK's fmcSPL extension is not a small INTEGER")?,
            },
            hw_id,
            csp_id: value(CSP_ID).is_some(),
        })
    }

    /// Whether the certificate is a VLEK (cspId) rather than a VCEK
    /// (hwID); a certificate with both or neither is refused.
    pub fn is_vlek(&self) -> Result<bool, Error> {
        match (self.hw_id.is_some(), self.csp_id) {
            (true, false) => Ok(false),
            (false, true) => Ok(true),
            _ => Err(bad(
                "the VCEK/VLEK certificate carries neither or both of hwID and cspId",
            )),
        }
    }

    /// Fails unless `reported` is the TCB the key was issued for: a VCEK
    /// is derived from the TCB, so a mismatch means the wrong certificate
    /// or a report claiming a TCB its key does not have.
    pub fn check_tcb(&self, reported: &SnpTcb) -> Result<(), Error> {
        let own = &self.tcb;
        let mismatch = if reported.boot_loader != own.boot_loader {
            Some("REPORTED_TCB's boot loader SPL is not the certificate's blSPL")
        } else if reported.tee != own.tee {
            Some("REPORTED_TCB's TEE SPL is not the certificate's teeSPL")
        } else if reported.snp != own.snp {
            Some("REPORTED_TCB's SNP SPL is not the certificate's snpSPL")
        } else if reported.microcode != own.microcode {
            Some("REPORTED_TCB's microcode SPL is not the certificate's ucodeSPL")
        } else if matches!((reported.fmc, own.fmc), (Some(r), Some(c)) if r != c) {
            // Only a Turin-layout TCB has an FMC component to compare.
            Some("REPORTED_TCB's FMC SPL is not the certificate's fmcSPL")
        } else {
            None
        };
        mismatch.map_or(Ok(()), |what| Err(bad(what)))
    }

    /// Fails unless `chip_id` is the VCEK's hwID. A zero CHIP_ID (the host
    /// set MASK_CHIP_ID) cannot be compared and is let through: the
    /// signature already binds the report to this chip's key.
    pub fn check_chip_id(&self, chip_id: &[u8; 64]) -> Result<(), Error> {
        let Some(hw_id) = &self.hw_id else {
            return Ok(());
        };
        if chip_id.iter().all(|&b| b == 0) {
            return Ok(());
        }
        // Turin's hwID is the 8 significant bytes of its CHIP_ID.
        if chip_id[..hw_id.len()] != hw_id[..] || chip_id[hw_id.len()..].iter().any(|&b| b != 0) {
            return Err(bad("CHIP_ID is not the VCEK's hwID"));
        }
        Ok(())
    }
}
