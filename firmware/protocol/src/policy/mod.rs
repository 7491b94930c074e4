//! The guest owner's migration policy and its canonical encoding.
//!
//! A policy says where this guest may migrate to (and accept migrations
//! from): which platforms, which launch measurements, the minimum TCB and
//! guest SVN, and which emulated roots to trust. Its own `version` is an
//! SVN: a peer presenting an older policy is refused (anti-downgrade).
//!
//! The encoding is canonical (fixed field order, lists strictly ascending,
//! reserved bytes zero, no trailing bytes), so one policy has exactly one
//! encoding and one [`Policy::host_data`], the SHA-256 that goes into
//! SEV-SNP's HOST_DATA at launch and that a peer's report must carry.
//!
//! | offset | size   | field                                                         |
//! |-------:|-------:|---------------------------------------------------------------|
//! | 0      | 4      | magic `b"CVMP"`                                               |
//! | 4      | 2      | encoding format, 1                                            |
//! | 6      | 2      | reserved, 0                                                   |
//! | 8      | 4      | policy version (SVN)                                          |
//! | 12     | 4      | allowed platforms: bit `1 << code` per [`Platform`]; others 0 |
//! | 16     | 8      | minimum TCB, SNP TCB_VERSION layout (reserved bytes 0)        |
//! | 24     | 4      | minimum guest SVN                                             |
//! | 28     | 1      | m = number of measurements, at most 16                        |
//! | 29     | 1      | k = number of trusted roots, at most 4                        |
//! | 30     | 2      | reserved, 0                                                   |
//! | 32     | 48 × m | allowed launch measurements, strictly ascending               |
//! | …      | 49 × k | trusted emulated roots, SEC1 compressed P-384, ascending      |

mod check;

pub use check::{check_peer, PeerIdentity};

use crate::error::{Error, Result};
use crate::evidence::{Platform, TcbVersion};
use crate::wire::{check_room, Reader, Writer};
use sha2::{Digest, Sha256};

/// Bytes of a launch measurement.
pub const MEASUREMENT_LEN: usize = 48;
/// Bytes of a trusted root key (SEC1 compressed P-384).
pub const ROOT_KEY_LEN: usize = 49;
/// Most measurements a policy lists.
pub const MAX_MEASUREMENTS: usize = 16;
/// Most trusted roots a policy lists.
pub const MAX_ROOTS: usize = 4;
/// The policy magic.
pub const POLICY_MAGIC: [u8; 4] = *b"CVMP";
/// The encoding format this crate writes and reads.
pub const POLICY_FORMAT: u16 = 1;
/// Bytes of the fixed part of the encoding.
pub const POLICY_HEADER_LEN: usize = 32;
/// Largest encoding.
pub const MAX_POLICY_LEN: usize = POLICY_HEADER_LEN + MAX_MEASUREMENTS * MEASUREMENT_LEN + MAX_ROOTS * ROOT_KEY_LEN;

/// A guest owner's migration policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    version: u32,
    platforms: u32,
    min_tcb: TcbVersion,
    min_guest_svn: u32,
    measurements: [[u8; MEASUREMENT_LEN]; MAX_MEASUREMENTS],
    n_measurements: usize,
    roots: [[u8; ROOT_KEY_LEN]; MAX_ROOTS],
    n_roots: usize,
}

/// A policy's encoding, in a fixed buffer (there is no allocator).
#[derive(Clone)]
pub struct EncodedPolicy {
    buf: [u8; MAX_POLICY_LEN],
    len: usize,
}

impl EncodedPolicy {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Copies `bytes` (at most [`MAX_POLICY_LEN`]).
    pub(crate) fn copy_of(bytes: &[u8]) -> Result<Self> {
        let mut buf = [0u8; MAX_POLICY_LEN];
        check_room(&buf, bytes.len())?;
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(EncodedPolicy { buf, len: bytes.len() })
    }
}

