//! The crate's tests: both ends in one process, bytes moved by hand.
//!
//! `support` holds the fixtures (a deterministic RNG, an emulated root,
//! policies, evidence, a handshake driver with a tampering relay); each
//! other module tests one part of the protocol.

mod abort;
mod handshake;
mod import;
mod lanes;
mod nonce;
mod policy;
mod session;
mod support;
mod vectors;
