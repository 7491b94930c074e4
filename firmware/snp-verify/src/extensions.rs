//! AMD's X.509 extensions in a VCEK or VLEK certificate, read and compared
//! with a report: the one reader both the agent's check (`verify`) and the
//! host's `covm-reference-verifier` use, each turning the outcomes into its own
//! errors.
//!
//! AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
//! Interface Specification" (57230) puts the TCB the key was derived for
//! and, for a VCEK, the chip's ID into private extensions under
//! 1.3.6.1.4.1.3704.1: each SPL a DER INTEGER inside the extension's OCTET
//! STRING, the hwID the raw chip ID as the OCTET STRING's contents, a
//! VLEK's cspId the cloud provider's name.

use crate::product::SnpTcb;
use alloc::vec::Vec;
use core::fmt;
use covm_agent_protocol::Error;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::Certificate;

/// One extension: its name in the specification, its OID, and the agent's
/// refusal when it is missing or malformed.
struct Ext {
    name: &'static str,
    oid: &'static str,
    refusal: &'static str,
}

impl Ext {
    fn value<'a>(&self, extensions: &'a [x509_cert::ext::Extension]) -> Option<&'a [u8]> {
        let oid = ObjectIdentifier::new_unwrap(self.oid);
        extensions
            .iter()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    fn error(&self, problem: Problem) -> ExtensionError {
        ExtensionError {
            name: self.name,
            oid: self.oid,
            problem,
            refusal: self.refusal,
        }
    }
}

const BL_SPL: Ext = Ext {
    name: "blSPL",
    oid: "1.3.6.1.4.1.3704.1.3.1",
    refusal: "the VCEK/VLEK's blSPL extension is missing or not a small INTEGER",
};
const TEE_SPL: Ext = Ext {
    name: "teeSPL",
    oid: "1.3.6.1.4.1.3704.1.3.2",
    refusal: "the VCEK/VLEK's teeSPL extension is missing or not a small INTEGER",
};
const SNP_SPL: Ext = Ext {
    name: "snpSPL",
    oid: "1.3.6.1.4.1.3704.1.3.3",
    refusal: "the VCEK/VLEK's snpSPL extension is missing or not a small INTEGER",
};
const UCODE_SPL: Ext = Ext {
    name: "ucodeSPL",
    oid: "1.3.6.1.4.1.3704.1.3.8",
    refusal: "the VCEK/VLEK's ucodeSPL extension is missing or not a small INTEGER",
};
/// Turin and later.
const FMC_SPL: Ext = Ext {
    name: "fmcSPL",
    oid: "1.3.6.1.4.1.3704.1.3.9",
    refusal: "the VCEK/VLEK's fmcSPL extension is not a small INTEGER",
};
/// VCEK only: the CHIP_ID (64 bytes before Turin, 8 from Turin on).
const HW_ID: Ext = Ext {
    name: "hwID",
    oid: "1.3.6.1.4.1.3704.1.4",
    refusal: "the VCEK's hwID extension is neither 64 nor 8 bytes",
};
/// VLEK only: the cloud provider the key was loaded for.
const CSP_ID: &str = "1.3.6.1.4.1.3704.1.5";

/// What is wrong with an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A required extension is absent.
    Missing,
    /// An SPL is not a DER INTEGER of 0 to 255 (the decoder's words).
    NotSmallInteger(x509_cert::der::Error),
    /// The hwID has this many bytes, not 64 or 8.
    HwIdLength(usize),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("missing"),
            Problem::NotSmallInteger(e) => fmt::Display::fmt(e, f),
            Problem::HwIdLength(n) => write!(f, "{n} bytes, expected 64 or 8"),
        }
    }
}

/// A missing or malformed extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionError {
    /// Its name in AMD's specification.
    pub name: &'static str,
    /// Its object identifier.
    pub oid: &'static str,
    /// What is wrong.
    pub problem: Problem,
    refusal: &'static str,
}

impl From<ExtensionError> for Error {
    fn from(e: ExtensionError) -> Error {
        Error::Endorsement { what: e.refusal }
    }
}

/// A TCB component whose value in the report is not the certificate's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcbMismatch {
    /// `boot_loader`, `tee`, `snp`, `microcode` or `fmc`.
    pub component: &'static str,
    /// Its value in the report.
    pub report: u8,
    /// Its value in the certificate.
    pub certificate: u8,
    refusal: &'static str,
}

