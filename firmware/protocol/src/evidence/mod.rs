//! Attestation evidence: what a peer presents to prove what it runs.
//!
//! Evidence is a [`Platform`] code, an SEV-SNP-layout
//! [`AttestationReport`] (module [`report`]) and, for SEV-SNP, the
//! certificate table that endorses the report's signing key (the GHCB
//! specification's table, as the guest's extended report request returns
//! it: VCEK or VLEK, ASK or ASVK, ARK). Who vouches for the report depends
//! on the platform, so checking its signature is behind the
//! [`EvidenceVerifier`] trait: [`EmulatedRootVerifier`] (module
//! [`emulated`]) checks covm's emulated platform against root keys the
//! guest owner's policy trusts; `covm-snp-verify` checks the SEV-SNP chain
//! (VCEK → ASK → ARK) from AMD's pinned roots. Both check the report's
//! signature with [`verify_report_signature`]. Everything *else* about the
//! report (measurement, TCB, report_data, host_data) is judged by
//! [`crate::policy::check_peer`], the same way for every platform.

pub mod emulated;
pub mod report;
mod signature;

pub use emulated::{EmulatedRoot, EmulatedRootVerifier};
pub use report::{AttestationReport, ReportSignature, TcbVersion, REPORT_LEN, SIGNED_LEN};
pub use signature::verify_report_signature;

use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::wire::{check_room, Reader, Writer};
use core::fmt;

/// Where a peer runs: decides who vouches for its evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u16)]
pub enum Platform {
    /// covm's emulated confidential VM: the host emulates the trust
    /// boundary and signs reports with an emulated root key.
    EmulatedCvm = 1,
    /// AMD SEV-SNP: the PSP signs reports with the chip's VCEK.
    SevSnp = 2,
    /// Intel TDX (no verifier yet).
    Tdx = 3,
}

impl Platform {
    /// Every platform, in code order.
    pub const ALL: [Platform; 3] = [Platform::EmulatedCvm, Platform::SevSnp, Platform::Tdx];

    /// The platform's code on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The platform with this code.
    pub fn from_code(code: u16) -> Result<Platform> {
        Platform::ALL
            .into_iter()
            .find(|p| p.code() == code)
            .ok_or(Error::UnknownPlatform(code))
    }

    /// The platform's bit in a policy's allowed-platform mask (`1 << code`).
    pub fn bit(self) -> u32 {
        1 << self.code()
    }

    /// The platform's name, as covm's command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Platform::EmulatedCvm => "emulated_cvm",
            Platform::SevSnp => "sev_snp",
            Platform::Tdx => "tdx",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Most bytes of a certificate table evidence may carry. AMD's chain is
/// about 4.8 KB (VCEK 1.4, ASK 1.7, ARK 1.6, table entries); the bound
/// leaves room for longer names and a VLEK's extensions.
pub const MAX_CERTS_LEN: usize = 8192;

/// Bytes of encoded evidence without certificates: platform u16,
/// certificate table length u16, report length u32, then the report.
pub const EVIDENCE_LEN: usize = 8 + REPORT_LEN;

/// Most bytes of encoded evidence: [`EVIDENCE_LEN`] and a certificate
/// table of [`MAX_CERTS_LEN`].
pub const MAX_EVIDENCE_LEN: usize = EVIDENCE_LEN + MAX_CERTS_LEN;

const _: () = assert!(MAX_CERTS_LEN <= u16::MAX as usize);

/// A platform code, the raw report it vouches for, and the certificate
/// table that endorses the report's key (empty unless the platform has one).
#[derive(Clone)]
pub struct Evidence {
    platform: Platform,
    report: [u8; REPORT_LEN],
    certs: [u8; MAX_CERTS_LEN],
    certs_len: u16,
}

impl PartialEq for Evidence {
    fn eq(&self, other: &Self) -> bool {
        self.platform == other.platform && self.report == other.report && self.certs() == other.certs()
    }
}

impl Eq for Evidence {}

impl fmt::Debug for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evidence")
            .field("platform", &self.platform)
            .field("certs_len", &self.certs_len)
            .finish_non_exhaustive()
    }
}

