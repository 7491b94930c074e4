//! Byte layouts of the six handshake messages (all integers little-endian).
//!
//! Every message starts with its type byte. Decoding is strict: exact
//! lengths, reserved bytes zero, bounded lists. The SrcHello layout is
//! frozen for every future version, so that any two agents can always
//! tell each other which versions they speak.
//!
//! **SrcHello** (type 1, S → D), 70 + 2·nv + 2·ns + p bytes:
//!
//! | offset | size | field                                            |
//! |-------:|-----:|--------------------------------------------------|
//! | 0      | 1    | type = 1                                         |
//! | 1      | 1    | nv = number of versions offered (1..=8)          |
//! | 2      | 1    | ns = number of suites offered (1..=8)            |
//! | 3      | 1    | reserved, 0                                      |
//! | 4      | 32   | source nonce                                     |
//! | 36     | 32   | source ephemeral X25519 public key               |
//! | 68     | 2    | p = policy length (≤ 996)                        |
//! | 70     | 2·nv | versions (u16), preference order                 |
//! | …      | 2·ns | suites (u16), preference order                   |
//! | …      | p    | the source's policy (canonical encoding)         |
//!
//! **DstHello** (type 2, D → S), 72 + p bytes:
//!
//! | offset | size | field                                            |
//! |-------:|-----:|--------------------------------------------------|
//! | 0      | 1    | type = 2                                         |
//! | 1      | 1    | reserved, 0                                      |
//! | 2      | 2    | chosen version                                   |
//! | 4      | 2    | chosen suite                                     |
//! | 6      | 2    | p = policy length (≤ 996)                        |
//! | 8      | 32   | destination nonce                                |
//! | 40     | 32   | destination ephemeral X25519 public key          |
//! | 72     | p    | the destination's policy (canonical encoding)    |
//!
//! **DstEvidence** (type 3, D → S) and **SrcEvidence** (type 4, S → D),
//! 1200 + c bytes:
//!
//! | offset | size | field                                            |
//! |-------:|-----:|--------------------------------------------------|
//! | 0      | 1    | type                                             |
//! | 1      | 7    | reserved, 0                                      |
//! | 8      | 2    | platform code                                    |
//! | 10     | 2    | c = certificate table length (≤ 8192)            |
//! | 12     | 4    | report length = 0x4A0                            |
//! | 16     | 1184 | attestation report (SEV-SNP layout)              |
//! | 1200   | c    | certificate table (GHCB layout; SEV-SNP only)    |
//!
//! Emulated evidence has c = 0, so its messages are the 1200 bytes of the
//! first layout, whose bytes 10..12 were reserved zeros.
//!
//! **SrcFinished** (type 5, S → D) and **DstFinished** (type 6, D → S),
//! 33 bytes: type, then the 32-byte HMAC-SHA256.

use super::NONCE_LEN;
use crate::error::{Error, Result};
use crate::evidence::{Evidence, EVIDENCE_LEN, MAX_EVIDENCE_LEN};
use crate::keys::FINISHED_LEN;
use crate::policy::MAX_POLICY_LEN;
use crate::suite::MAX_OFFERS;
use crate::wire::{check_room, Reader, Writer};

/// Handshake message types.
pub mod kind {
    /// SrcHello.
    pub const SRC_HELLO: u8 = 1;
    /// DstHello.
    pub const DST_HELLO: u8 = 2;
    /// DstEvidence.
    pub const DST_EVIDENCE: u8 = 3;
    /// SrcEvidence.
    pub const SRC_EVIDENCE: u8 = 4;
    /// SrcFinished.
    pub const SRC_FINISHED: u8 = 5;
    /// DstFinished.
    pub const DST_FINISHED: u8 = 6;
}