impl From<TcbMismatch> for Error {
    fn from(m: TcbMismatch) -> Error {
        Error::Endorsement { what: m.refusal }
    }
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
    pub fn read(vek: &Certificate) -> Result<Self, ExtensionError> {
        let extensions = vek.tbs_certificate.extensions.as_deref().unwrap_or_default();
        let spl = |ext: &Ext| -> Result<Option<u8>, ExtensionError> {
            ext.value(extensions)
                .map(|der| u8::from_der(der).map_err(|e| ext.error(Problem::NotSmallInteger(e))))
                .transpose()
        };
        let required = |ext: &Ext| spl(ext)?.ok_or(ext.error(Problem::Missing));
        let hw_id = HW_ID.value(extensions).map(<[u8]>::to_vec);
        if let Some(id) = hw_id.as_ref().filter(|id| !matches!(id.len(), 8 | 64)) {
            return Err(HW_ID.error(Problem::HwIdLength(id.len())));
        }
        let csp_id = ObjectIdentifier::new_unwrap(CSP_ID);
        Ok(VekExtensions {
            tcb: SnpTcb {
                boot_loader: required(&BL_SPL)?,
                tee: required(&TEE_SPL)?,
                snp: required(&SNP_SPL)?,
                microcode: required(&UCODE_SPL)?,
                fmc: spl(&FMC_SPL)?,
            },
            hw_id,
            csp_id: extensions.iter().any(|e| e.extn_id == csp_id),
        })
    }

    /// Whether the certificate is a VLEK (cspId) rather than a VCEK
    /// (hwID); `None` for a certificate with both or neither.
    pub fn is_vlek(&self) -> Option<bool> {
        match (self.hw_id.is_some(), self.csp_id) {
            (true, false) => Some(false),
            (false, true) => Some(true),
            _ => None,
        }
    }

    /// The first component of `reported` that is not the TCB the key was
    /// issued for: a VCEK is derived from the TCB, so a mismatch means the
    /// wrong certificate or a report claiming a TCB its key does not have.
    /// FMC is compared only when both have one (a Turin-layout TCB).
    pub fn tcb_mismatch(&self, reported: &SnpTcb) -> Option<TcbMismatch> {
        let own = &self.tcb;
        let mismatch = |component, report, certificate, refusal| {
            (report != certificate).then_some(TcbMismatch {
                component,
                report,
                certificate,
                refusal,
            })
        };
        mismatch(
            "boot_loader",
            reported.boot_loader,
            own.boot_loader,
            "REPORTED_TCB's boot loader SPL is not the certificate's blSPL",
        )
        .or_else(|| {
            mismatch(
                "tee",
                reported.tee,
                own.tee,
                "REPORTED_TCB's TEE SPL is not the certificate's teeSPL",
            )
        })
        .or_else(|| {
            mismatch(
                "snp",
                reported.snp,
                own.snp,
                "REPORTED_TCB's SNP SPL is not the certificate's snpSPL",
            )
        })
        .or_else(|| {
            mismatch(
                "microcode",
                reported.microcode,
                own.microcode,
                "REPORTED_TCB's microcode SPL is not the certificate's ucodeSPL",
            )
        })
        .or_else(|| match (reported.fmc, own.fmc) {
            (Some(r), Some(c)) => mismatch("fmc", r, c, "REPORTED_TCB's FMC SPL is not the certificate's fmcSPL"),
            _ => None,
        })
    }

    /// Whether `chip_id` is the VCEK's hwID. A zero CHIP_ID (the host set
    /// MASK_CHIP_ID) cannot be compared and is let through: the signature
    /// already binds the report to this chip's key. A VLEK names no chip.
    pub fn chip_id_matches(&self, chip_id: &[u8; 64]) -> bool {
        let Some(hw_id) = &self.hw_id else {
            return true;
        };
        // Turin's hwID is the 8 significant bytes of its CHIP_ID.
        chip_id.iter().all(|&b| b == 0)
            || (chip_id[..hw_id.len()] == hw_id[..] && chip_id[hw_id.len()..].iter().all(|&b| b == 0))
    }
}