/// Inserts `item` into the sorted prefix `list[..*n]`, keeping it sorted
/// and free of duplicates.
fn insert_sorted<const N: usize, const M: usize>(
    list: &mut [[u8; N]; M],
    n: &mut usize,
    item: &[u8; N],
    what: &'static str,
) -> Result<()> {
    match list[..*n].binary_search(item) {
        Ok(_) => Ok(()),
        Err(at) => {
            if *n == M {
                return Err(Error::PolicyTooMany { what, max: M });
            }
            list.copy_within(at..*n, at + 1);
            list[at] = *item;
            *n += 1;
            Ok(())
        }
    }
}

fn check_root_key(key: &[u8; ROOT_KEY_LEN]) -> Result<()> {
    // Compressed points only (0x02/0x03 prefix): one key, one encoding.
    if !matches!(key[0], 0x02 | 0x03) {
        return Err(Error::BadRootKey);
    }
    p384::PublicKey::from_sec1_bytes(key).map_err(|_| Error::BadRootKey)?;
    Ok(())
}

impl Policy {
    /// A policy of `version` that allows nothing yet: every list is empty,
    /// and an empty list refuses every peer (fail closed).
    pub fn new(version: u32) -> Self {
        Policy {
            version,
            platforms: 0,
            min_tcb: TcbVersion(0),
            min_guest_svn: 0,
            measurements: [[0; MEASUREMENT_LEN]; MAX_MEASUREMENTS],
            n_measurements: 0,
            roots: [[0; ROOT_KEY_LEN]; MAX_ROOTS],
            n_roots: 0,
        }
    }

    /// Allows peers on `platform`.
    pub fn allow_platform(&mut self, platform: Platform) -> &mut Self {
        self.platforms |= platform.bit();
        self
    }

    /// Allows peers launched with `measurement`.
    pub fn allow_measurement(&mut self, measurement: &[u8; MEASUREMENT_LEN]) -> Result<&mut Self> {
        insert_sorted(
            &mut self.measurements,
            &mut self.n_measurements,
            measurement,
            "measurements",
        )?;
        Ok(self)
    }

    /// Trusts the emulated root with this SEC1-compressed public key.
    pub fn trust_root(&mut self, key: &[u8; ROOT_KEY_LEN]) -> Result<&mut Self> {
        check_root_key(key)?;
        insert_sorted(&mut self.roots, &mut self.n_roots, key, "trusted roots")?;
        Ok(self)
    }

    /// Sets the minimum reported TCB (only its four components count).
    pub fn set_min_tcb(&mut self, min: TcbVersion) -> &mut Self {
        self.min_tcb = TcbVersion::new(min.boot_loader(), min.tee(), min.snp(), min.microcode());
        self
    }

    /// Sets the minimum guest SVN.
    pub fn set_min_guest_svn(&mut self, min: u32) -> &mut Self {
        self.min_guest_svn = min;
        self
    }

    /// The policy's own version (SVN).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Whether peers on `platform` are allowed.
    pub fn allows_platform(&self, platform: Platform) -> bool {
        self.platforms & platform.bit() != 0
    }

    /// The allowed-platform mask.
    pub fn platform_mask(&self) -> u32 {
        self.platforms
    }

    /// Allowed launch measurements, ascending.
    pub fn measurements(&self) -> &[[u8; MEASUREMENT_LEN]] {
        &self.measurements[..self.n_measurements]
    }

    /// Whether `measurement` is allowed.
    pub fn allows_measurement(&self, measurement: &[u8; MEASUREMENT_LEN]) -> bool {
        self.measurements().binary_search(measurement).is_ok()
    }

    /// Trusted emulated roots, ascending.
    pub fn trusted_roots(&self) -> &[[u8; ROOT_KEY_LEN]] {
        &self.roots[..self.n_roots]
    }

