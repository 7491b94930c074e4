//! AMD's certificate chain, from a pinned ARK down to the key that signs
//! reports.
//!
//! ```text
//! ARK (self-signed, RSA-PSS SHA-384) -> ASK  -> VCEK (ECDSA P-384)
//!                                    -> ASVK -> VLEK
//! ```
//!
//! Each link is RSASSA-PSS with SHA-384 over the subject's DER-encoded
//! TBSCertificate, by the issuer's RSA key (AMD's "VCEK Certificate and
//! KDS Interface Specification", 57230): the `rsa` crate's verifier, on
//! certificates the `x509-cert` crate decodes (strict DER, so re-encoding
//! a decoded TBS gives back the bytes that were signed).

use crate::product::Product;
use covm_agent_protocol::Error;
use p384::ecdsa::VerifyingKey;
use rsa::pss::{Signature, VerifyingKey as PssKey};
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::Sha384;
use x509_cert::der::referenced::OwnedToRef;
use x509_cert::der::{Decode, Encode};
use x509_cert::spki::ObjectIdentifier;
use x509_cert::Certificate;

/// id-RSASSA-PSS (RFC 4055).
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// Which certificate of the chain, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The ARK.
    Ark,
    /// The ASK or ASVK.
    Ask,
    /// The VCEK or VLEK.
    Vek,
}

fn bad(what: &'static str) -> Error {
    Error::Endorsement { what }
}

/// Decodes one DER certificate of the chain.
pub fn parse(which: Link, der: &[u8]) -> Result<Certificate, Error> {
    Certificate::from_der(der).map_err(|_| {
        bad(match which {
            Link::Ark => "the ARK is not a DER X.509 certificate",
            Link::Ask => "the ASK is not a DER X.509 certificate",
            Link::Vek => "the VCEK/VLEK is not a DER X.509 certificate",
        })
    })
}

/// The product whose pinned ARK `der` is, once the ARK signs itself.
pub fn pinned_ark(ark: &Certificate, der: &[u8]) -> Result<Product, Error> {
    const NOT_SELF_SIGNED: &str = "the ARK's self-signature does not verify";
    signs(ark, ark, NOT_SELF_SIGNED).map_err(|_| bad(NOT_SELF_SIGNED))?;
    Product::pinned(der).ok_or(bad("the ARK is not one of AMD's (Milan, Genoa, Turin)"))
}

/// Whether `issuer`'s RSA key signs `subject` with RSASSA-PSS SHA-384;
/// `refusal` names a signature that does not verify.
pub fn signs(issuer: &Certificate, subject: &Certificate, refusal: &'static str) -> Result<(), Error> {
    if subject.signature_algorithm.oid != RSASSA_PSS {
        return Err(bad("a chain certificate is not signed with RSASSA-PSS"));
    }
    let spki = issuer.tbs_certificate.subject_public_key_info.owned_to_ref();
    let key = RsaPublicKey::try_from(spki).map_err(|_| bad("a chain certificate's key is not an RSA key"))?;
    let tbs = subject
        .tbs_certificate
        .to_der()
        .map_err(|_| bad("a chain certificate does not re-encode"))?;
    let signature = Signature::try_from(subject.signature.raw_bytes())
        .map_err(|_| bad("a chain certificate's signature is malformed"))?;
    PssKey::<Sha384>::new(key)
        .verify(&tbs, &signature)
        .map_err(|_| bad(refusal))
}

/// `issuer` signs `subject`, or the error names the link.
pub fn check_link(issuer: &Certificate, subject: &Certificate, link: Link) -> Result<(), Error> {
    let refusal = match link {
        Link::Ask => "the ASK's signature by the ARK does not verify",
        Link::Ark | Link::Vek => "the VCEK/VLEK's signature by the ASK does not verify",
    };
    signs(issuer, subject, refusal)
}

/// The VCEK/VLEK's P-384 public key.
pub fn report_key(vek: &Certificate) -> Result<VerifyingKey, Error> {
    let point = vek
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    VerifyingKey::from_sec1_bytes(point).map_err(|_| bad("the VCEK/VLEK's key is not a P-384 point"))
}
