//! Attestation evidence: what a peer presents to prove what it runs.
//!
//! Evidence is a [`Platform`] code plus an SEV-SNP-layout
//! [`AttestationReport`] (module [`report`]). Who vouches for the report
//! depends on the platform, so checking its signature is behind the
//! [`EvidenceVerifier`] trait: [`EmulatedRootVerifier`] (module
//! [`emulated`]) checks covm's emulated platform against root keys the
//! guest owner's policy trusts; the SEV-SNP chain (VCEK → ASK → ARK) is a
//! later verifier behind the same trait. Everything *else* about the
//! report (measurement, TCB, report_data, host_data) is judged by
//! [`crate::policy::check_peer`], the same way for every platform.

pub mod emulated;
pub mod report;
mod signature;

pub use emulated::{EmulatedRoot, EmulatedRootVerifier};
pub use report::{AttestationReport, ReportSignature, TcbVersion, REPORT_LEN, SIGNED_LEN};

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

/// Bytes of encoded evidence: platform u16, reserved u16, report length
/// u32, then the report.
pub const EVIDENCE_LEN: usize = 8 + REPORT_LEN;

/// A platform code and the raw report it vouches for.
#[derive(Clone, PartialEq, Eq)]
pub struct Evidence {
    platform: Platform,
    report: [u8; REPORT_LEN],
}

impl fmt::Debug for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evidence")
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

impl Evidence {
    /// Evidence for `report`, encoded as it stands (signed or not).
    pub fn new(platform: Platform, report: &AttestationReport) -> Self {
        Evidence {
            platform,
            report: report.to_bytes(),
        }
    }

    /// Evidence from the raw bytes a platform returned.
    pub fn from_raw(platform: Platform, report: &[u8]) -> Result<Self> {
        let report: [u8; REPORT_LEN] = report.try_into().map_err(|_| Error::Length {
            what: "attestation report",
            expected: REPORT_LEN,
            got: report.len(),
        })?;
        AttestationReport::from_bytes(&report)?;
        Ok(Evidence { platform, report })
    }

    /// The platform that vouches for the report.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The report as received: what signatures are checked over.
    pub fn raw_report(&self) -> &[u8; REPORT_LEN] {
        &self.report
    }

    /// The parsed report.
    pub fn report(&self) -> AttestationReport {
        // Checked by every constructor.
        AttestationReport::from_bytes(&self.report).expect("evidence holds a well-formed report")
    }

    /// Writes the evidence encoding; returns [`EVIDENCE_LEN`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        check_room(out, EVIDENCE_LEN)?;
        let mut w = Writer::new(out);
        w.u16(self.platform.code())?;
        w.u16(0)?;
        w.u32(REPORT_LEN as u32)?;
        w.bytes(&self.report)?;
        Ok(w.len())
    }

    /// Reads an evidence encoding (exactly [`EVIDENCE_LEN`] bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "evidence");
        let platform = Platform::from_code(r.u16()?)?;
        r.reserved(2, "evidence reserved")?;
        let len = r.u32()? as usize;
        if len != REPORT_LEN {
            return Err(Error::Length {
                what: "evidence report",
                expected: REPORT_LEN,
                got: len,
            });
        }
        let report = r.bytes(REPORT_LEN)?;
        r.finish()?;
        Evidence::from_raw(platform, report)
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
