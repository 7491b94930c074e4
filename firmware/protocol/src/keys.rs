//! Ephemeral key agreement and the key schedule.
//!
//! Each side draws a fresh X25519 secret per session (forward secrecy: no
//! long-lived key ever protects guest memory). After both evidences are
//! in the transcript, with `th` the transcript hash at that point:
//!
//! ```text
//! prk = HKDF-Extract(salt = th, ikm = X25519(own secret, peer public))
//! key = HKDF-Expand(prk, info = label, length)
//! ```
//!
//! one key per direction and purpose, so a key never serves two streams
//! and a record of one kind can never be opened as another. All of them
//! are derived at once and the PRK is dropped: after commit, destroying
//! the abort key leaves no way to re-derive it.

use crate::error::{Error, Result};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Bytes of every symmetric key.
pub const KEY_LEN: usize = 32;
/// Bytes of the session id.
pub const SESSION_ID_LEN: usize = 16;
/// Bytes of a Finished MAC (HMAC-SHA256).
pub const FINISHED_LEN: usize = 32;

/// HKDF-Expand labels (`info`) and what each key protects.
pub mod label {
    /// AES-256-GCM key of the source → destination record stream.
    pub const S2D_RECORDS: &[u8] = b"covm-cm v1 key s2d records";
    /// AES-256-GCM key of the destination → source control stream (Commit).
    pub const D2S_CONTROL: &[u8] = b"covm-cm v1 key d2s control";
    /// AES-256-GCM key of the abort token (destination → source).
    pub const D2S_ABORT: &[u8] = b"covm-cm v1 key d2s abort";
    /// HMAC-SHA256 key of the source's Finished.
    pub const S2D_FINISHED: &[u8] = b"covm-cm v1 key s2d finished";
    /// HMAC-SHA256 key of the destination's Finished.
    pub const D2S_FINISHED: &[u8] = b"covm-cm v1 key d2s finished";
    /// The 16-byte session id (not secret; bound into every record).
    pub const SESSION_ID: &[u8] = b"covm-cm v1 session id";
}

/// Every key of one session.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct KeySchedule {
    pub(crate) s2d_records: [u8; KEY_LEN],
    pub(crate) d2s_control: [u8; KEY_LEN],
    pub(crate) d2s_abort: [u8; KEY_LEN],
    pub(crate) s2d_finished: [u8; KEY_LEN],
    pub(crate) d2s_finished: [u8; KEY_LEN],
    pub(crate) session_id: [u8; SESSION_ID_LEN],
}

impl KeySchedule {
    /// Derives every key from the shared secret and the transcript hash.
    pub(crate) fn derive(shared: &[u8; 32], th: &[u8; 32]) -> Self {
        // The hkdf/hmac 0.12 states are not zeroized by their crates; they
        // live only in this frame.
        let hk = Hkdf::<Sha256>::new(Some(th), shared);
        let mut ks = KeySchedule {
            s2d_records: [0; KEY_LEN],
            d2s_control: [0; KEY_LEN],
            d2s_abort: [0; KEY_LEN],
            s2d_finished: [0; KEY_LEN],
            d2s_finished: [0; KEY_LEN],
            session_id: [0; SESSION_ID_LEN],
        };
        let outputs: [(&[u8], &mut [u8]); 6] = [
            (label::S2D_RECORDS, &mut ks.s2d_records),
            (label::D2S_CONTROL, &mut ks.d2s_control),
            (label::D2S_ABORT, &mut ks.d2s_abort),
            (label::S2D_FINISHED, &mut ks.s2d_finished),
            (label::D2S_FINISHED, &mut ks.d2s_finished),
            (label::SESSION_ID, &mut ks.session_id),
        ];
        for (info, okm) in outputs {
            hk.expand(info, okm).expect("32 bytes is a valid HKDF-SHA256 length");
        }
        ks
    }
}

/// An ephemeral X25519 key pair, drawn per session.
pub(crate) struct Ephemeral {
    // Zeroized on drop by x25519-dalek.
    secret: StaticSecret,
    public: [u8; 32],
}

impl Ephemeral {
    /// A fresh key pair: 32 bytes from `rng`, clamped by X25519.
    pub(crate) fn generate(rng: &mut (impl rand_core::CryptoRngCore + ?Sized)) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        let secret = StaticSecret::from(*bytes);
        let public = PublicKey::from(&secret).to_bytes();
        Ephemeral { secret, public }
    }

    pub(crate) fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The shared secret with `peer`; refuses the all-zero result a
    /// low-order peer key produces (it would make the keys public).
    pub(crate) fn agree(&self, peer: &[u8; 32]) -> Result<SharedSecret> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer));
        if !shared.was_contributory() {
            return Err(Error::WeakSharedSecret);
        }
        Ok(shared)
    }
}

/// HMAC-SHA256(key, th): a Finished MAC.
pub(crate) fn finished_mac(key: &[u8; KEY_LEN], th: &[u8; 32]) -> [u8; FINISHED_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(th);
    mac.finalize().into_bytes().into()
}

/// Checks a Finished MAC in constant time.
pub(crate) fn check_finished(key: &[u8; KEY_LEN], th: &[u8; 32], got: &[u8]) -> Result<()> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(th);
    mac.verify_slice(got).map_err(|_| Error::KeyConfirmation)
}