    /// The minimum reported TCB.
    pub fn min_tcb(&self) -> TcbVersion {
        self.min_tcb
    }

    /// The minimum guest SVN.
    pub fn min_guest_svn(&self) -> u32 {
        self.min_guest_svn
    }

    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        POLICY_HEADER_LEN + self.n_measurements * MEASUREMENT_LEN + self.n_roots * ROOT_KEY_LEN
    }

    /// Writes the canonical encoding; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        check_room(out, self.encoded_len())?;
        let mut w = Writer::new(out);
        w.bytes(&POLICY_MAGIC)?;
        w.u16(POLICY_FORMAT)?;
        w.u16(0)?;
        w.u32(self.version)?;
        w.u32(self.platforms)?;
        w.u64(self.min_tcb.0)?;
        w.u32(self.min_guest_svn)?;
        w.u8(self.n_measurements as u8)?;
        w.u8(self.n_roots as u8)?;
        w.u16(0)?;
        for m in self.measurements() {
            w.bytes(m)?;
        }
        for k in self.trusted_roots() {
            w.bytes(k)?;
        }
        Ok(w.len())
    }

    /// The canonical encoding in a buffer of its own.
    pub fn to_encoded(&self) -> EncodedPolicy {
        let mut buf = [0u8; MAX_POLICY_LEN];
        let len = self.encode(&mut buf).expect("MAX_POLICY_LEN holds every policy");
        EncodedPolicy { buf, len }
    }

    /// SHA-256 of the encoding: the value for SEV-SNP's HOST_DATA.
    pub fn host_data(&self) -> [u8; 32] {
        Sha256::digest(self.to_encoded().as_bytes()).into()
    }

    /// Reads a canonical encoding; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Policy> {
        let mut r = Reader::new(bytes, "policy");
        if r.array::<4>()? != POLICY_MAGIC {
            return Err(Error::PolicyMagic);
        }
        let format = r.u16()?;
        if format != POLICY_FORMAT {
            return Err(Error::PolicyFormat(format));
        }
        r.reserved(2, "policy reserved")?;
        let mut policy = Policy::new(r.u32()?);
        policy.platforms = r.u32()?;
        let known = Platform::ALL.iter().fold(0, |mask, p| mask | p.bit());
        if policy.platforms & !known != 0 {
            return Err(Error::Invalid {
                what: "policy platform mask (unknown platform bit)",
            });
        }
        let tcb = TcbVersion(r.u64()?);
        if TcbVersion::new(tcb.boot_loader(), tcb.tee(), tcb.snp(), tcb.microcode()) != tcb {
            return Err(Error::Reserved {
                what: "policy minimum TCB",
            });
        }
        policy.min_tcb = tcb;
        policy.min_guest_svn = r.u32()?;
        let n_measurements = r.u8()? as usize;
        let n_roots = r.u8()? as usize;
        r.reserved(2, "policy reserved")?;
        if n_measurements > MAX_MEASUREMENTS {
            return Err(Error::PolicyTooMany {
                what: "measurements",
                max: MAX_MEASUREMENTS,
            });
        }
        if n_roots > MAX_ROOTS {
            return Err(Error::PolicyTooMany {
                what: "trusted roots",
                max: MAX_ROOTS,
            });
        }
        for i in 0..n_measurements {
            policy.measurements[i] = r.array()?;
            if i > 0 && policy.measurements[i - 1] >= policy.measurements[i] {
                return Err(Error::PolicyNotCanonical { what: "measurements" });
            }
        }
        policy.n_measurements = n_measurements;
        for i in 0..n_roots {
            policy.roots[i] = r.array()?;
            check_root_key(&policy.roots[i])?;
            if i > 0 && policy.roots[i - 1] >= policy.roots[i] {
                return Err(Error::PolicyNotCanonical { what: "trusted roots" });
            }
        }
        policy.n_roots = n_roots;
        r.finish()?;
        Ok(policy)
    }
}
