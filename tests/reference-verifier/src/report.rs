//! What a verified report tells: [`VerifiedReport`] and the small types
//! it is made of. Field parsing is the protocol crate's
//! ([`covm_agent_protocol::AttestationReport`]), the one parser covm's
//! policy checks already use; only the TCB, whose byte layout depends on
//! the processor generation, is decoded here, through the `sev` crate.

use crate::error::{AttestationError, Result};
use covm_agent_protocol::evidence::report::REPORT_LEN;
use covm_agent_protocol::AttestationReport;
use sev::firmware::host::TcbVersion as SevTcb;
use sev::parser::ByteParser;
use sev::Generation;
use std::fmt;

/// An AMD EPYC product line with SEV-SNP, as named by its ARK: the type
/// the agent's verifier uses (`covm-snp-verify`), so the two verifiers'
/// answers compare directly. Its CPUID and TCB readings here are the
/// `sev` crate's, not that crate's.
pub use covm_snp_verify::Product;

/// The `sev` crate's name for `product`.
pub(crate) fn generation(product: Product) -> Generation {
    match product {
        Product::Milan => Generation::Milan,
        Product::Genoa => Generation::Genoa,
        Product::Turin => Generation::Turin,
    }
}

/// The product line a report's CPUID_FAM_ID and CPUID_MOD_ID name (report
/// version 3 and later), if known, by the `sev` crate's table.
pub(crate) fn product_from_cpuid(family: u8, model: u8) -> Option<Product> {
    match Generation::identify_cpu(family, model).ok()? {
        Generation::Milan => Some(Product::Milan),
        Generation::Genoa => Some(Product::Genoa),
        Generation::Turin => Some(Product::Turin),
        _ => None,
    }
}

/// Which key signed a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// The chip's Versioned Chip Endorsement Key (KEY_INFO.SIGNING_KEY 0).
    Vcek,
    /// A cloud provider's Versioned Loaded Endorsement Key (SIGNING_KEY 1).
    Vlek,
    /// covm's emulated root: no hardware vouches for the report.
    EmulatedRoot,
}

impl SigningKey {
    /// The key KEY_INFO.SIGNING_KEY (bits 4:2) names.
    pub(crate) fn from_key_info(key_info: u32) -> Result<SigningKey> {
        match (key_info >> 2) & 0b111 {
            0 => Ok(SigningKey::Vcek),
            1 => Ok(SigningKey::Vlek),
            other => Err(AttestationError::UnknownSigningKey(other)),
        }
    }
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SigningKey::Vcek => "VCEK",
            SigningKey::Vlek => "VLEK",
            SigningKey::EmulatedRoot => "emulated root",
        })
    }
}

/// A TCB_VERSION decoded for its processor generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcb {
    /// SVN of the FMC firmware (Turin and later only).
    pub fmc: Option<u8>,
    /// SVN of the PSP boot loader.
    pub boot_loader: u8,
    /// SVN of the PSP operating system.
    pub tee: u8,
    /// SVN of the SNP firmware.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
    /// The 8 bytes as stored in the report (little-endian).
    pub raw: u64,
}

impl Tcb {
    /// Decodes `stored` with `product`'s layout; `None` (the emulated
    /// platform) means the Milan/Genoa layout covm's protocol writes.
    pub(crate) fn decode(stored: covm_agent_protocol::TcbVersion, product: Option<Product>) -> Tcb {
        let generation = product.map_or(Generation::Genoa, generation);
        // Reading 8 bytes with a Milan, Genoa or Turin layout cannot fail.
        let tcb = SevTcb::from_bytes_with(&stored.0.to_le_bytes(), generation).expect("a TCB_VERSION is any 8 bytes");
        Tcb {
            fmc: tcb.fmc,
            boot_loader: tcb.bootloader,
            tee: tcb.tee,
            snp: tcb.snp,
            microcode: tcb.microcode,
            raw: stored.0,
        }
    }
}

impl fmt::Display for Tcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc {fmc} ")?;
        }
        write!(
            f,
            "boot_loader {} tee {} snp {} microcode {}",
            self.boot_loader, self.tee, self.snp, self.microcode
        )
    }
}

/// A report whose signature (and, for SEV-SNP, certificate chain) has
/// been verified. Only this crate makes one, so holding one means
/// [`crate::verify`] said yes; what the fields *mean* for trust
/// (measurement, TCB, policy) is still the caller's to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReport {
    pub(crate) report: AttestationReport,
    pub(crate) signing_key: SigningKey,
    pub(crate) product: Option<Product>,
    pub(crate) reported_tcb: Tcb,
}

impl VerifiedReport {
    /// Report format version (2, 3 or 5 on hardware).
    pub fn version(&self) -> u32 {
        self.report.version
    }

    /// The guest's security version number.
    pub fn guest_svn(&self) -> u32 {
        self.report.guest_svn
    }

    /// The guest policy the VM was launched with (POLICY).
    pub fn policy(&self) -> u64 {
        self.report.policy
    }

    /// The launch measurement.
    pub fn measurement(&self) -> &[u8; 48] {
        &self.report.measurement
    }

    /// HOST_DATA: what the host bound at launch.
    pub fn host_data(&self) -> &[u8; 32] {
        &self.report.host_data
    }

    /// REPORT_DATA: what the guest asked to be signed (a nonce, a key hash).
    pub fn report_data(&self) -> &[u8; 64] {
        &self.report.report_data
    }

    /// REPORTED_TCB, decoded for the processor generation: the TCB the
    /// signing key was derived for.
    pub fn reported_tcb(&self) -> Tcb {
        self.reported_tcb
    }

    /// CHIP_ID (zero when the host masks it).
    pub fn chip_id(&self) -> &[u8; 64] {
        &self.report.chip_id
    }

    /// Which key signed the report.
    pub fn signing_key(&self) -> SigningKey {
        self.signing_key
    }

    /// The product line whose ARK anchors the chain (`None` for the
    /// emulated platform).
    pub fn product(&self) -> Option<Product> {
        self.product
    }

    /// Every field of the report.
    pub fn report(&self) -> &AttestationReport {
        &self.report
    }
}

/// The report as a fixed-size array and its fields.
pub(crate) fn parse(report: &[u8]) -> Result<(&[u8; REPORT_LEN], AttestationReport)> {
    let raw: &[u8; REPORT_LEN] = report.try_into().map_err(|_| AttestationError::ReportLength {
        expected: REPORT_LEN,
        got: report.len(),
    })?;
    let fields = AttestationReport::from_bytes(raw).map_err(AttestationError::ReportFormat)?;
    Ok((raw, fields))
}