/// Bytes of the fixed part of a SrcHello.
pub const SRC_HELLO_FIXED_LEN: usize = 70;
/// Bytes of the fixed part of a DstHello.
pub const DST_HELLO_FIXED_LEN: usize = 72;
/// Bytes of a DstEvidence or SrcEvidence message without certificates.
pub const EVIDENCE_MSG_LEN: usize = 8 + EVIDENCE_LEN;
/// Most bytes of a DstEvidence or SrcEvidence message.
pub const MAX_EVIDENCE_MSG_LEN: usize = 8 + MAX_EVIDENCE_LEN;
/// Bytes of a Finished message.
pub const FINISHED_MSG_LEN: usize = 1 + FINISHED_LEN;
/// Largest SrcHello.
pub const MAX_SRC_HELLO_LEN: usize = SRC_HELLO_FIXED_LEN + 4 * MAX_OFFERS + MAX_POLICY_LEN;
/// Largest handshake message of any type: a buffer this big always fits.
pub const MAX_HANDSHAKE_MSG_LEN: usize = MAX_EVIDENCE_MSG_LEN;

const _: () = assert!(MAX_SRC_HELLO_LEN <= MAX_HANDSHAKE_MSG_LEN);

fn expect_kind(r: &mut Reader<'_>, expected: u8) -> Result<()> {
    let got = r.u8()?;
    if got != expected {
        return Err(Error::UnexpectedMessage { expected, got });
    }
    Ok(())
}

/// A list of u16 codes with a fixed capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offers {
    codes: [u16; MAX_OFFERS],
    n: usize,
}

impl Offers {
    pub(crate) fn from_slice(codes: &[u16]) -> Self {
        let mut o = Offers {
            codes: [0; MAX_OFFERS],
            n: codes.len().min(MAX_OFFERS),
        };
        o.codes[..o.n].copy_from_slice(&codes[..o.n]);
        o
    }

    pub(crate) fn as_slice(&self) -> &[u16] {
        &self.codes[..self.n]
    }
}

/// A decoded SrcHello; the policy borrows the message.
pub(crate) struct SrcHello<'a> {
    pub(crate) versions: Offers,
    pub(crate) suites: Offers,
    pub(crate) nonce: [u8; NONCE_LEN],
    pub(crate) public: [u8; 32],
    pub(crate) policy: &'a [u8],
}

impl SrcHello<'_> {
    pub(crate) fn encoded_len(&self) -> usize {
        SRC_HELLO_FIXED_LEN + 2 * (self.versions.n + self.suites.n) + self.policy.len()
    }

    pub(crate) fn encode(&self, out: &mut [u8]) -> Result<usize> {
        check_room(out, self.encoded_len())?;
        let mut w = Writer::new(out);
        w.u8(kind::SRC_HELLO)?;
        w.u8(self.versions.n as u8)?;
        w.u8(self.suites.n as u8)?;
        w.u8(0)?;
        w.bytes(&self.nonce)?;
        w.bytes(&self.public)?;
        w.u16(self.policy.len() as u16)?;
        for &v in self.versions.as_slice() {
            w.u16(v)?;
        }
        for &s in self.suites.as_slice() {
            w.u16(s)?;
        }
        w.bytes(self.policy)?;
        Ok(w.len())
    }

    pub(crate) fn decode(msg: &[u8]) -> Result<SrcHello<'_>> {
        let mut r = Reader::new(msg, "SrcHello");
        expect_kind(&mut r, kind::SRC_HELLO)?;
        let nv = r.u8()? as usize;
        let ns = r.u8()? as usize;
        r.reserved(1, "SrcHello")?;
        if !(1..=MAX_OFFERS).contains(&nv) || !(1..=MAX_OFFERS).contains(&ns) {
            return Err(Error::Invalid {
                what: "SrcHello offer count (1 to 8 each)",
            });
        }
        let nonce = r.array()?;
        let public = r.array()?;
        let policy_len = r.u16()? as usize;
        if policy_len > MAX_POLICY_LEN {
            return Err(Error::Length {
                what: "SrcHello policy",
                expected: MAX_POLICY_LEN,
                got: policy_len,
            });
        }
        let mut versions = Offers::from_slice(&[]);
        for _ in 0..nv {
            versions.codes[versions.n] = r.u16()?;
            versions.n += 1;
        }
        let mut suites = Offers::from_slice(&[]);
        for _ in 0..ns {
            suites.codes[suites.n] = r.u16()?;
            suites.n += 1;
        }
        let policy = r.bytes(policy_len)?;
        r.finish()?;
        Ok(SrcHello {
            versions,
            suites,
            nonce,
            public,
            policy,
        })
    }
}

