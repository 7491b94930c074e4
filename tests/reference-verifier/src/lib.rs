//! The reference verifier of attestation reports: AMD SEV-SNP reports
//! against their AMD certificate chains (the `sev` crate), and covm's
//! emulated-platform reports against an emulated root key, through one
//! entry point.
//!
//! covm never verifies evidence itself: the migration agents do, inside
//! their guests, with `covm-snp-verify` (no_std). This crate is the
//! independent implementation their decisions are tested against
//! (`tests/agent_verifier.rs`), and a library for a guest owner's tooling
//! off the host.
//!
//! # API
//!
//! ```no_run
//! use covm_reference_verifier::{verify, Root, SnpChain};
//!
//! # fn main() -> Result<(), covm_reference_verifier::AttestationError> {
//! let report = std::fs::read("report.bin").unwrap();
//! // Each certificate PEM or DER: ARK, ASK (or ASVK), VCEK (or VLEK).
//! let chain = SnpChain::load("ark.pem", "ask.pem", "vcek.der")?;
//! let verified = verify(&report, &Root::Amd(chain))?;
//! println!("{} signed measurement {:02x?}", verified.signing_key(), verified.measurement());
//! # Ok(()) }
//! ```
//!
//! - [`verify`]`(report, &`[`Root`]`)` → [`VerifiedReport`] or
//!   [`AttestationError`]. [`Root::Amd`] holds an [`SnpChain`];
//!   [`Root::Emulated`] an [`EmulatedRootKey`] (SEC1 compressed, as
//!   `covm_agent_protocol::EmulatedRoot::public_key` returns it and
//!   policies list it).
//! - [`verify_snp`] and [`verify_emulated`] are the two arms, callable
//!   directly.
//! - [`VerifiedReport`] gives version, guest SVN, guest policy,
//!   measurement (`[u8; 48]`), host_data (`[u8; 32]`), report_data
//!   (`[u8; 64]`), reported TCB decoded for the processor generation
//!   ([`Tcb`]), chip ID, the [`SigningKey`] (VCEK, VLEK or emulated root),
//!   the [`Product`] whose ARK anchors the chain, and every field through
//!   [`VerifiedReport::report`].
//!
//! # What "verified" means
//!
//! For [`Root::Amd`] (details on [`verify_snp`]):
//! - the chain: the ARK is self-signed **and is one of AMD's ARKs**
//!   (Milan, Genoa, Turin, as shipped in the `sev` crate; a self-signed
//!   root anyone could make proves nothing), the ARK signs the ASK/ASVK,
//!   which signs the VCEK/VLEK, each RSA-PSS with SHA-384 (the `sev`
//!   crate's check, pure-Rust backend);
//! - KEY_INFO.SIGNING_KEY names the kind of key the chain ends in (a VCEK
//!   certificate carries AMD's hwID extension, a VLEK certificate a cspId);
//! - the report's ECDSA P-384/SHA-384 signature by that key over bytes
//!   0..0x2A0, exactly as received;
//! - sanity checks of the signed fields against the certificate: the
//!   CPUID family/model (report version 3 and later) is the ARK's product
//!   line; REPORTED_TCB equals the certificate's blSPL, teeSPL, snpSPL,
//!   ucodeSPL (and fmcSPL on Turin) extensions; for a VCEK, CHIP_ID equals
//!   the hwID extension (skipped when the host masked CHIP_ID to zero).
//!
//! For [`Root::Emulated`]: the same signature check, by the same code,
//! under the emulated root's key. Nothing else: no hardware vouches for an
//! emulated report (see `docs/platforms.md`).
//!
//! **Not checked** (the caller's, or later work): certificate validity
//! periods and revocation (AMD's CRLs), issuer/subject name chaining
//! beyond the signatures, freshness (compare [`VerifiedReport::report_data`]
//! with your nonce), and policy (measurement, minimum TCB, guest policy
//! bits: `covm_agent_protocol::check_peer` and the guest owner's policy
//! decide those). VLEK chains are implemented but not tested against a
//! real VLEK sample (none is in `resources/attestation/snp/`).
//!
//! # Fixtures
//!
//! `resources/attestation/snp/<sample>/` holds real reports with their
//! real AMD chains, each with a `SOURCE.md`; the tests verify them and
//! check that one flipped byte anywhere that matters is refused.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod chain;
mod emulated;
mod error;
mod extensions;
mod report;
mod signature;
mod snp;
mod verifier;

pub use chain::SnpChain;
pub use emulated::{verify_emulated, EmulatedRootKey};
pub use error::{AttestationError, ChainCert, Result};
pub use report::{Product, SigningKey, Tcb, VerifiedReport};
pub use snp::verify_snp;
pub use verifier::SnpVerifier;

/// Who vouches for a report.
#[derive(Debug, Clone)]
pub enum Root {
    /// AMD hardware: the report's signing key is certified by this chain.
    Amd(SnpChain),
    /// covm's emulated platform: the report is signed by this root.
    Emulated(EmulatedRootKey),
}

/// Verifies `report` (the 1184-byte ATTESTATION_REPORT as received)
/// under `root`.
pub fn verify(report: &[u8], root: &Root) -> Result<VerifiedReport> {
    match root {
        Root::Amd(chain) => verify_snp(report, chain),
        Root::Emulated(key) => verify_emulated(report, key),
    }
}
