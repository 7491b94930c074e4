//! Randomness for the handshake constructors.
//!
//! The protocol draws through `rand_core::RngCore::fill_bytes`, which
//! cannot fail, while the platform's generator (RDRAND) can. So the agent
//! draws what a constructor needs from the platform first (where a failure
//! is an error it can report) and hands the constructor these bytes.

use crate::env::{Platform, PlatformError};
use rand_core::{impls, CryptoRng, RngCore};
use zeroize::Zeroize;

/// Bytes a handshake constructor draws: a 32-byte nonce, then a 32-byte
/// X25519 secret (docs/confidential-protocol.md §11).
pub const HANDSHAKE_RANDOM: usize = 64;

/// Random bytes drawn from the platform beforehand; wiped on drop.
pub(crate) struct Drawn {
    bytes: [u8; HANDSHAKE_RANDOM],
    used: usize,
    short: bool,
}

impl Drawn {
    pub fn from(platform: &mut impl Platform) -> Result<Self, PlatformError> {
        let mut bytes = [0u8; HANDSHAKE_RANDOM];
        if let Err(e) = platform.fill_random(&mut bytes) {
            bytes.zeroize();
            return Err(e);
        }
        Ok(Drawn {
            bytes,
            used: 0,
            short: false,
        })
    }

    /// Whether a caller asked for more than was drawn (it then got zeros,
    /// and what it built must be thrown away).
    pub fn ran_short(&self) -> bool {
        self.short
    }
}

impl Drop for Drawn {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl RngCore for Drawn {
    // Whole words come out of fill_bytes like any other bytes (little-endian).
    fn next_u32(&mut self) -> u32 {
        impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let n = dest.len().min(HANDSHAKE_RANDOM - self.used);
        dest[..n].copy_from_slice(&self.bytes[self.used..self.used + n]);
        self.bytes[self.used..self.used + n].zeroize();
        self.used += n;
        if n < dest.len() {
            dest[n..].fill(0);
            self.short = true;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Drawn {}
