//! SEV-SNP evidence verification for the in-guest migration agent.
//!
//! The agent decides, inside the guest's trust boundary, whether a peer
//! may receive the guest's secrets ([`covm_agent_protocol::check_peer`]).
//! On SEV-SNP that starts with this crate's answer to "did an AMD chip
//! sign this report?":
//!
//! 1. the evidence's certificate table ([`table`], the GHCB layout the
//!    guest's extended report request returns) names a VCEK or VLEK, an
//!    ASK or ASVK, and an ARK;
//! 2. the ARK is byte for byte one of AMD's three roots pinned in this
//!    crate ([`product`]: Milan, Genoa, Turin), and self-signed;
//! 3. each link verifies: ARK → ASK/ASVK → VCEK/VLEK, RSA-PSS with
//!    SHA-384 over the signed certificate's TBS ([`chain`]);
//! 4. KEY_INFO.SIGNING_KEY names the kind of key the chain ends in (a VCEK
//!    certificate carries the hwID extension, a VLEK one a cspId);
//! 5. the report's ECDSA P-384 signature by that key, with the protocol's
//!    [`covm_agent_protocol::evidence::verify_report_signature`], the
//!    function that checks emulated reports under their emulated root;
//! 6. the report agrees with the certificate ([`extensions`]): its CPUID
//!    product (report version 3 and later) is the ARK's, its REPORTED_TCB
//!    is the TCB the key was issued for, and a VCEK's CHIP_ID is the
//!    certificate's hwID (unless the host masked it to zeros).
//!
//! The host's `covm-reference-verifier` does the same with the `sev` crate (which
//! needs `std`, so cannot run here) for the chain, the report's signature,
//! the CPUID product and the TCB layouts, and uses this crate's
//! [`extensions`] reader for step 6 (the `sev` crate has none); the two
//! are checked against each other on real AMD reports and chains, and on
//! every one-byte corruption of them the tests try.
//!
//! Not checked, as in `covm-reference-verifier`: certificate validity dates (the
//! guest has no trusted clock), AMD's revocation lists, and name chaining
//! beyond the signatures.

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod chain;
pub mod extensions;
pub mod product;
pub mod table;
mod verify;

pub use product::{Product, SnpTcb};
pub use table::{CertKind, CertTable, ChainDer};
pub use verify::{verify_snp, Endorsed, SigningKey, SnpChainVerifier};