/// A decoded DstHello; the policy borrows the message.
pub(crate) struct DstHello<'a> {
    pub(crate) version: u16,
    pub(crate) suite: u16,
    pub(crate) nonce: [u8; NONCE_LEN],
    pub(crate) public: [u8; 32],
    pub(crate) policy: &'a [u8],
}

impl DstHello<'_> {
    pub(crate) fn encode(&self, out: &mut [u8]) -> Result<usize> {
        check_room(out, DST_HELLO_FIXED_LEN + self.policy.len())?;
        let mut w = Writer::new(out);
        w.u8(kind::DST_HELLO)?;
        w.u8(0)?;
        w.u16(self.version)?;
        w.u16(self.suite)?;
        w.u16(self.policy.len() as u16)?;
        w.bytes(&self.nonce)?;
        w.bytes(&self.public)?;
        w.bytes(self.policy)?;
        Ok(w.len())
    }

    pub(crate) fn decode(msg: &[u8]) -> Result<DstHello<'_>> {
        let mut r = Reader::new(msg, "DstHello");
        expect_kind(&mut r, kind::DST_HELLO)?;
        r.reserved(1, "DstHello")?;
        let version = r.u16()?;
        let suite = r.u16()?;
        let policy_len = r.u16()? as usize;
        if policy_len > MAX_POLICY_LEN {
            return Err(Error::Length {
                what: "DstHello policy",
                expected: MAX_POLICY_LEN,
                got: policy_len,
            });
        }
        let nonce = r.array()?;
        let public = r.array()?;
        let policy = r.bytes(policy_len)?;
        r.finish()?;
        Ok(DstHello {
            version,
            suite,
            nonce,
            public,
            policy,
        })
    }
}

/// Writes a DstEvidence or SrcEvidence message.
pub(crate) fn encode_evidence(kind: u8, evidence: &Evidence, out: &mut [u8]) -> Result<usize> {
    check_room(out, 8 + evidence.encoded_len())?;
    let mut w = Writer::new(out);
    w.u8(kind)?;
    w.zeros(7)?;
    let n = evidence.encode(&mut out[8..])?;
    Ok(8 + n)
}

/// Reads a DstEvidence or SrcEvidence message.
pub(crate) fn decode_evidence(kind: u8, msg: &[u8]) -> Result<Evidence> {
    let mut r = Reader::new(msg, "evidence message");
    expect_kind(&mut r, kind)?;
    r.reserved(7, "evidence message")?;
    let rest = r.bytes(msg.len().saturating_sub(8))?;
    r.finish()?;
    Evidence::decode(rest)
}

/// Writes a Finished message.
pub(crate) fn encode_finished(kind: u8, mac: &[u8; FINISHED_LEN], out: &mut [u8]) -> Result<usize> {
    check_room(out, FINISHED_MSG_LEN)?;
    out[0] = kind;
    out[1..FINISHED_MSG_LEN].copy_from_slice(mac);
    Ok(FINISHED_MSG_LEN)
}

/// Reads a Finished message; returns the MAC.
pub(crate) fn decode_finished(kind: u8, msg: &[u8]) -> Result<&[u8]> {
    let mut r = Reader::new(msg, "Finished");
    expect_kind(&mut r, kind)?;
    let mac = r.bytes(FINISHED_LEN)?;
    r.finish()?;
    Ok(mac)
}