impl Evidence {
    /// Evidence for `report`, encoded as it stands (signed or not), with
    /// no certificates.
    pub fn new(platform: Platform, report: &AttestationReport) -> Self {
        Evidence {
            platform,
            report: report.to_bytes(),
            certs: [0; MAX_CERTS_LEN],
            certs_len: 0,
        }
    }

    /// Evidence from the raw bytes a platform returned, with no certificates.
    pub fn from_raw(platform: Platform, report: &[u8]) -> Result<Self> {
        Evidence::with_certs(platform, report, &[])
    }

    /// Evidence from the raw report and certificate table a platform
    /// returned (the table as the GHCB specification lays it out; its
    /// contents are the verifier's to judge).
    pub fn with_certs(platform: Platform, report: &[u8], certs: &[u8]) -> Result<Self> {
        let report: [u8; REPORT_LEN] = report.try_into().map_err(|_| Error::Length {
            what: "attestation report",
            expected: REPORT_LEN,
            got: report.len(),
        })?;
        AttestationReport::from_bytes(&report)?;
        if certs.len() > MAX_CERTS_LEN {
            return Err(Error::Length {
                what: "evidence certificate table (at most)",
                expected: MAX_CERTS_LEN,
                got: certs.len(),
            });
        }
        let mut evidence = Evidence {
            platform,
            report,
            certs: [0; MAX_CERTS_LEN],
            certs_len: certs.len() as u16,
        };
        evidence.certs[..certs.len()].copy_from_slice(certs);
        Ok(evidence)
    }

    /// The platform that vouches for the report.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The report as received: what signatures are checked over.
    pub fn raw_report(&self) -> &[u8; REPORT_LEN] {
        &self.report
    }

    /// The certificate table as received (empty when there is none).
    pub fn certs(&self) -> &[u8] {
        &self.certs[..usize::from(self.certs_len)]
    }

    /// The parsed report.
    pub fn report(&self) -> AttestationReport {
        // Checked by every constructor.
        AttestationReport::from_bytes(&self.report).expect("evidence holds a well-formed report")
    }

    /// Bytes [`Evidence::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        EVIDENCE_LEN + usize::from(self.certs_len)
    }

    /// Writes the evidence encoding; returns [`Evidence::encoded_len`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        check_room(out, self.encoded_len())?;
        let mut w = Writer::new(out);
        w.u16(self.platform.code())?;
        w.u16(self.certs_len)?;
        w.u32(REPORT_LEN as u32)?;
        w.bytes(&self.report)?;
        w.bytes(self.certs())?;
        Ok(w.len())
    }

    /// Reads an evidence encoding (exactly [`Evidence::encoded_len`] bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "evidence");
        let platform = Platform::from_code(r.u16()?)?;
        let certs_len = usize::from(r.u16()?);
        let len = r.u32()? as usize;
        if len != REPORT_LEN {
            return Err(Error::Length {
                what: "evidence report",
                expected: REPORT_LEN,
                got: len,
            });
        }
        let report = r.bytes(REPORT_LEN)?;
        let certs = r.bytes(certs_len)?;
        r.finish()?;
        Evidence::with_certs(platform, report, certs)
    }
}

/// Decides whether evidence is genuine: that the platform it names really
/// produced the report. Policy decisions (which measurements, which TCB)
/// are not the verifier's: [`crate::policy::check_peer`] makes them after
/// the verifier said yes.
pub trait EvidenceVerifier {
    /// `Ok` if `evidence`'s signature (and, for real hardware, its
    /// certificate chain) is valid. `policy` is the verifying side's own
    /// policy: it names the keys an emulated root may use.
    fn verify(&self, evidence: &Evidence, policy: &Policy) -> Result<()>;
}
