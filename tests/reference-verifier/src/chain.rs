//! AMD's certificate chain: loading it, and checking that it leads from
//! one of AMD's root keys to the key that signs reports.
//!
//! ```text
//! ARK (self-signed, RSA-PSS SHA-384) -> ASK  -> VCEK (ECDSA P-384)
//!                                    -> ASVK -> VLEK
//! ```
//!
//! Each link's RSA-PSS check is the `sev` crate's. What the `sev` crate
//! leaves to its caller is done here: pinning the ARK (a self-signed
//! certificate proves nothing by itself) and naming the link that failed.

use crate::error::{AttestationError, ChainCert, Result};
use crate::extensions::VekExtensions;
use crate::report::{Product, SigningKey};
use p384::ecdsa::VerifyingKey;
use sev::certs::snp::{builtin, Certificate, Verifiable};
use std::path::Path;

/// An SEV-SNP certificate chain: ARK, ASK (or ASVK) and VCEK (or VLEK).
///
/// Loading only parses; [`crate::verify_snp`] verifies.
#[derive(Debug, Clone)]
pub struct SnpChain {
    // Boxed: a parsed certificate is over 500 bytes, and a chain travels
    // inside `Root` next to a 100-byte emulated key.
    ark: Box<Certificate>,
    ask: Box<Certificate>,
    vek: Box<Certificate>,
}

/// PEM has a text header; anything else is taken for DER.
fn parse_one(cert: ChainCert, bytes: &[u8]) -> Result<Box<Certificate>> {
    let parsed = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        Certificate::from_pem(bytes)
    } else {
        Certificate::from_der(bytes)
    };
    parsed.map(Box::new).map_err(|e| AttestationError::CertificateFormat {
        cert,
        reason: e.to_string(),
    })
}

fn read_one(cert: ChainCert, path: &Path) -> Result<Box<Certificate>> {
    let bytes = std::fs::read(path).map_err(|source| AttestationError::Read {
        cert,
        path: path.to_owned(),
        source,
    })?;
    parse_one(cert, &bytes)
}

impl SnpChain {
    /// A chain from the three certificates, each PEM or DER (told apart
    /// by PEM's `-----BEGIN` line).
    pub fn from_bytes(ark: &[u8], ask: &[u8], vek: &[u8]) -> Result<Self> {
        Ok(SnpChain {
            ark: parse_one(ChainCert::Ark, ark)?,
            ask: parse_one(ChainCert::Ask, ask)?,
            vek: parse_one(ChainCert::Vek, vek)?,
        })
    }

    /// A chain from three files, each PEM or DER.
    pub fn load(ark: impl AsRef<Path>, ask: impl AsRef<Path>, vek: impl AsRef<Path>) -> Result<Self> {
        Ok(SnpChain {
            ark: read_one(ChainCert::Ark, ark.as_ref())?,
            ask: read_one(ChainCert::Ask, ask.as_ref())?,
            vek: read_one(ChainCert::Vek, vek.as_ref())?,
        })
    }
}

/// What a verified chain vouches for.
pub(crate) struct Endorsement {
    /// The report-signing key the chain certifies.
    pub key: VerifyingKey,
    /// VCEK or VLEK.
    pub kind: SigningKey,
    /// The product line whose ARK anchors the chain.
    pub product: Product,
    /// AMD's extensions in the VCEK/VLEK certificate.
    pub extensions: VekExtensions,
}

/// `signer`'s key signs `subject`'s certificate.
fn check_link(chain: &SnpChain, signer: ChainCert, subject: ChainCert) -> Result<()> {
    let cert = |which| -> &Certificate {
        match which {
            ChainCert::Ark => &chain.ark,
            ChainCert::Ask => &chain.ask,
            ChainCert::Vek => &chain.vek,
        }
    };
    (cert(signer), cert(subject))
        .verify()
        .map_err(|e| AttestationError::CertificateSignature {
            subject,
            signer,
            reason: e.to_string(),
        })
}

/// The product whose ARK `ark` is, among the ARKs the `sev` crate ships
/// (AMD's published roots; the ASVK of VLEK chains is signed by the same
/// ARK as the ASK).
fn pinned_product(ark: &Certificate) -> Result<Product> {
    let known = [
        (Product::Milan, builtin::milan::ark()),
        (Product::Genoa, builtin::genoa::ark()),
        (Product::Turin, builtin::turin::ark()),
    ];
    known
        .into_iter()
        .find(|(_, builtin)| builtin.as_ref().is_ok_and(|b| b == ark))
        .map(|(product, _)| product)
        .ok_or(AttestationError::UntrustedArk)
}

/// Verifies the chain from the ARK down and returns what it certifies.
pub(crate) fn verify_chain(chain: &SnpChain) -> Result<Endorsement> {
    // Top down, so the first failure names the highest broken link.
    check_link(chain, ChainCert::Ark, ChainCert::Ark)?;
    let product = pinned_product(&chain.ark)?;
    check_link(chain, ChainCert::Ark, ChainCert::Ask)?;
    check_link(chain, ChainCert::Ask, ChainCert::Vek)?;

    let extensions = VekExtensions::read(&chain.vek)?;
    let key =
        VerifyingKey::from_sec1_bytes(chain.vek.public_key_sec1()).map_err(|_| AttestationError::EndorsementKey)?;
    Ok(Endorsement {
        key,
        kind: extensions.kind()?,
        product,
        extensions,
    })
}
