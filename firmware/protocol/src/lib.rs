//! covm's confidential live-migration protocol.
//!
//! One `no_std` crate, no allocator, used by both ends: the migration
//! agent inside the guest's firmware (bare metal, ring 3) and the host
//! tests. It is *sans-I/O*: pure state machines over byte slices; the
//! caller moves the bytes (through the VMMs, which only relay them) and
//! supplies randomness as a [`rand_core::CryptoRngCore`].
//!
//! The pieces, in the order a migration uses them:
//!
//! - [`suite`]: protocol version 1, one cipher suite (X25519, HKDF-SHA256,
//!   AES-256-GCM, ECDSA P-384/SHA-384 evidence).
//! - [`handshake`]: [`SourceHandshake`] and [`DestinationHandshake`]: six
//!   messages, evidence bound to the [`transcript`], mutual policy checks,
//!   keys from the [`keys`] schedule, key confirmation both ways.
//! - [`evidence`]: the SEV-SNP attestation report, [`Platform`], the
//!   [`EvidenceVerifier`] trait and covm's emulated root.
//! - [`policy`]: the guest owner's [`Policy`], its canonical encoding and
//!   [`check_peer`].
//! - [`record`]: sealed records (AES-256-GCM, nonce = stream ‖ counter,
//!   AAD binds session, type, epoch, sequence, address, length).
//! - [`source`]: [`SourceSession`], which seals pages, round ends, vCPU
//!   states and the final record, reads Commit or an abort token, and
//!   says whether the guest may resume.
//! - [`import`]: [`ImportChecker`], the destination's checks, commit and
//!   abort token.
//! - [`digest`]: [`MemoryDigest`] for verified mode.
//!
//! docs/confidential-protocol.md is the full specification.
//!
//! **Every buffer handed to this crate must be private (encrypted) guest
//! memory**, never memory the host can write: AES-GCM reads its buffer
//! twice (GHASH, then CTR), so bytes changed in between would be
//! decrypted or tagged unauthenticated. Copy records in from the shared
//! mailbox before opening them, and out after sealing them.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod digest;
pub mod error;
pub mod evidence;
pub mod handshake;
pub mod import;
pub mod keys;
pub mod policy;
pub mod record;
pub mod source;
pub mod suite;
pub mod transcript;
mod wire;

#[cfg(test)]
mod tests;

pub use digest::MemoryDigest;
pub use error::{Error, Result};
pub use evidence::{
    AttestationReport, EmulatedRoot, EmulatedRootVerifier, Evidence, EvidenceVerifier, Platform, TcbVersion,
};
pub use handshake::{DestinationHandshake, DestinationSession, SourceHandshake};
pub use import::{Admitted, ImportChecker, ImportEvent, ImportPhase};
pub use policy::{check_peer, PeerIdentity, Policy};
pub use record::payload::Summary;
pub use record::{RecordCipher, RecordHeader, RecordType, PAGE_SIZE};
pub use source::{SealTicket, SourceSession, SourceState};
pub use suite::{Suite, PROTOCOL_VERSION};

/// Most vCPUs a migration carries (vCPU indices are below this).
pub const MAX_VCPUS: usize = 1024;

const _: () = assert!(MAX_VCPUS % 64 == 0);
