//! The crate's one error type: every variant says which certificate,
//! which signature or which report field failed, so an operator can tell
//! a stale VCEK from a forged report from a truncated file.

use crate::report::{Product, SigningKey};
use std::fmt;
use std::path::PathBuf;

/// A certificate's place in an AMD chain. The intermediate and the leaf
/// are named for both chain kinds: which one a chain holds (VCEK under
/// ASK, or VLEK under ASVK) is only known once the leaf's extensions are
/// read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainCert {
    /// The AMD Root Key: self-signed, one per product line.
    Ark,
    /// The AMD SEV Signing Key (VCEK chains) or AMD SEV VLEK Signing Key
    /// (VLEK chains), signed by the ARK.
    Ask,
    /// The Versioned Chip (or Loaded) Endorsement Key that signs reports.
    Vek,
}

impl fmt::Display for ChainCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainCert::Ark => "ARK",
            ChainCert::Ask => "ASK/ASVK",
            ChainCert::Vek => "VCEK/VLEK",
        })
    }
}

/// Why a report or a chain was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// A certificate file could not be read.
    #[error("{cert} certificate {path}: {source}")]
    Read {
        /// Which certificate.
        cert: ChainCert,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate is not a PEM or DER X.509 certificate.
    #[error("{cert} certificate: not a valid X.509 certificate: {reason}")]
    CertificateFormat {
        /// Which certificate.
        cert: ChainCert,
        /// The parser's words.
        reason: String,
    },
    /// A certificate's signature by the one above it (or by itself, for
    /// the ARK) does not verify.
    #[error("{subject} certificate: its signature by the {signer} does not verify: {reason}")]
    CertificateSignature {
        /// The certificate whose signature failed.
        subject: ChainCert,
        /// The certificate whose key was expected to have signed it.
        signer: ChainCert,
        /// The verifier's words.
        reason: String,
    },
    /// The ARK is self-signed but is not one of AMD's: anyone can make a
    /// self-signed root, so a chain proves nothing unless its root is pinned.
    #[error("ARK certificate: not one of AMD's ARKs (Milan, Genoa, Turin) that this build trusts")]
    UntrustedArk,
    /// One of AMD's extensions in the VCEK/VLEK certificate is missing or
    /// malformed.
    #[error("VCEK/VLEK certificate: extension {name} ({oid}): {reason}")]
    Extension {
        /// The extension's name in AMD's VCEK specification.
        name: &'static str,
        /// Its object identifier.
        oid: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The VCEK/VLEK certificate carries neither a hwID (VCEK) nor a
    /// CSP ID (VLEK) extension, or both.
    #[error("VCEK/VLEK certificate: cannot tell VCEK from VLEK (hwID present: {hw_id}, cspId present: {csp_id})")]
    LeafKind {
        /// Whether the hwID extension is present.
        hw_id: bool,
        /// Whether the cspId extension is present.
        csp_id: bool,
    },
    /// The VCEK/VLEK certificate's key is not a P-384 point.
    #[error("VCEK/VLEK certificate: subject public key is not an ECDSA P-384 key")]
    EndorsementKey,
    /// The report is not 1184 bytes.
    #[error("attestation report: {got} bytes, expected {expected}")]
    ReportLength {
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// The report's layout is refused by the protocol's parser.
    #[error("attestation report: {0}")]
    ReportFormat(#[source] covm_agent_protocol::Error),
    /// SIGNATURE_ALGO is not ECDSA P-384 with SHA-384.
    #[error("attestation report: SIGNATURE_ALGO is {0}, expected 1 (ECDSA P-384 with SHA-384)")]
    SignatureAlgorithm(u32),
    /// KEY_INFO.SIGNING_KEY names neither the VCEK nor the VLEK (7 means
    /// the report is unsigned).
    #[error("attestation report: KEY_INFO.SIGNING_KEY is {0}, expected 0 (VCEK) or 1 (VLEK)")]
    UnknownSigningKey(u32),
    /// The report says one key signed it, the chain ends in the other.
    #[error("attestation report: KEY_INFO.SIGNING_KEY names the {report}, but the chain ends in a {certificate}")]
    SigningKeyMismatch {
        /// The key the report names.
        report: SigningKey,
        /// The key the chain certifies.
        certificate: SigningKey,
    },
    /// A component of the report's signature has bytes set above the
    /// 48-byte P-384 scalar, which no signature is encoded with.
    #[error("attestation report: SIGNATURE {component} has non-zero bytes above its 48-byte P-384 scalar")]
    SignatureEncoding {
        /// "R" or "S".
        component: &'static str,
    },
    /// The report's signature is not the key's over bytes 0..0x2A0.
    #[error("attestation report: SIGNATURE is not the {key}'s ECDSA P-384 signature over bytes 0..0x2A0")]
    ReportSignature {
        /// The key it was checked against.
        key: SigningKey,
    },
    /// The report's CPUID fields name another product line than the ARK.
    #[error("attestation report: CPUID family {family:#x} model {model:#x} is not a {chain} processor, but the chain's ARK is {chain}'s")]
    ProductMismatch {
        /// The product of the chain's ARK.
        chain: Product,
        /// CPUID_FAM_ID.
        family: u8,
        /// CPUID_MOD_ID.
        model: u8,
    },
    /// A REPORTED_TCB component differs from the one the VCEK/VLEK was
    /// derived for: the key was issued for another firmware TCB.
    #[error("attestation report: REPORTED_TCB {component} is {report}, but the {key} certificate was issued for {certificate}")]
    TcbMismatch {
        /// The component's name.
        component: &'static str,
        /// Its value in the report.
        report: u8,
        /// Its value in the certificate.
        certificate: u8,
        /// The certificate's key.
        key: SigningKey,
    },
    /// CHIP_ID is not the VCEK certificate's hwID: the VCEK belongs to
    /// another chip.
    #[error("attestation report: CHIP_ID does not match the VCEK certificate's hwID")]
    ChipIdMismatch,
    /// The emulated root's public key is not a compressed P-384 point.
    #[error("emulated root key: not a SEC1-compressed P-384 public key")]
    EmulatedRootKey,
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, AttestationError>;
